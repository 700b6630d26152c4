"""``export_model``: merge -> merged checkpoint -> ONNX fp32 [-> fp16] [-> int8] -> gates -> rename.

Everything is written into ``OUTPUT.tmp``; only when every requested variant passes its gate is it
renamed to ``OUTPUT``. A failed gate removes the temporary folder: no half-finished export is left
that looks like a good one.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from mst5_dist.atomic import atomic_dir
from mst5_dist.export import gate as gate_mod
from mst5_dist.export import merge as merge_mod
from mst5_dist.export.onnx_graph import EmbeddingWrapper, ExportError, export_onnx, model_files
from mst5_dist.export.precision import check_fp16_islands, fp16_plan, quantize_int8
from mst5_dist.export.probes import MAX_PROBE_TOKENS, build_probe
from mst5_dist.export.runtime import REPORT_FILE, fingerprint
from mst5_dist.export.tensorrt_ops import check_tensorrt_ops

VARIANT_FILES = {"fp32": "onnx/model.onnx", "fp16": "onnx/model_fp16.onnx", "int8": "onnx/model_qint8.onnx"}


def _log(msg: str) -> None:
    print(f"[export] {msg}", flush=True)


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
) -> dict[str, Any]:
    """Export ``model`` (training output or final-style dir) to ``output``; return the report."""
    import torch

    if dtype not in ("fp32", "fp16"):
        raise ExportError(f"--dtype {dtype}: use fp32 or fp16")
    if quantize not in (None, "int8"):
        raise ExportError(f"--quantize {quantize}: only int8 is supported")
    src = merge_mod.resolve_model_dir(model)
    out = Path(output)
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists (pass --overwrite to replace it)")
    t0 = time.perf_counter()
    with atomic_dir(out) as tmp:
        report = _export_into(src, tmp, dtype, quantize, opset, triton, thresholds or {}, torch)
        report["seconds"] = round(time.perf_counter() - t0, 2)
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    _log(f"export written to {out} ({report['seconds']} s)")
    return report


def _export_into(src, tmp: Path, dtype, quantize, opset, triton, thresholds, torch) -> dict[str, Any]:
    _log(f"loading {src} in fp32")
    encoder = merge_mod.load_encoder(src)
    probe = build_probe(encoder.tokenizer, max_tokens=_probe_limit(encoder.backbone.config))
    batches, longest = probe.batches, probe.longest

    def wrap(backbone):
        return EmbeddingWrapper(backbone, encoder.pooling, encoder.normalize).eval()

    # Reference: the encoder exactly as trained (adapter unmerged).
    ref = merge_mod.encoder_outputs(encoder, batches)
    merge_info = merge_mod.merge_adapter(encoder)
    merged_out = merge_mod.encoder_outputs(encoder, batches)
    merge_metrics = gate_mod.compare(probe, ref, merged_out)
    merge_info["embedding_max_abs_vs_unmerged"] = merge_metrics["embedding_max_abs"]
    if not merge_metrics["embedding_max_abs"] <= merge_mod.MERGE_TOLERANCE:
        raise gate_mod.GateFailed(
            f"merged embeddings differ from unmerged by {merge_metrics['embedding_max_abs']:.3g} "
            f"(> {merge_mod.MERGE_TOLERANCE:g})",
            {"merge": merge_info},
        )
    _log(f"merge: {merge_info}")
    merge_mod.save_merged(encoder, tmp, source=src)

    config = encoder.backbone.config
    pad_id = encoder.tokenizer.pad_token_id if encoder.tokenizer.pad_token_id is not None else 0
    vocab = int(getattr(config, "vocab_size", 1000))
    variants: dict[str, Any] = {}

    def gate(variant: str, path: Path) -> None:
        _log(f"gating {variant} ({path.name}) on {sum(len(b.rows) for b in batches)} probe rows")
        th = thresholds.get(variant)
        result = gate_mod.run_gate(variant, path, probe, ref, th)
        files = model_files(path)
        result.update(
            {
                "file": str(path.relative_to(tmp)),
                "files": [str(f.relative_to(tmp)) for f in files],
                "bytes": sum(f.stat().st_size for f in files),
                "fingerprint": fingerprint(files),
                "tensorrt": check_tensorrt_ops(path),
            }
        )
        variants[variant] = result
        _log(
            f"{variant}: max abs {result['embedding_max_abs']:.2e}, min cos {result['embedding_min_cos']:.7f}, "
            f"retrieval {result['retrieval_top1_agreement']:.3f}: PASS"
        )

    fp32_path = tmp / VARIANT_FILES["fp32"]
    _log(f"exporting fp32 graph (opset {opset})")
    export_onnx(wrap(encoder.backbone), fp32_path, opset=opset, pad_id=pad_id, vocab_size=vocab)
    gate("fp32", fp32_path)

    fp16_info = None
    if dtype == "fp16":
        path = tmp / VARIANT_FILES["fp16"]
        half = wrap(fp16_plan(encoder.backbone))
        _log("exporting fp16 graph (fp16 matmuls; norms, residuals, FFN output, pooling in fp32)")
        export_onnx(half, path, opset=opset, pad_id=pad_id, vocab_size=vocab)
        fp16_info = check_fp16_islands(path)
        gate("fp16", path)
        variants["fp16"]["islands"] = fp16_info
    if quantize == "int8":
        path = tmp / VARIANT_FILES["int8"]
        _log("quantising to int8 (dynamic, per-tensor QInt8)")
        quantize_int8(fp32_path, path)
        gate("int8", path)

    primary = dtype
    hidden = encoder.embedding_dim
    if triton:
        from mst5_dist.export.triton import write_triton_repo

        write_triton_repo(tmp / VARIANT_FILES[primary], tmp / "triton", name="mst5_encoder", hidden=hidden)

    import onnxruntime
    import transformers

    return {
        "format_version": 1,
        "source": str(src),
        "base_model": encoder.base_model,
        "model_type": config.model_type,
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
            "max": [64, max(encoder.max_seq_length, longest)],
        },
        "merge": merge_info,
        "primary_variant": primary,
        "variants": variants,
        "probe": {
            "rows": variants["fp32"]["rows"],
            "items": probe.n_items,
            "retrieval_items": len(probe.retrieval),
            "longest_tokens": longest,
        },
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
        "triton": "triton/mst5_encoder" if triton else None,
    }
