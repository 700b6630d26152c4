"""Exports that load where people serve embeddings: runtimes that read only tokenizer.json, Text
Embeddings Inference's ONNX layout (field by field, from TEI's own loader), Triton's config.pbtxt
against the graph, and FastEmbed (the real package, in a virtualenv of its own: it pins
huggingface-hub < 2, which our transformers stack does not allow).

Each check runs on the tiny mT5 export and (slow) on a MiniLM LoRA export."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import english_tiny_nli, minilm_lora_cmd, mst5_cmd

from mst5_dist.export import serving
from mst5_dist.export.triton import config_problems, graph_tensors, read_config_tensors, write_triton_repo

FASTEMBED = "fastembed==0.9.1"  # the version these tests ran against
# Tatoeba languages in many scripts: Latin, Cyrillic, Han, Arabic, Devanagari, Greek, Hebrew, Hangul,
# Thai, Ethiopic, Georgian.
LANGS = ["de", "fr", "ru", "zh", "ar", "hi", "el", "he", "ko", "th", "am", "ka"]
LONG = (
    "The committee met on Tuesday morning to review the proposal for the new railway line, which would "
    "connect the northern villages with the regional hospital, the university and the port. " * 4
)


def export(model: Path, out: Path) -> Path:
    proc = subprocess.run(
        mst5_cmd("export", "--model", str(model), "--output", str(out), "--triton"), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def tiny_export(tiny_base, tmp_path_factory) -> tuple[Path, Path]:
    """(export folder, source model) of the embedded tiny mT5."""
    return export(tiny_base, tmp_path_factory.mktemp("serve") / "tiny-export"), tiny_base


@pytest.fixture(scope="module")
def minilm_export(minilm_path, tmp_path_factory) -> tuple[Path, Path]:
    """(export folder, training output) of a short LoRA run of all-MiniLM-L6-v2."""
    tmp = tmp_path_factory.mktemp("serve-minilm")
    run = tmp / "run"
    cmd = minilm_lora_cmd(minilm_path, english_tiny_nli(tmp), run, "train.max_steps=2", "train.report_to=[]")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return export(run, tmp / "minilm-export"), run / "final"


EXPORTS = ["tiny", pytest.param("minilm", marks=pytest.mark.slow)]


@pytest.fixture
def exported(request) -> tuple[Path, Path]:
    return request.getfixturevalue(f"{request.param}_export")


@pytest.fixture(scope="module")
def texts(shared_data) -> list[str]:
    """25 Tatoeba sentences per language, their English sides, and one text longer than any
    ``max_seq_length`` here (so truncation is exercised)."""
    from mst5_dist.evaluate.tatoeba import read_tatoeba

    out = []
    for lang in LANGS:
        src, eng = read_tatoeba(shared_data / "tatoeba", lang)
        out += src[:25] + eng[:2]
    return [*out, LONG]


def report(path: Path) -> dict:
    return json.loads((path / "export_report.json").read_text())


# ------------------------------------------------------------------ tokenizer.json alone


def tokenizer_json_batch(path: Path, texts: list[str], max_length: int | None = None):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    if max_length is not None:
        tok.enable_truncation(max_length)
    enc = tok.encode_batch(texts)
    return np.array([e.ids for e in enc]), np.array([e.attention_mask for e in enc])


@pytest.mark.parametrize("exported", EXPORTS, indirect=True)
def test_tokenizer_json_tokenises_like_the_encoder(exported, texts):
    """`tokenizers.Tokenizer.from_file(tokenizer.json)` alone (what TEI and tokenizer.json-only
    runtimes load) gives the encoder's ids and mask, padded and truncated at max_seq_length.
    Control: the 320-token truncation the export used to leave in tokenizer.json differs on the
    long text."""
    from mst5_dist.model import SentenceEncoder

    out, source = exported
    encoder = SentenceEncoder.from_pretrained(source)
    ref = encoder.tokenize(texts)
    ref_ids, ref_mask = ref["input_ids"].numpy(), ref["attention_mask"].numpy()
    ids, mask = tokenizer_json_batch(out / "tokenizer.json", texts)
    assert ids.shape == ref_ids.shape and (ids == ref_ids).all() and (mask == ref_mask).all()
    assert ref_mask[-1].sum() == encoder.max_seq_length == report(out)["max_seq_length"]  # LONG was truncated
    assert len({tuple(r[m == 1]) for r, m in zip(ids, mask)}) > len(texts) // 2  # real, distinct ids
    old_ids, _ = tokenizer_json_batch(out / "tokenizer.json", texts, max_length=320)
    assert old_ids.shape[1] > ids.shape[1]


@pytest.mark.parametrize("exported", EXPORTS, indirect=True)
def test_every_declared_max_length_is_max_seq_length(exported, tmp_path):
    out, _ = exported
    lengths = serving.max_lengths(out)
    assert set(lengths.values()) == {report(out)["max_seq_length"]}, lengths
    assert serving.max_length_problems(out) == []
    copy = shutil.copytree(out, tmp_path / "copy", ignore=shutil.ignore_patterns("*.onnx*", "*.safetensors"))
    cfg = json.loads((copy / "sentence_bert_config.json").read_text())
    other = cfg["max_seq_length"] + 7
    (copy / "sentence_bert_config.json").write_text(json.dumps({**cfg, "max_seq_length": other}))
    (problem,) = serving.max_length_problems(copy)
    assert "disagree" in problem and f"'sentence_bert_config.json:max_seq_length': {other}" in problem


@pytest.mark.parametrize("exported", EXPORTS, indirect=True)
def test_export_records_what_made_it(exported):
    """versions.json: the exporting environment, and the training run's own record when the source
    has one (a LoRA run's final/), null for a plain base model."""
    from mst5_dist.versions import VERSIONS_FILE, package_versions

    out, source = exported
    versions = json.loads((out / VERSIONS_FILE).read_text())
    assert versions["exported_with"] == package_versions()
    trained = source / VERSIONS_FILE
    assert versions["trained_with"] == (json.loads(trained.read_text()) if trained.is_file() else None)
    assert trained.is_file() == (source.name == "final")


# ------------------------------------------------------------------ Text Embeddings Inference


@pytest.mark.parametrize("exported", EXPORTS, indirect=True)
def test_tei_reads_every_field_it_needs(exported):
    out, _ = exported
    assert serving.tei_problems(out) == []
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] and not any(a.endswith("Classification") for a in config["architectures"])
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    meta = json.loads((out / "sentence_encoder.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] == (meta["pooling"] == "mean")
    assert pooling["pooling_mode_cls_token"] == (meta["pooling"] == "cls")
    assert "sentence_embedding" in graph_tensors(out / "onnx" / "model.onnx")["output"]  # TEI uses it as is


def _json_edit(name: str, change):
    def edit(folder: Path) -> None:
        path = folder / name
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))

    return edit


