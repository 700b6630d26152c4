"""``export_model``: merge -> merged checkpoint -> ONNX fp32 [-> fp16] [-> int8] -> gates -> rename.

Everything is written into ``OUTPUT.tmp``; only when every requested variant passes its gate is it
renamed to ``OUTPUT``. A failed gate removes the temporary folder: no half-finished export is left
that looks like a good one.
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path
from typing import Any

from mst5_dist.export import gate as gate_mod
from mst5_dist.export import merge as merge_mod
from mst5_dist.export.int8 import choose_int8
from mst5_dist.export.onnx_graph import EmbeddingWrapper, ExportError, export_onnx, model_files
from mst5_dist.export.optimize import try_optimizer
from mst5_dist.export.precision import check_fp16_islands, fp16_plan
from mst5_dist.export.probes import MAX_PROBE_TOKENS, build_probe
from mst5_dist.export.runtime import REPORT_FILE
from mst5_dist.export.tensorrt_ops import check_tensorrt_ops
from mst5_dist.files import atomic_dir, fingerprint, write_json
from mst5_dist.outputs import check_output

logger = logging.getLogger(__name__)
VARIANT_FILES = {"fp32": "onnx/model.onnx", "fp16": "onnx/model_fp16.onnx", "int8": "onnx/model_qint8.onnx"}
OPTIMIZED_FILE = "onnx/model_optimized.onnx"  # ORT transformer optimizer output, when kept


def _probe_limit(config) -> int:
    limit = MAX_PROBE_TOKENS
    max_pos = getattr(config, "max_position_embeddings", None)
    if max_pos and getattr(config, "model_type", "") not in merge_mod.T5_FAMILY:
        # RoBERTa-style models offset positions by padding_idx + 1
        limit = min(limit, int(max_pos) - 2)
    return limit


def export_model(
    model: str | Path,
    output: str | Path,
    *,
    dtype: str = "fp32",
    quantize: str | None = None,
    opset: int = 17,
    triton: bool = False,
    overwrite: bool = False,
    thresholds: dict[str, gate_mod.Thresholds] | None = None,
    int8_recipes: tuple[str, ...] | None = None,
    optimize: bool = True,
) -> dict[str, Any]:
    """Export ``model`` (training output or final-style dir) to ``output``; return the report.

    ``int8_recipes``: the int8 candidates to try, in order (default ``int8.DEFAULT_ORDER``);
    ``optimize``: also try ONNX Runtime's transformer optimizer on the fp32 graph."""
    if dtype not in ("fp32", "fp16"):
        raise ExportError(f"--dtype {dtype}: use fp32 or fp16")
    if quantize not in (None, "int8"):
        raise ExportError(f"--quantize {quantize}: only int8 is supported")
    src = merge_mod.resolve_model_dir(model)
    out = check_output(output, "--output", [("--model", model), ("--model", src)])
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists (pass --overwrite to replace it)")
    t0 = time.perf_counter()
    try:
        with atomic_dir(out) as tmp:
            options = {"int8_recipes": int8_recipes, "optimize": optimize}
            report = _export_into(src, tmp, dtype, quantize, opset, triton, thresholds or {}, options)
            report["seconds"] = round(time.perf_counter() - t0, 2)
            write_json(tmp / REPORT_FILE, report)
    except gate_mod.GateFailed as e:
        raise gate_mod.GateFailed(f"{e} (nothing written to {out})", e.report) from None
    logger.info(f"[export] export written to {out} ({report['seconds']} s)")
    return report


class _Gater:
    """Gates each variant against the reference outputs and keeps its figures for the report."""

    def __init__(self, tmp: Path, probe, ref, thresholds: dict[str, gate_mod.Thresholds]) -> None:
        self.tmp, self.probe, self.ref, self.thresholds = tmp, probe, ref, thresholds
        self.variants: dict[str, Any] = {}

    def check(self, variant: str, path: Path) -> dict[str, Any]:
        """Gate ``path`` under ``variant``'s thresholds without recording it (raises GateFailed)."""
        return gate_mod.run_gate(variant, path, self.probe, self.ref, self.thresholds.get(variant))

    def describe(self, path: Path) -> dict[str, Any]:
        files = model_files(path)
        return {
            "file": str(path.relative_to(self.tmp)),
            "files": [str(f.relative_to(self.tmp)) for f in files],
            "bytes": sum(f.stat().st_size for f in files),
            "fingerprint": fingerprint(files),
            "tensorrt": check_tensorrt_ops(path),
        }

    def __call__(self, variant: str, path: Path) -> dict[str, Any]:
        rows = sum(len(b.rows) for b in self.probe.batches)
        logger.info(f"[export] gating {variant} ({path.name}) on {rows} probe rows")
        result = self.check(variant, path)
        result.update(self.describe(path))
        self.variants[variant] = result
        logger.info(
            f"[export] {variant}: max abs {result['embedding_max_abs']:.2e}, min cos {result['embedding_min_cos']:.7f}, "
            f"retrieval {result['retrieval_top1_agreement']:.3f}: PASS"
        )
        return result


