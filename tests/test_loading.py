"""The one loader (``mst5_dist.model.loading``): no code and no pickle from a folder we read.

A family of hostile folders (a base model, a run whose ``sentence_encoder.json`` names a hostile
base, an adapter, an export), each planted with a module whose import would create a marker file
and named in an ``auto_map`` so that transformers would ask "run the custom code? [y/N]". Each is
driven through every command that reads it with ``y`` on stdin: exit 2, one line naming the file,
no marker. The same folders without ``auto_map`` load (negative controls). Then the other ways a
model setting or folder gave a wrong model silently or a traceback: pickles, a decoder-only model,
``max_seq_length`` above the positions, LoRA targets matching nothing, adapter files beside full
weights.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import TINY_CONFIG, mst5_cmd

from mst5_dist.errors import ModelError

YES = "y\n" * 50  # a prompt, if one were shown, would be answered yes
MODULE = "import pathlib\npathlib.Path({marker!r}).touch()\n"


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def plant_config(folder: Path, marker: Path) -> Path:
    """config.json of an unknown model type whose classes live in the folder's own modules."""
    for name in ("configuration_x", "modeling_x"):
        (folder / f"{name}.py").write_text(MODULE.format(marker=str(marker)))
    auto_map = {"AutoConfig": "configuration_x.ConfigX", "AutoModel": "modeling_x.ModelX"}
    _edit_json(folder / "config.json", model_type="xcustom", auto_map=auto_map)
    return folder / "config.json"


def plant_tokenizer(folder: Path, marker: Path) -> Path:
    """tokenizer_config.json naming a tokenizer class in the folder's own module."""
    (folder / "tokenization_x.py").write_text(MODULE.format(marker=str(marker)))
    auto_map = {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}
    _edit_json(folder / "tokenizer_config.json", tokenizer_class="XTokenizer", auto_map=auto_map)
    return folder / "tokenizer_config.json"


@pytest.fixture(scope="module")
def clean_run(tiny_base, tmp_path_factory) -> Path:
    """A training output: ``final/`` (a fresh LoRA adapter on the tiny base), config.yaml, a log."""
    from mst5_dist.config import LoraConfig
    from mst5_dist.lora import apply_lora
    from mst5_dist.model import SentenceEncoder

    run = tmp_path_factory.mktemp("clean") / "run"
    encoder = apply_lora(SentenceEncoder.from_pretrained(tiny_base), LoraConfig(preset="qv"))
    encoder.save_pretrained(run / "final")
    shutil.copy(TINY_CONFIG, run / "config.yaml")
    (run / "train_log.jsonl").write_text(json.dumps({"step": 1, "eval_sts_spearman": 0.5}) + "\n")
    return run


def hostile(kind: str, root: Path, tiny_base: Path, clean_run: Path, tiny_onnx: Path, plant: bool = True):
    """(folder, planted file) for one kind of folder we read; ``plant=False``: the same, clean."""
    marker = root / "PWNED"
    config = plant_config if plant else (lambda folder, _: folder / "config.json")
    tokenizer = plant_tokenizer if plant else (lambda folder, _: folder / "tokenizer_config.json")
    if kind in ("model", "model-tokenizer"):
        folder = Path(shutil.copytree(tiny_base, root / "model"))
        return folder, (config if kind == "model" else tokenizer)(folder, marker)
    if kind in ("run", "adapter"):
        run = Path(shutil.copytree(clean_run, root / "run"))
        if kind == "adapter":
            return run, tokenizer(run / "final", marker)
        base, planted = hostile("model", root, tiny_base, clean_run, tiny_onnx, plant)
        _edit_json(run / "final" / "sentence_encoder.json", base_model=str(base))
        _edit_json(run / "final" / "adapter_config.json", base_model_name_or_path=str(base))
        return run, planted
    folder = Path(shutil.copytree(tiny_onnx, root / "export"))
    return folder, (config if kind == "export-config" else tokenizer)(folder, marker)


def import_source(clean_run: Path, folder: Path) -> Path:
    """An adapter in the layout ``mst5 import-adapter`` reads (old-style adapter_config.json)."""
    folder.mkdir()
    shutil.copy(clean_run / "final" / "adapter_model.safetensors", folder)
    cfg = json.loads((clean_run / "final" / "adapter_config.json").read_text())
    keep = ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "bias", "task_type")
    (folder / "adapter_config.json").write_text(json.dumps({k: cfg.get(k) for k in keep}))
    return folder


TRAIN = ["train", "--config", TINY_CONFIG, "train.output_dir={T}/out", "train.max_steps=1"]
EVAL = ["eval", "--model", "{F}", "--data-dir", "{DATA}", "--tasks", "sts17", "--limit", "5",
        "--output", "{T}/results.json", "--no-progress"]  # fmt: skip