def _external_data(location: str):
    def edit(folder: Path) -> None:
        import onnx

        path = folder / "onnx" / "model.onnx"
        model = onnx.load(str(path))
        path.unlink()
        onnx.save_model(model, str(path), save_as_external_data=True, location=location, size_threshold=0)

    return edit


# (what is changed, the problem reported): each is a field TEI's ONNX loader reads (router/src/lib.rs,
# backends/ort/src/lib.rs, backends/src/lib.rs of text-embeddings-inference 1.9).
TEI_CASES = [
    ("config.json architectures", _json_edit("config.json", lambda d: d.pop("architectures")),
     "config.json: field 'architectures' missing"),
    ("config.json classifier", _json_edit("config.json", lambda d: d.update(architectures=["MT5ForSequenceClassification"])),
     "make TEI serve a classifier"),
    ("config.json model_type", _json_edit("config.json", lambda d: d.pop("model_type")),
     "config.json: field 'model_type' missing"),
    ("config.json max_position_embeddings", _json_edit("config.json", lambda d: d.pop("max_position_embeddings")),
     "config.json: field 'max_position_embeddings' missing"),
    ("config.json hidden_size type", _json_edit("config.json", lambda d: d.update(hidden_size="64")),
     "config.json: field 'hidden_size' must be a non-negative integer, got '64'"),
    ("config.json num_hidden_layers", _json_edit("config.json", lambda d: d.pop("num_hidden_layers")),
     "config.json: field 'num_hidden_layers' missing"),
    ("config.json eos_token_id list", _json_edit("config.json", lambda d: d.update(eos_token_id=[1, 2])),
     "config.json: field 'eos_token_id' must be a non-negative integer or null"),
    ("pooling mean field", _json_edit("1_Pooling/config.json", lambda d: d.pop("pooling_mode_mean_tokens")),
     "1_Pooling/config.json: field 'pooling_mode_mean_tokens' missing"),
    ("pooling none true", _json_edit("1_Pooling/config.json", lambda d: d.update(pooling_mode_mean_tokens=False)),
     "no pooling mode TEI supports is true"),
    ("pooling file", lambda f: (f / "1_Pooling" / "config.json").unlink(), "1_Pooling/config.json: missing"),
    ("st config", lambda f: (f / "sentence_bert_config.json").unlink(), "sentence_bert_config.json: missing"),
    ("st max_seq_length beyond positions", _json_edit("sentence_bert_config.json", lambda d: d.update(max_seq_length=4096)),
     "max_seq_length 4096 exceeds config.json max_position_embeddings"),
    ("padding side", _json_edit("tokenizer_config.json", lambda d: d.update(padding_side="middle")),
     "tokenizer_config.json: field 'padding_side' must be left or right"),
    ("tokenizer.json", lambda f: (f / "tokenizer.json").unlink(), "tokenizer.json: missing"),
    ("tokenizer.json corrupt", lambda f: (f / "tokenizer.json").write_text("{}"), "tokenizer.json: does not load"),
    ("graph", lambda f: (f / "onnx" / "model.onnx").unlink(), "model.onnx / onnx/model.onnx: missing"),
    ("external data name", _external_data("weights.bin"), "external data in 'weights.bin', TEI fetches 'model.onnx_data'"),
    ("external data TEI's name", _external_data("model.onnx_data"), None),  # control: the layout TEI expects
]  # fmt: skip