def _merge_checked(encoder, probe, tmp: Path, src: Path) -> tuple[Any, dict[str, Any]]:
    """Reference outputs of the encoder as trained (adapter unmerged), then the fp32 merge, checked
    against them and saved as the merged checkpoint; returns (reference, merge info)."""
    ref = merge_mod.encoder_outputs(encoder, probe.batches)
    merge_info = merge_mod.merge_adapter(encoder)
    merged_out = merge_mod.encoder_outputs(encoder, probe.batches)
    merge_metrics = gate_mod.compare(probe, ref, merged_out)
    merge_info["embedding_max_abs_vs_unmerged"] = merge_metrics["embedding_max_abs"]
    if not merge_metrics["embedding_max_abs"] <= merge_mod.MERGE_TOLERANCE:
        raise gate_mod.GateFailed(
            f"merged embeddings differ from unmerged by {merge_metrics['embedding_max_abs']:.3g} "
            f"(> {merge_mod.MERGE_TOLERANCE:g})",
            {"merge": merge_info},
        )
    logger.info(f"[export] merge: {merge_info}")
    merge_mod.save_merged(encoder, tmp, source=src)
    return ref, merge_info


def _export_into(src, tmp: Path, dtype, quantize, opset, triton, thresholds, options) -> dict[str, Any]:
    logger.info(f"[export] loading {src} in fp32")
    encoder = merge_mod.load_encoder(src)
    probe = build_probe(encoder.tokenizer, max_tokens=_probe_limit(encoder.backbone.config))
    ref, merge_info = _merge_checked(encoder, probe, tmp, src)
    gate = _Gater(tmp, probe, ref, thresholds)
    config = encoder.backbone.config
    pad_id = encoder.tokenizer.pad_token_id if encoder.tokenizer.pad_token_id is not None else 0
    vocab = int(getattr(config, "vocab_size", 1000))

    def wrap(backbone):
        return EmbeddingWrapper(backbone, encoder.pooling, encoder.normalize).eval()

    fp32_path = tmp / VARIANT_FILES["fp32"]
    logger.info(f"[export] exporting fp32 graph (opset {opset})")
    export_onnx(wrap(encoder.backbone), fp32_path, opset=opset, pad_id=pad_id, vocab_size=vocab)
    gate("fp32", fp32_path)
    optimizer = _optimizer(gate, fp32_path, config, probe) if options["optimize"] else {"kept": False, "reason": "off"}
    if dtype == "fp16":
        path = tmp / VARIANT_FILES["fp16"]
        logger.info("[export] exporting fp16 graph (fp16 matmuls; norms, residuals, FFN output, pooling in fp32)")
        export_onnx(wrap(fp16_plan(encoder.backbone)), path, opset=opset, pad_id=pad_id, vocab_size=vocab)
        islands = check_fp16_islands(path)
        gate("fp16", path)["islands"] = islands
    if quantize == "int8":
        path = tmp / VARIANT_FILES["int8"]
        logger.info("[export] quantising to int8 (dynamic QInt8; the recipe is chosen by the gate)")
        choice = choose_int8(
            fp32_path, path, tmp / "int8-trials", lambda p: gate.check("int8", p), options["int8_recipes"]
        )
        gate("int8", path).update(choice)
    if triton:
        from mst5_dist.export.triton import write_triton_repo

        write_triton_repo(tmp / VARIANT_FILES[dtype], tmp / "triton", name="mst5_encoder", hidden=encoder.embedding_dim)
    report = _report(src, encoder, opset, merge_info, dtype, gate.variants, probe, triton)
    report["optimizer"] = optimizer
    return report


def _optimizer(gate: _Gater, fp32_path: Path, config, probe) -> dict[str, Any]:
    """ORT transformer optimizer behind the fp32 gate (``optimize.try_optimizer``)."""
    path = gate.tmp / OPTIMIZED_FILE
    info = try_optimizer(fp32_path, path, config, lambda p: gate.check("fp32", p), probe.batches)
    if info["kept"]:
        info.update(gate.describe(path), variant="fp32_optimized")
    return info


def _report(src, encoder, opset, merge_info, primary, variants, probe, triton) -> dict[str, Any]:
    import onnxruntime
    import torch
    import transformers

    hidden = encoder.embedding_dim
    return {
        "format_version": 1,
        "source": str(src),
        "base_model": encoder.base_model,
        "model_type": encoder.backbone.config.model_type,
        "pooling": encoder.pooling,
        "normalize": encoder.normalize,
        "embedding_dim": hidden,
        "max_seq_length": encoder.max_seq_length,
        "opset": opset,
        "inputs": {"input_ids": "int64 [batch, sequence]", "attention_mask": "int64 [batch, sequence]"},
        "outputs": {
            "last_hidden_state": f"float32 [batch, sequence, {hidden}]",
            "sentence_embedding": f"float32 [batch, {hidden}]",
        },
        # TensorRT / Triton shape profiles: min 1x1, opt a typical batch, max the model's length.
        "shape_profile": {
            "min": [1, 1],
            "opt": [32, min(encoder.max_seq_length, 128)],
            "max": [64, max(encoder.max_seq_length, probe.longest)],
        },
        "merge": merge_info,
        "primary_variant": primary,
        "variants": variants,
        "probe": {
            "rows": variants["fp32"]["rows"],
            "items": probe.n_items,
            "retrieval_items": len(probe.retrieval),
            "longest_tokens": probe.longest,
        },
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
        "triton": "triton/mst5_encoder" if triton else None,
    }