EXPORT = ["export", "--model", "{F}", "--output", "{T}/exported"]
MERGE_RUN = "model.merge_adapters=[{RUN}/final]"
PIVOT = ["loss.objective=cla", "loss.hard_negatives=false", "loss.pivot_model={F}"]
# (kind of hostile folder, command): the command line that reads it ({F}: the folder).
COMMANDS = {
    ("model", "train"): [*TRAIN, "model.name_or_path={F}"],
    ("model", "train merge_adapters base"): [*TRAIN, "model.name_or_path={F}", MERGE_RUN],
    ("model", "train loss.pivot_model"): [*TRAIN, "model.name_or_path={BASE}", MERGE_RUN, *PIVOT],
    ("model", "eval"): EVAL,
    ("model", "export"): EXPORT,
    ("model", "import-adapter"): ["import-adapter", "{SRC}", "--base", "{F}", "--output", "{T}/imported"],
    ("model-tokenizer", "train"): [*TRAIN, "model.name_or_path={F}"],
    ("model-tokenizer", "eval"): EVAL,
    ("run", "eval"): EVAL,
    ("run", "export"): EXPORT,
    ("run", "sweep"): ["sweep", "{F}", "--output", "{T}/sweep"],
    ("adapter", "train merge_adapters"): [*TRAIN, "model.name_or_path={BASE}", "model.merge_adapters=[{F}/final]"],
    ("adapter", "eval"): EVAL,
    ("adapter", "export"): EXPORT,
    ("export-tokenizer", "embed"): ["embed", "--model", "{F}", "--input", "{TEXTS}", "--output", "{T}/emb.npy"],
    ("export-tokenizer", "eval"): EVAL,
    ("export-config", "export"): EXPORT,
}


def command(kind: str, name: str, folder: Path, tmp: Path, context: dict[str, Path]) -> list[str]:
    values = {"F": folder, "T": tmp, **context}
    if "{SRC}" in COMMANDS[(kind, name)]:
        values["SRC"] = import_source(context["RUN"], tmp / "src")
    return mst5_cmd(*(arg.format(**values) for arg in COMMANDS[(kind, name)]))


@pytest.fixture
def context(tiny_base, clean_run, shared_data, tmp_path) -> dict[str, Path]:
    texts = tmp_path / "texts.txt"
    texts.write_text("The weather is nice today.\nWhere is the station?\n")
    return {"BASE": tiny_base, "RUN": clean_run, "DATA": shared_data, "TEXTS": texts}


@pytest.mark.parametrize("kind, name", list(COMMANDS), ids=[f"{k}-{c}" for k, c in COMMANDS])
def test_hostile_folder_refused_by_every_command(kind, name, context, tiny_onnx, tmp_path):
    folder, planted = hostile(kind, tmp_path / "hostile", context["BASE"], context["RUN"], tiny_onnx)
    cmd = command(kind, name, folder, tmp_path, context)
    proc = subprocess.run(cmd, input=YES, capture_output=True, text=True, timeout=600)
    assert not (tmp_path / "hostile" / "PWNED").exists(), "code from the folder ran"
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("mst5") and str(planted) in last and "custom code" in last, last
    assert "Traceback" not in proc.stderr and "[y/N]" not in proc.stdout + proc.stderr


KINDS = ["model", "model-tokenizer", "run", "adapter", "export-tokenizer", "export-config"]


@pytest.mark.parametrize("kind", KINDS)
def test_same_folders_without_auto_map_load(kind, tiny_base, clean_run, tiny_onnx, tmp_path):
    """Negative control: the folders the table plants, left clean, load in-process."""
    from mst5_dist.export.runtime import OnnxEmbedder
    from mst5_dist.model import SentenceEncoder

    folder, _ = hostile(kind, tmp_path, tiny_base, clean_run, tiny_onnx, plant=False)
    if kind.startswith("export"):
        assert OnnxEmbedder(folder).encode(["hello"]).shape == (1, 64)
        assert SentenceEncoder.from_pretrained(folder).embedding_dim == 64  # `mst5 export` of an export
    elif kind == "adapter":
        encoder = SentenceEncoder.from_pretrained(tiny_base, merge_adapters=[folder / "final"])
        assert encoder.merged_adapters == [str((folder / "final").resolve())]
    else:
        assert SentenceEncoder.from_pretrained(folder / "final" if kind == "run" else folder).embedding_dim == 64


def test_clean_export_embeds_with_yes_on_stdin(tiny_onnx, context, tmp_path):
    """Negative control through a command: ``y`` on stdin changes nothing for a clean folder."""
    folder, _ = hostile("export-tokenizer", tmp_path / "clean", context["BASE"], context["RUN"], tiny_onnx, False)
    cmd = command("export-tokenizer", "embed", folder, tmp_path, context)
    proc = subprocess.run(cmd, input=YES, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "emb.npy").is_file()