@pytest.mark.parametrize(("change", "expected"), [c[1:] for c in TEI_CASES], ids=[c[0] for c in TEI_CASES])
def test_tei_layout_check_names_each_field(tiny_export, tmp_path, change, expected):
    folder = shutil.copytree(tiny_export[0], tmp_path / "export", ignore=shutil.ignore_patterns("triton"))
    change(folder)
    found = serving.tei_problems(folder)
    if expected is None:
        assert found == [] and (folder / "onnx" / "model.onnx_data").is_file()
    else:
        assert any(expected in p for p in found), found


# ------------------------------------------------------------------ Triton


@pytest.mark.parametrize("exported", EXPORTS, indirect=True)
def test_triton_config_matches_the_graph(exported):
    out, _ = exported
    repo = out / "triton" / "mst5_encoder"
    assert config_problems(repo) == []
    max_batch, declared = read_config_tensors((repo / "config.pbtxt").read_text())
    dim = report(out)["embedding_dim"]
    assert max_batch == 64
    assert declared["input"] == {"input_ids": ("TYPE_INT64", [-1]), "attention_mask": ("TYPE_INT64", [-1])}
    assert declared["output"] == {
        "last_hidden_state": ("TYPE_FP32", [-1, dim]),
        "sentence_embedding": ("TYPE_FP32", [dim]),
    }


