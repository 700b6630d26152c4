"""int8 recipe chosen by the parity gate, and the ORT transformer optimizer's keep/drop decision."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import english_tiny_nli, minilm_lora_cmd, mst5_cmd

from mst5_dist.export import gate as gate_mod
from mst5_dist.export import int8 as int8_mod
from mst5_dist.export import merge as merge_mod
from mst5_dist.export import optimize as optimize_mod
from mst5_dist.export.gate import GateFailed, Thresholds
from mst5_dist.export.onnx_graph import ExportError
from mst5_dist.export.probes import build_probe
from mst5_dist.export.runtime import OnnxEmbedder


@pytest.fixture(scope="module")
def tiny_probe(tiny_base):
    """The probe and the PyTorch reference outputs of the tiny mT5 (what the export gates against)."""
    encoder = merge_mod.load_encoder(tiny_base)
    probe = build_probe(encoder.tokenizer)
    return encoder, probe, merge_mod.encoder_outputs(encoder, probe.batches)


def gate_fn(tiny_probe, variant: str, thresholds: Thresholds | None = None):
    _, probe, ref = tiny_probe
    return lambda p: gate_mod.run_gate(variant, p, probe, ref, thresholds)


def op_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


# ------------------------------------------------------------------ int8 recipe choice (tiny mT5)


# Every graph passes a gate that asks only for finite outputs (a cosine is never below -1), so which
# recipe passes is set by the case, not by how well a random tiny model happens to quantise.
LENIENT = Thresholds(min_cos=-1.0, retrieval=None)


def failing_first(gate, fails: int):
    """``gate``, except that its first ``fails`` calls fail (a recipe the case rules out)."""
    calls = []

    def gated(path):
        calls.append(path)
        if len(calls) <= fails:
            raise GateFailed("ruled out by the test", {"embedding_min_cos": 0.0, "retrieval_top1_agreement": 0.0})
        return gate(path)

    return gated


@pytest.mark.unit
@pytest.mark.parametrize(("fails", "kept"), [(0, "per_channel"), (1, "per_channel_matmul")])
def test_first_passing_recipe_is_kept_and_scratch_removed(tiny_onnx, tiny_probe, tmp_path, fails, kept):
    """The first recipe that passes is written and nothing after it is tried; the scratch folder goes."""
    dst, scratch = tmp_path / "model_qint8.onnx", tmp_path / "trials"
    gate = failing_first(gate_fn(tiny_probe, "int8", LENIENT), fails)
    choice = int8_mod.choose_int8(tiny_onnx / "onnx/model.onnx", dst, scratch, gate)
    assert [(c["recipe"], c["passed"]) for c in choice["candidates"]] == [
        *[("per_channel", False)] * fails, (kept, True)
    ]  # fmt: skip
    assert choice["recipe"]["name"] == kept and choice["recipe"]["keep_fp32"] == []
    assert op_counts(dst).get("MatMulInteger", 0) > 0 and not scratch.exists()
    # The written graph is the kept recipe's: per_channel also quantises the embedding table (its
    # Gather reads an int8 table through DequantizeLinear); MatMul-only leaves it fp32.
    assert (op_counts(dst).get("DequantizeLinear", 0) > 0) == (kept == "per_channel")


@pytest.mark.unit
def test_ladder_keeps_families_fp32_and_names_the_closest(tiny_onnx, tiny_probe, tmp_path):
    """A threshold no int8 graph meets: every candidate, sensitivity run and ladder step is tried
    and recorded, the error names the closest, and nothing is written."""
    impossible = Thresholds(min_cos=1.01, retrieval=None)
    dst, src = tmp_path / "model_qint8.onnx", tiny_onnx / "onnx/model.onnx"
    with pytest.raises(GateFailed) as err:
        int8_mod.choose_int8(src, dst, tmp_path / "trials", gate_fn(tiny_probe, "int8", impossible))
    records = err.value.report["candidates"]
    families = int8_mod.weight_matmul_families(src)
    assert [r["recipe"] for r in records[:2]] == ["per_channel", "per_channel_matmul"]
    assert sum(r["purpose"] == "sensitivity" for r in records) == len(families)
    assert all(not r["passed"] and r["failures"] for r in records)
    closest = err.value.report["closest"]
    assert closest["embedding_min_cos"] == max(r["embedding_min_cos"] for r in records)
    assert f"closest: {closest['recipe']}" in str(err.value) and not dst.exists()
    # T5 roles: q, k, v, o, wi_0, wi_1, wo, each one node per layer.
    assert any(f.endswith("DenseReluDense/wo/MatMul") for f in families) and len(families) == 7
    assert {len(nodes) for nodes in families.values()} == {2}


@pytest.mark.unit
def test_kept_fp32_nodes_stay_fp32(tiny_onnx, tmp_path):
    src = tiny_onnx / "onnx/model.onnx"
    wo = next(nodes for fam, nodes in int8_mod.weight_matmul_families(src).items() if fam.endswith("wo/MatMul"))
    recipe = int8_mod.Recipe("t", per_channel=True, op_types=("MatMul",), keep_fp32=tuple(wo))
    names = {n.name: n.op_type for n in onnx.load(str(int8_mod.quantize(src, tmp_path / "q.onnx", recipe))).graph.node}
    assert all(names.get(n) == "MatMul" for n in wo)
    everything = int8_mod.quantize(src, tmp_path / "all.onnx", int8_mod.RECIPES["per_channel_matmul"])
    assert not any(n.name in wo for n in onnx.load(str(everything)).graph.node)  # the negative control


@pytest.mark.unit
def test_unknown_recipe_is_refused(tiny_onnx, tiny_probe, tmp_path):
    with pytest.raises(ExportError, match="per_channel_matmul_keep_fp32"):
        int8_mod.choose_int8(tiny_onnx / "onnx/model.onnx", tmp_path / "q.onnx", tmp_path / "s", print, ("fast",))


# ------------------------------------------------------------------ ORT transformer optimizer decision


@pytest.mark.unit
@pytest.mark.parametrize(
    "min_speedup, thresholds, kept, reason",
    [  # kept (passes, faster than a bar of 0): test_kept_optimized_graph_is_served_and_fingerprinted
        (1e9, None, False, "not faster"),  # passes, but no graph is 1e9x faster
        (0.0, Thresholds(max_abs=0.0, min_cos=1.01), False, "parity gate failed"),  # faster, but fails
    ],
)
def test_optimizer_keep_or_drop(tiny_onnx, tiny_probe, tmp_path, monkeypatch, min_speedup, thresholds, kept, reason):
    encoder, probe, _ = tiny_probe
    monkeypatch.setattr(optimize_mod, "MIN_SPEEDUP", min_speedup)
    monkeypatch.setattr(optimize_mod, "TIMING_ROUNDS", 1)
    dst = tmp_path / "model_optimized.onnx"
    gate = gate_fn(tiny_probe, "fp32", thresholds)
    info = optimize_mod.try_optimizer(tiny_onnx / "onnx/model.onnx", dst, encoder.backbone.config, gate, probe.batches)
    assert info["kept"] is kept and dst.exists() is kept and info["model_type"] == "t5"
    # On the mT5 encoder graph the optimizer fuses RMS norms and the gated GELU, not attention.
    assert info["fused"].get("SkipSimplifiedLayerNormalization", 0) > 0 and "Attention" not in info["fused"]
    if reason:
        assert info["reason"].startswith(reason)
    if kept or reason == "not faster":
        assert info["speedup"] > 0 and info["gate"]["passed"]


@pytest.mark.unit
def test_optimizer_skips_unknown_model_types(tiny_onnx, tmp_path):
    class Config:
        model_type = "gpt2"

    info = optimize_mod.try_optimizer(tiny_onnx / "onnx/model.onnx", tmp_path / "o.onnx", Config(), print, [])
    assert info == {"kept": False, "reason": "no optimizer model type for 'gpt2'"}


@pytest.mark.unit
def test_kept_optimized_graph_is_served_and_fingerprinted(tiny_base, tmp_path, monkeypatch):
    from mst5_dist.errors import BadInput
    from mst5_dist.export.pipeline import export_model

    monkeypatch.setattr(optimize_mod, "MIN_SPEEDUP", 0.0)
    monkeypatch.setattr(optimize_mod, "TIMING_ROUNDS", 1)
    out = tmp_path / "exp"
    rep = export_model(tiny_base, out)
    opt = rep["optimizer"]
    assert opt["kept"] and opt["file"] == "onnx/model_optimized.onnx" and opt["gate"]["passed"]
    texts = ["Der Zug fährt um acht.", "The train leaves at eight.", "Ja."]
    fused = OnnxEmbedder(out, variant="fp32_optimized")
    assert fused.fingerprint == opt["fingerprint"]
    assert np.abs(fused.encode(texts) - OnnxEmbedder(out).encode(texts)).max() <= 1e-5
    # Dropped: asking for it names why (negative control).
    rep["optimizer"] = {"kept": False, "reason": "not faster: 0.9x"}
    (out / "export_report.json").write_text(json.dumps(rep))
    with pytest.raises(BadInput, match="not faster"):
        OnnxEmbedder(out, variant="fp32_optimized")


# ------------------------------------------------------------------ the real all-MiniLM-L6-v2


@pytest.mark.slow  # 35-80 s (fp32 MiniLM export + one quantise and gate)
def test_minilm_forced_per_tensor_fails_and_names_it(minilm_path, tmp_path, capsys):
    """The old recipe on real weights: refused with exit 3, the message names it, nothing written."""
    from mst5_dist.cli import main

    out = tmp_path / "pt"
    args = ["export", "--model", str(minilm_path), "--output", str(out), "--quantize", "int8"]
    assert main([*args, "--int8-recipe", "per_tensor", "--no-optimize"]) == 3
    err = capsys.readouterr().err
    assert "no recipe of ['per_tensor'] passed; closest: per_tensor" in err and "min cos 0." in err
    assert not out.exists() and not out.with_name("pt.tmp").exists()


@pytest.fixture(scope="module")
def minilm_lora(minilm_path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("minilm-lora")
    out = folder / "run"
    proc = subprocess.run(
        minilm_lora_cmd(minilm_path, english_tiny_nli(folder), out, "train.max_steps=3"), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_minilm_lora_int8_passes_the_gate(minilm_lora, tmp_path):
    out = tmp_path / "q"
    proc = subprocess.run(
        mst5_cmd("export", "--model", str(minilm_lora), "--output", str(out), "--quantize", "int8"),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rep = json.loads((out / "export_report.json").read_text())
    int8 = rep["variants"]["int8"]
    assert rep["merge"]["merged"] and int8["passed"] and int8["embedding_min_cos"] >= 0.98
    chosen, tried = int8["recipe"], int8["candidates"]
    assert chosen["name"] in int8_mod.RECIPE_NAMES and tried[-1]["passed"]
    assert all(not r["passed"] for r in tried[:-1])  # the first that passes is kept
    assert tried[-1]["families_fp32"] == chosen["families"]
    graph = {n.name: n.op_type for n in onnx.load(str(out / int8["file"])).graph.node}
    assert all(graph[n] == "MatMul" for n in chosen["keep_fp32"]) and "MatMulInteger" in graph.values()
    assert rep["optimizer"]["model_type"] == "bert" and rep["optimizer"]["fused"].get("Attention") == 6