@pytest.mark.unit
@pytest.mark.parametrize(
    "name, content, refused",
    [
        ("config.json", {"model_type": "bert"}, None),
        ("config.json", {"model_type": "bert", "auto_map": {"AutoModel": "other/repo--modeling_y.Y"}}, "modeling_y.py"),
        ("config.json", {"model_type": "x", "text_config": {"auto_map": {"AutoConfig": "c.C"}}}, "c.py"),
        ("tokenizer_config.json", {"auto_map": {"AutoTokenizer": ["t.T", "t.TFast"]}}, "t.py"),
        ("processor_config.json", {"auto_map": {"AutoProcessor": "p.P"}}, "p.py"),
        ("preprocessor_config.json", {"auto_map": {"AutoImageProcessor": "i.I"}}, "i.py"),
    ],
)
def test_refuse_custom_code_reads_every_config(name, content, refused, tmp_path):
    from mst5_dist.model.loading import refuse_custom_code

    (tmp_path / name).write_text(json.dumps(content))
    if refused is None:
        refuse_custom_code(tmp_path)  # a known type with no auto_map: fine
        return
    with pytest.raises(ModelError, match=rf"{tmp_path / name}: asks to run custom code .*{refused}"):
        refuse_custom_code(tmp_path)


# ---------------------------------------------------------------- pickles: never unpickled


