"""``mst5 import-adapter``: a LoRA adapter in the exact PEFT 0.4.0.dev0 layout of pkshatech/m-ST5
(pickled ``adapter_model.bin``, keys without adapter name, ``task_type: null``) built on the tiny mT5,
imported, and checked against LoRA applied by hand; bad keys and unsafe pickles refused; model card.
Outward: mteb 2 runs our PyTorch and ONNX encoders offline on real STS17 pairs and reports our numbers;
a real MiniLM LoRA run, exported, equals sentence-transformers on the merged checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import english_tiny_nli, minilm_lora_cmd, mst5_cmd

from mst5_dist.interop import InteropError, import_adapter, write_model_card
from mst5_dist.model import SentenceEncoder, load_backbone, mean_pool

R, ALPHA = 4, 8
TEXTS = ["The cat sits on the mat.", "Die Katze schläft.", "El perro corre en el parque.", "猫が寝ている。"]
OLD_CONFIG = {  # field for field what PEFT 0.4.0.dev0 wrote for m-ST5 (only r/alpha scaled down)
    "base_model_name_or_path": "google/mt5-xxl",
    "bias": "none",
    "fan_in_fan_out": False,
    "inference_mode": True,
    "init_lora_weights": True,
    "lora_alpha": ALPHA,
    "lora_dropout": 0.1,
    "modules_to_save": None,
    "peft_type": "LORA",
    "r": R,
    "revision": None,
    "target_modules": ["q", "v"],
    "task_type": None,
}

# The front matter of the m-ST5 Hub card (what the source declares about itself).
HUB_CARD = "---\nlibrary_name: peft\ndatasets:\n- xnli\nlicense: cc-by-nc-4.0\npipeline_tag: sentence-similarity\n---\n"


def old_state(base: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random LoRA A and B (B non-zero, unlike a fresh init) under the old key names."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(base)
    g = torch.Generator().manual_seed(seed)
    inner = cfg.num_heads * cfg.d_kv
    state = {}
    for layer in range(cfg.num_layers):
        for proj in ("q", "v"):
            prefix = f"base_model.model.encoder.block.{layer}.layer.0.SelfAttention.{proj}"
            state[f"{prefix}.lora_A.weight"] = torch.randn(R, cfg.d_model, generator=g) * 0.2
            state[f"{prefix}.lora_B.weight"] = torch.randn(inner, R, generator=g) * 0.2
    return state


def write_old_adapter(folder: Path, state: dict, config: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config or OLD_CONFIG, indent=2))
    torch.save(state, folder / "adapter_model.bin")
    return folder


def hand_lora_embeddings(base: Path, state: dict, tokenizer) -> torch.Tensor:
    """W + (alpha / r) * B @ A on every adapted projection of a plain MT5EncoderModel, masked mean."""
    model = load_backbone(str(base)).eval()
    modules = dict(model.named_modules())
    with torch.no_grad():
        for key, a in state.items():
            if key.endswith("lora_A.weight"):
                name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                b = state[key.replace("lora_A", "lora_B")]
                modules[name].weight += (ALPHA / R) * (b @ a)
        batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
    return mean_pool(hidden, batch["attention_mask"])


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not out.with_name(out.name + ".tmp").exists()


@pytest.mark.unit
def test_old_layout_adapter_imports_and_equals_hand_applied_lora(tiny_base, tmp_path):
    state = old_state(tiny_base)
    src = write_old_adapter(tmp_path / "m-st5-old", state)
    (src / "README.md").write_text(HUB_CARD)
    out = import_adapter(src, str(tiny_base), tmp_path / "imported", base_license="apache-2.0")

    files = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "sentence_encoder.json", "README.md"} <= files
    assert "adapter_model.bin" not in files and not (tmp_path / "imported.tmp").exists()
    from safetensors.torch import load_file

    written = load_file(str(out / "adapter_model.safetensors"))
    assert set(written) == set(state)  # peft 0.21 file keys == PEFT 0.4 keys (".default" lives in the model only)
    assert all(torch.equal(written[k], v) for k, v in state.items())
    meta = json.loads((out / "sentence_encoder.json").read_text())
    assert meta["pooling"] == "mean" and meta["normalize"] is False and meta["tokenizer_use_fast"] is False
    assert meta["adapter"] is True and meta["base_model"] == str(tiny_base.resolve())
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == R and cfg["lora_alpha"] == ALPHA and sorted(cfg["target_modules"]) == ["q", "v"]
    assert cfg["task_type"] is None and cfg["base_model_name_or_path"] == str(tiny_base.resolve())
    report = json.loads((out / "import_report.json").read_text())
    assert report["matched"] == len(state) and report["verified_in_model"] and not report["dropped_decoder_keys"]

    card = (out / "README.md").read_text()
    assert "# imported\n" in card and "license: cc-by-nc-4.0" in card and "## Data\n\nxnli\n" in card
    assert "- adapter weights: cc-by-nc-4.0" in card and f"base model `{tiny_base.resolve()}`: apache-2.0" in card

    enc = SentenceEncoder.from_pretrained(out)
    assert not enc.tokenizer_use_fast and "Fast" not in type(enc.tokenizer).__name__
    got = enc.encode(TEXTS)
    want = hand_lora_embeddings(tiny_base, state, enc.tokenizer)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    plain = hand_lora_embeddings(tiny_base, {}, enc.tokenizer)
    assert (got - plain).abs().max() > 1e-2  # the adapter really acts


@pytest.mark.unit
def test_decoder_keys_are_reported_not_dropped(tiny_base, tmp_path):
    state = old_state(tiny_base)
    dec = "base_model.model.decoder.block.0.layer.0.SelfAttention.q"
    state[f"{dec}.lora_A.weight"] = torch.zeros(R, 64)
    state[f"{dec}.lora_B.weight"] = torch.zeros(64, R)
    src = write_old_adapter(tmp_path / "seq2seq", state)
    with pytest.raises(InteropError, match=r"decoder.*decoder\.block\.0\.layer\.0\.SelfAttention\.q\.lora_A"):
        import_adapter(src, str(tiny_base), tmp_path / "out", verify=False)
    assert_nothing_written(tmp_path / "out")
    out = import_adapter(src, str(tiny_base), tmp_path / "out", drop_decoder=True, verify=False)
    report = json.loads((out / "import_report.json").read_text())
    assert report["dropped_decoder_keys"] == sorted(k for k in state if ".decoder." in k)
    assert "2 decoder tensors dropped" in (out / "README.md").read_text()


def test_unmatched_key_fails_listing_it_via_cli(tiny_base, tmp_path):
    state = old_state(tiny_base)
    bad = "base_model.model.encoder.block.0.layer.0.SelfAttention.qq.lora_A.weight"
    state[bad] = torch.zeros(R, 64)
    src = write_old_adapter(tmp_path / "bad", state)
    out = tmp_path / "out"
    proc = subprocess.run(
        mst5_cmd("import-adapter", str(src), "--base", str(tiny_base), "--output", str(out)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert bad in proc.stderr and "match no LoRA module" in proc.stderr
    assert_nothing_written(out)


@pytest.mark.unit
def test_missing_and_misshaped_tensors_fail(tiny_base, tmp_path):
    state = old_state(tiny_base)
    gone = "base_model.model.encoder.block.1.layer.0.SelfAttention.v.lora_B.weight"
    del state[gone]
    src = write_old_adapter(tmp_path / "partial", state)
    with pytest.raises(InteropError, match=r"get no tensor.*block\.1\.layer\.0\.SelfAttention\.v\.lora_B"):
        import_adapter(src, str(tiny_base), tmp_path / "out", verify=False)
    state = old_state(tiny_base)
    state["base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight"] = torch.zeros(R, 32)
    src = write_old_adapter(tmp_path / "shape", state)
    with pytest.raises(InteropError, match="shape mismatch"):
        import_adapter(src, str(tiny_base), tmp_path / "out", verify=False)
    assert_nothing_written(tmp_path / "out")


class Payload:
    """Unpickling this runs code (os.system through __reduce__) unless weights_only refuses it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def helper_function() -> None:
    pass