TRITON_CASES = [
    ('name: "input_ids"', 'name: "ids"', ["input 'ids' is not in the graph (graph has ['attention_mask', 'input_ids'])",
                                    "graph input 'input_ids' is not declared"]),
    ('name: "attention_mask" data_type: TYPE_INT64', 'name: "attention_mask" data_type: TYPE_INT32',
     ["input 'attention_mask': data_type TYPE_INT32, graph has TYPE_INT64"]),
    ("dims: [ -1, 64 ]", "dims: [ 64 ]", ["output 'last_hidden_state': dims [64], graph has [-1, 64]"]),
    ("dims: [ 64 ]", "dims: [ 63 ]", ["output 'sentence_embedding': dims [63], graph has [64]"]),
    ("max_batch_size: 64", "max_batch_size: 0",
     ["input 'input_ids': dims [-1], graph has [-1, -1]", "input 'attention_mask': dims [-1], graph has [-1, -1]",
      "output 'last_hidden_state': dims [-1, 64], graph has [-1, -1, 64]",
      "output 'sentence_embedding': dims [64], graph has [-1, 64]"]),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new", "expected"), TRITON_CASES, ids=["name", "type", "rank", "dim", "batch"])
def test_triton_check_names_each_mismatch(tiny_export, tmp_path, old, new, expected):
    repo = shutil.copytree(tiny_export[0] / "triton" / "mst5_encoder", tmp_path / "m")
    text = (repo / "config.pbtxt").read_text()
    assert old in text
    (repo / "config.pbtxt").write_text(text.replace(old, new, 1))
    assert sorted(config_problems(repo)) == sorted(expected)


def test_triton_repo_with_a_wrong_dimension_is_refused(tiny_export, tmp_path):
    from mst5_dist.export.onnx_graph import ExportError

    graph = tiny_export[0] / "onnx" / "model.onnx"
    with pytest.raises(ExportError, match=r"dims \[-1, 63\], graph has \[-1, 64\]"):
        write_triton_repo(graph, tmp_path / "repo", name="m", hidden=63)
    write_triton_repo(graph, tmp_path / "ok", name="m", hidden=64)  # the right one is written


# ------------------------------------------------------------------ FastEmbed (its own virtualenv)

FASTEMBED_SCRIPT = r"""
import json, sys
import numpy as np
from fastembed import TextEmbedding
from fastembed.common.model_description import ModelSource, PoolingType

export_dir, texts_file, out_file, mode = sys.argv[1:]
kwargs = json.loads(sys.stdin.read())  # mst5_dist.export.serving.fastembed_arguments(export_dir)
name = f"local/mst5-export-{mode}"
if mode == "mean":  # pool last_hidden_state (output 0) in FastEmbed instead of the graph's embedding
    kwargs.pop("output_name")
    pooling = PoolingType.MEAN
else:
    pooling = PoolingType.DISABLED
TextEmbedding.add_custom_model(model=name, pooling=pooling, sources=ModelSource(hf=name), **kwargs)
model = TextEmbedding(name, specific_model_path=export_dir, local_files_only=True)
texts = [json.loads(line) for line in open(texts_file, encoding="utf-8")]
np.save(out_file, np.stack(list(model.embed(texts, batch_size=16))).astype(np.float32))
"""


@pytest.fixture(scope="module")
def fastembed_python(tmp_path_factory) -> str:
    venv = tmp_path_factory.mktemp("fastembed") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    proc = subprocess.run([py, "-m", "pip", "install", "-q", FASTEMBED], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return py


@pytest.mark.slow
@pytest.mark.parametrize("exported", ["tiny", "minilm"], indirect=True)
def test_fastembed_embeddings_equal_mst5_embed(exported, fastembed_python, texts, tmp_path):
    """FastEmbed loads the export folder as it is, offline, and embeds like `mst5 embed`: with
    pooling disabled on the graph's `sentence_embedding`, and with its own mean pooling of
    `last_hidden_state` (for this mean-pooled model)."""
    out, _ = exported
    lines = tmp_path / "texts.txt"
    lines.write_text("\n".join(texts) + "\n", encoding="utf-8")
    ours = tmp_path / "ours.npy"
    proc = subprocess.run(mst5_cmd("embed", "--model", str(out), "--input", str(lines), "--output", str(ours)),
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref = np.load(ours)
    as_json = tmp_path / "texts.jsonl"
    as_json.write_text("\n".join(json.dumps(t, ensure_ascii=False) for t in texts) + "\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    for mode in ("disabled", "mean"):
        got_file = tmp_path / f"fastembed-{mode}.npy"
        proc = subprocess.run(
            [fastembed_python, "-c", FASTEMBED_SCRIPT, str(out), str(as_json), str(got_file), mode],
            input=json.dumps(serving.fastembed_arguments(out)), capture_output=True, text=True, env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = np.load(got_file)
        assert got.shape == ref.shape == (len(texts), report(out)["embedding_dim"])
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() >= 0.9999, (mode, float(cos.min()))