class Payload:
    """Unpickling this runs code (os.system through __reduce__)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def pickle_adapter(run: Path, marker: Path | None) -> Path:
    """``final/adapter_model.safetensors`` replaced by ``adapter_model.bin`` (plain tensors, or with
    a payload that runs code when unpickled)."""
    import torch
    from safetensors.torch import load_file

    final = run / "final"
    state = load_file(str(final / "adapter_model.safetensors"))
    if marker is not None:
        state["extra"] = Payload(marker)
    torch.save(state, final / "adapter_model.bin")
    (final / "adapter_model.safetensors").unlink()
    return final / "adapter_model.bin"


@pytest.mark.parametrize(
    "payload, args",
    [
        (False, ["eval", "--model", "{RUN}", "--data-dir", "{DATA}", "--tasks", "sts17", "--limit", "5",
                 "--output", "{T}/r.json", "--no-progress"]),
        (True, ["export", "--model", "{RUN}", "--output", "{T}/exported"]),
        (True, [*TRAIN, "model.name_or_path={BASE}", "model.merge_adapters=[{RUN}/final]"]),
    ],
    ids=["tensors-eval", "code-export", "code-train-merge_adapters"],
)  # fmt: skip
def test_pickle_adapter_refused(payload, args, tiny_base, clean_run, shared_data, tmp_path):
    run = Path(shutil.copytree(clean_run, tmp_path / "run"))
    marker = tmp_path / "PWNED"
    pickle_file = pickle_adapter(run, marker if payload else None)
    values = {"RUN": run, "DATA": shared_data, "T": tmp_path, "BASE": tiny_base}
    proc = subprocess.run(mst5_cmd(*(a.format(**values) for a in args)), capture_output=True, text=True, timeout=600)
    assert not marker.exists()
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert f"{pickle_file}: a pickle adapter is never loaded" in last and "Traceback" not in proc.stderr


@pytest.mark.unit
def test_pickle_full_weights_refused_safetensors_loaded(tiny_base, tmp_path):
    import torch
    from safetensors.torch import load_file

    from mst5_dist.model import SentenceEncoder

    folder = Path(shutil.copytree(tiny_base, tmp_path / "base"))
    assert SentenceEncoder.from_pretrained(folder).embedding_dim == 64  # negative control
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=rf"^{folder / 'pytorch_model.bin'}: pickle weights are never loaded"):
        SentenceEncoder.from_pretrained(folder)


# ---------------------------------------------------------------- what is not a sentence encoder


def gpt2_folder(folder: Path, minilm: Path) -> Path:
    """A 1-layer GPT-2 (decoder-only) saved with a working tokenizer (MiniLM's vocabulary)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    tokenizer = AutoTokenizer.from_pretrained(str(minilm))
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=128, vocab_size=len(tokenizer))
    GPT2Model(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def test_decoder_only_model_refused(minilm_path, tmp_path):
    folder = gpt2_folder(tmp_path / "gpt2", minilm_path)
    cmd = mst5_cmd(
        *(a.format(T=tmp_path) for a in TRAIN), f"model.name_or_path={folder}", "lora.target_modules=[c_attn]"
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert f"{folder}: model type 'gpt2' is not an encoder" in last and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "final").exists()


@pytest.mark.unit
@pytest.mark.parametrize(
    "name, kwargs, refused",
    [("GPT2Config", {}, True), ("BertConfig", {"is_decoder": True}, True), ("LlamaConfig", {}, True),
     ("BertConfig", {}, False), ("XLMRobertaConfig", {}, False), ("MT5Config", {}, False)],
)  # fmt: skip
def test_check_encoder(name, kwargs, refused):
    import transformers

    from mst5_dist.model.loading import check_encoder

    config = getattr(transformers, name)(**kwargs)
    if not refused:
        check_encoder(config, "m")
        return
    with pytest.raises(ModelError, match=rf"^m: model type '{config.model_type}' is not an encoder"):
        check_encoder(config, "m")


# ---------------------------------------------------------------- max_seq_length vs positions


@pytest.mark.unit
@pytest.mark.parametrize(
    "name, kwargs, limit",
    [("BertConfig", {"max_position_embeddings": 512}, 512),
     ("XLMRobertaConfig", {"max_position_embeddings": 514, "pad_token_id": 1}, 512),
     ("MT5Config", {}, None)],
)  # fmt: skip
def test_position_limit(name, kwargs, limit):
    import transformers

    from mst5_dist.model.loading import check_positions, position_limit

    config = getattr(transformers, name)(**kwargs)
    assert position_limit(config) == limit
    check_positions(config, limit or 100_000, "m")  # at the limit (or without one): fine
    if limit is not None:
        with pytest.raises(ModelError, match=rf"model.max_seq_length {limit + 1} is above the {limit} positions"):
            check_positions(config, limit + 1, "m")


@pytest.mark.parametrize("length, expected", [(1024, "model.max_seq_length 1024 is above the 512 positions of"),
                                              (512, "cannot load the model weights")])  # fmt: skip
def test_max_seq_length_checked_before_the_weights(length, expected, minilm_path, tmp_path):
    """A MiniLM folder with unreadable weights: a too long max_seq_length is refused from config.json
    alone (the weights are never reached); the longest allowed one gets as far as the weights."""
    folder = tmp_path / "minilm"
    folder.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_path / f, folder)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    cmd = mst5_cmd(
        *(a.format(T=tmp_path) for a in TRAIN), f"model.name_or_path={folder}", f"model.max_seq_length={length}"
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert expected in proc.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------- LoRA targets


@pytest.mark.unit
def test_lora_targets_must_all_match(tiny_base):
    from mst5_dist.config import LoraConfig
    from mst5_dist.errors import ConfigError
    from mst5_dist.lora import apply_lora, count_parameters
    from mst5_dist.model import SentenceEncoder

    with pytest.raises(ConfigError, match=r"^lora.target_modules: 'vv' matches no layer of this mt5 model .*\bv\b"):
        apply_lora(SentenceEncoder.from_pretrained(tiny_base), LoraConfig(target_modules=["q", "vv"]))
    q_only = apply_lora(SentenceEncoder.from_pretrained(tiny_base), LoraConfig(target_modules=["q"]))
    q_and_v = apply_lora(SentenceEncoder.from_pretrained(tiny_base), LoraConfig(target_modules=["q", "v"]))
    assert count_parameters(q_and_v)[0] == 2 * count_parameters(q_only)[0] > 0  # negative control


def test_lora_target_typo_refused_by_train(tiny_base, tmp_path):
    cmd = mst5_cmd(
        *(a.format(T=tmp_path) for a in TRAIN), f"model.name_or_path={tiny_base}", "lora.target_modules=[q,vv]"
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "lora.target_modules: 'vv' matches no layer" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out" / "final").exists()


# ---------------------------------------------------------------- adapter files beside full weights


def test_adapter_files_beside_merged_weights_refused(tiny_onnx, clean_run, tmp_path):
    """A merged export (``adapter: false``) with a run's adapter copied in: transformers would apply
    it on top of weights that already hold it. Refused, naming the files; the clean export loads."""
    from mst5_dist.model import EncoderMeta, SentenceEncoder

    export = Path(shutil.copytree(tiny_onnx, tmp_path / "export"))
    assert EncoderMeta.read(export).adapter is False
    SentenceEncoder.from_pretrained(export)  # negative control
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(clean_run / "final" / name, export)
    with pytest.raises(
        ModelError, match=rf"^{export / 'adapter_config.json'}, {export / 'adapter_model.safetensors'}: adapter files"
    ):
        SentenceEncoder.from_pretrained(export)
    proc = subprocess.run(mst5_cmd("export", "--model", str(export), "--output", str(tmp_path / "again")),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "adapter files in a folder loaded as full weights" in proc.stderr.strip().splitlines()[-1]