@pytest.mark.unit
@pytest.mark.parametrize("kind", ["code", "instance", "function"])
def test_non_tensor_pickle_refused_and_nothing_written(tiny_base, tmp_path, kind):
    marker = tmp_path / "PWNED"
    state = old_state(tiny_base)
    state["extra"] = {"code": Payload(marker), "instance": Path("x"), "function": helper_function}[kind]
    src = write_old_adapter(tmp_path / "evil", state)
    with pytest.raises(InteropError, match=r"refused.*weights_only=True") as exc:
        import_adapter(src, str(tiny_base), tmp_path / "out")
    assert "Nothing was written" in str(exc.value)
    assert not marker.exists()
    assert_nothing_written(tmp_path / "out")


@pytest.mark.unit
def test_existing_output_kept_without_overwrite(tiny_base, tmp_path):
    src = write_old_adapter(tmp_path / "a", old_state(tiny_base))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InteropError, match="exists"):
        import_adapter(src, str(tiny_base), out, verify=False)
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.unit
def test_model_card_from_training_config_and_results(tmp_path):
    d = tmp_path / "final"
    d.mkdir()
    meta = {"base_model": "google/mt5-base", "adapter": True, "pooling": "mean", "normalize": True,
            "max_seq_length": 128, "tokenizer_use_fast": True, "embedding_dim": 768}  # fmt: skip
    (d / "sentence_encoder.json").write_text(json.dumps(meta))
    adapter = {"r": 8, "lora_alpha": 32, "lora_dropout": 0.1, "target_modules": ["q", "k", "v", "o"], "bias": "none"}
    (d / "adapter_config.json").write_text(json.dumps(adapter))
    (d / "training_config.yaml").write_text(
        "model:\n  name_or_path: google/mt5-base\nlora:\n  preset: all-linear\n  r: 8\n  alpha: 32\n"
        "optim:\n  lr: 5.0e-05\ntrain:\n  batch_size: 128\n  epochs: 1\n  seed: 42\n"
        "loss:\n  temperature: 0.05\n  hard_negatives: true\n"
        "data:\n  format: xnli\n  paths: [data/xnli]\n"
    )
    (d / "results.json").write_text(json.dumps({"markdown": "| Model | STS17 ar-ar |\n|---|---|\n| final | 71.3 |"}))
    card = write_model_card(d, base_license="apache-2.0").read_text()
    assert "`google/mt5-base`" in card and "L2-normalised" in card
    assert "r 8, alpha 32, dropout 0.1" in card and "'q', 'k', 'v', 'o'" in card
    assert "lr 5e-05" in card and "global batch 128" in card and "`all-linear`" in card
    assert "xnli data: data/xnli" in card
    assert "| final | 71.3 |" in card
    assert "model.load_adapter(" in card and "onnx/model.onnx" in card and "tritonserver" in card
    assert "base model `google/mt5-base`: apache-2.0" in card
    assert "training data: not declared" in card and "license: apache-2.0" in card

    (d / "results.json").unlink()
    (d / "training_config.yaml").unlink()
    card = write_model_card(d).read_text()
    assert "No `results.json` yet" in card and "No `training_config.yaml`" in card and "license:" not in card


@pytest.mark.unit
def test_card_sentence_transformers_snippet_reproduces_embeddings(tiny_base, tmp_path):
    """The card's sentence-transformers recipe, run as written, gives the imported encoder's vectors."""
    state = old_state(tiny_base)
    out = import_adapter(write_old_adapter(tmp_path / "a", state), str(tiny_base), tmp_path / "imp", verify=False)
    card = (out / "README.md").read_text()
    code = card.split("With sentence-transformers")[1].split("```python\n")[1].split("```")[0]
    scope: dict = {}
    exec(code.replace("THIS_DIR", str(out)), scope)  # our own generated snippet
    got = torch.as_tensor(scope["model"].encode(TEXTS, convert_to_numpy=True))
    want = SentenceEncoder.from_pretrained(out).encode(TEXTS)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- mteb 2 (offline) and MiniLM LoRA -> export

# mteb STS17 subset -> our STS17 track. mteb's cross-lingual subsets put English first; our reader puts
# the track name's first language first (cosine is symmetric, the pairs are the same).
STS17_SUBSETS = {"en-en": "en-en", "ar-ar": "ar-ar", "en-ar": "ar-en"}
N_PAIRS = 200
# mteb scores in 0..1 with cosines from float32 rows (sklearn paired_cosine_distances); ours are x100
# with float64 cosines (mst5_dist.evaluate.sts.paired_cosine), so near-equal cosines can tie in mteb
# and not in ours. Gap measured on the tiny model: 0 on en-en and en-ar, 1.3e-3 (x100) on ar-ar, where
# float32 cosines have 3 ties and float64 ones 1 (Spearman on float32 cosines gives mteb's number to
# the last digit). 1e-2 x100 is 1e-4 in mteb's own units.
MTEB_TOLERANCE_X100 = 1e-2


def sts17_task_from_files(pairs: dict, monkeypatch):
    """mteb's own STS17 task with its dataset injected from our files; loading from the Hub refused."""
    import mteb
    from datasets import Dataset, DatasetDict

    task = mteb.get_task("STS17", hf_subsets=list(pairs))
    task.dataset = {
        subset: DatasetDict(
            {"test": Dataset.from_dict({"sentence1": p.first, "sentence2": p.second, "score": p.scores})}
        )
        for subset, p in pairs.items()
    }
    task.data_loaded = True

    def no_download(*args, **kwargs):
        raise AssertionError("mteb tried to load STS17 from the Hub")

    monkeypatch.setattr(task, "load_data", no_download)
    return task


def mteb_cosine_spearman_x100(model, pairs: dict, monkeypatch) -> dict[str, float]:
    import mteb

    task = sts17_task_from_files(pairs, monkeypatch)
    result = mteb.evaluate(
        model, task, cache=None, co2_tracker=False, show_progress_bar=False, encode_kwargs={"batch_size": 64}
    )
    assert not result.exceptions, result.exceptions
    (task_result,) = result.task_results
    rows = {row["hf_subset"]: row for row in task_result.scores["test"]}
    assert set(rows) == set(pairs)
    assert all(row["main_score"] == row["cosine_spearman"] for row in rows.values())
    return {subset: row["cosine_spearman"] * 100 for subset, row in rows.items()}


class ReversedRows:
    """Negative control: the right vectors in the wrong rows."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.fingerprint = inner.fingerprint

    def encode(self, texts, batch_size=64):
        return self.inner.encode(texts, batch_size=batch_size)[::-1]


def reorder_bound_x100(a: np.ndarray, b: np.ndarray) -> float:
    """How far float noise can move Spearman x100 between two cosine vectors of the same pairs.

    Two items whose cosines lie within twice the largest per-item difference can swap ranks; each
    swap moves sum(d^2) by at most 4n+2, i.e. rho by 6(4n+2)/(n(n^2-1)). With no such near-tie the
    bound is 0 and the two Spearmans must agree to float precision."""
    eps = float(np.abs(a - b).max())
    s = np.sort(a)
    flips = int(sum(np.searchsorted(s, x + 2 * eps, side="right") - i - 1 for i, x in enumerate(s)))
    n = len(a)
    return 100 * flips * 6 * (4 * n + 2) / (n * (n * n - 1))


@pytest.mark.unit
def test_reorder_bound_counts_only_near_ties():
    a = np.array([0.1, 0.2, 0.3, 0.30000001, 0.9])
    assert reorder_bound_x100(a, a) == 0.0  # no noise: Spearmans must agree exactly
    b = a + np.array([0, 0, 1e-8, -1e-8, 0])
    assert reorder_bound_x100(a, b) > 0  # 0.3 and 0.30000001 may swap
    assert reorder_bound_x100(a[[0, 1, 2, 4]], b[[0, 1, 2, 4]]) == 0.0  # without the near-tie, none


@pytest.mark.unit
def test_mteb_sts17_offline_equals_our_sts_torch_and_onnx(tiny_base, tiny_onnx, shared_data, monkeypatch):
    """mteb 2.26 runs its own STS17 task (dataset injected from ../shared/data, no Hub) on our
    TorchEmbedder and OnnxEmbedder through ``as_mteb_model``; its cosine Spearman equals
    ``mst5_dist.evaluate.sts`` on the same 200 pairs per subset, and PyTorch equals ONNX."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from mteb.models import EncoderProtocol
    from mteb.models.model_meta import ScoringFunction

    from mst5_dist.evaluate.embedder import TorchEmbedder
    from mst5_dist.evaluate.sts import read_sts17, sts_scores
    from mst5_dist.export.runtime import OnnxEmbedder
    from mst5_dist.interop import as_mteb_model

    pairs = {s: read_sts17(shared_data / "sts17", t).head(N_PAIRS) for s, t in STS17_SUBSETS.items()}
    assert all(len(p) == N_PAIRS for p in pairs.values())
    embedders = {
        "torch": TorchEmbedder.from_pretrained(tiny_base, progress=False),
        "onnx": OnnxEmbedder(tiny_onnx, variant="fp32"),
    }
    mteb_numbers, ours, cosines = {}, {}, {}
    for name, emb in embedders.items():
        model = as_mteb_model(emb)
        assert isinstance(model, EncoderProtocol)
        meta = model.mteb_model_meta
        assert meta.embed_dim == 64 and meta.similarity_fn_name is ScoringFunction.COSINE
        assert meta.revision == emb.fingerprint[:16] and meta.name.startswith("mst5-dist/")
        mteb_numbers[name] = mteb_cosine_spearman_x100(model, pairs, monkeypatch)
        scores = {s: sts_scores(emb, p) for s, p in pairs.items()}
        ours[name] = {s: r["spearman"] for s, r in scores.items()}
        cosines[name] = {s: r["cosine"] for s, r in scores.items()}
        for subset in pairs:
            assert abs(mteb_numbers[name][subset] - ours[name][subset]) <= MTEB_TOLERANCE_X100, (name, subset)
    for subset in pairs:
        assert abs(mteb_numbers["torch"][subset] - mteb_numbers["onnx"][subset]) <= MTEB_TOLERANCE_X100, subset
        # PyTorch vs ONNX, stable under float reordering: the cosines agree to 1e-5, and the Spearmans
        # differ by no more than the near-ties that such differences can reorder allow.
        a, b = cosines["torch"][subset], cosines["onnx"][subset]
        assert np.abs(a - b).max() <= 1e-5, subset
        assert abs(ours["torch"][subset] - ours["onnx"][subset]) <= max(1e-4, reorder_bound_x100(a, b)), subset
    print(f"mteb vs ours (x100): {mteb_numbers} | {ours}")

    # The comparison can fail: the same vectors in the wrong rows give another mteb number.
    en = {"en-en": pairs["en-en"]}
    wrong = mteb_cosine_spearman_x100(as_mteb_model(ReversedRows(embedders["torch"])), en, monkeypatch)
    assert abs(wrong["en-en"] - ours["torch"]["en-en"]) > 5, wrong


def test_minilm_lora_export_equals_sentence_transformers_on_merged_checkpoint(minilm_path, shared_data, tmp_path):
    """A real LoRA run on the sentence-transformers MiniLM folder, exported: the export's ONNX
    embeddings equal ``SentenceTransformer(export_dir)`` (the merged checkpoint with modules.json,
    1_Pooling, 2_Normalize) on real STS-B sentences, and the LoRA really moved them off the base."""
    from sentence_transformers import SentenceTransformer

    from mst5_dist.evaluate.sts import read_stsb_csv
    from mst5_dist.export.pipeline import export_model
    from mst5_dist.export.runtime import OnnxEmbedder

    data = english_tiny_nli(tmp_path)
    run = tmp_path / "run"
    cmd = minilm_lora_cmd(minilm_path, data, run, "train.max_steps=6", "optim.lr=5e-3", "train.progress_bar=false")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "final" / "adapter_model.safetensors").is_file()

    out = tmp_path / "minilm-lora-onnx"
    rep = export_model(run, out)
    assert rep["merge"]["merged"] and rep["merge"]["lora_layers"] == 12 and rep["model_type"] == "bert"

    stsb = read_stsb_csv(shared_data / "stsb-multi-mt" / "stsb-en-test.csv").head(40)
    texts = list(dict.fromkeys(stsb.first + stsb.second))
    texts.append(" ".join(stsb.first[:12]))  # a real paragraph past max_seq_length: truncation agrees too

    st = SentenceTransformer(str(out), device="cpu")
    assert [type(m).__name__ for m in st] == ["Transformer", "Pooling", "Normalize"]
    assert st.max_seq_length == 48 and len(st.tokenizer(texts[-1])["input_ids"]) > 48
    want = st.encode(texts, convert_to_numpy=True, normalize_embeddings=False)
    got = OnnxEmbedder(out).encode(texts)
    cos = (got * want).sum(1)
    assert cos.min() >= 0.99999, cos.min()

    # The trained (unmerged LoRA) encoder is what sentence-transformers now loads, merged.
    ref = SentenceEncoder.from_pretrained(run / "final").encode(texts).numpy()
    assert (ref * want).sum(1).min() >= 0.99999

    base = SentenceTransformer(str(minilm_path), device="cpu")
    base.max_seq_length = 48
    untouched = base.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    moved = (untouched * want).sum(1)
    assert moved.mean() < 0.99 and moved.min() < 0.95, (moved.mean(), moved.min())
    print(f"ONNX vs SentenceTransformer(merged) min cos {cos.min():.8f}; base vs LoRA cos mean {moved.mean():.4f}")
