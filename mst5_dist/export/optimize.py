"""ONNX Runtime's transformer optimizer on the fp32 graph, kept only when it passes AND is faster.

``onnxruntime.transformers.optimizer.optimize_model`` fuses subgraphs into contrib ops
(``Attention``, ``SkipLayerNormalization``, ``EmbedLayerNormalization``, ``BiasGelu``, ``FastGelu``,
``SimplifiedLayerNormalization`` for RMS norm). Model types: ``bert`` for BERT-like encoders;
``t5`` for (m)T5, where on our encoder-only graph it fuses the RMS norms and the gated GELU but NOT
the attention (its T5 attention pattern is the encoder-decoder export of its own converter).

The raw 2-D attention mask is kept (``use_raw_attention_mask``): the default mask index assumes
right padding and would silently mis-handle any other mask. The fused graph holds contrib ops, so
it is an ONNX-Runtime-only file beside the portable one (``onnx/model_optimized.onnx``, served with
``--variant fp32_optimized``); ``onnx/model.onnx`` stays what TensorRT / Triton / TEI read.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any

from mst5_dist.export.gate import GateFailed

logger = logging.getLogger(__name__)
OPTIMIZER_MODEL_TYPES = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "distilbert": "bert",
    "mpnet": "bert",
    "t5": "t5",
    "mt5": "t5",
}
# Kept only when at least this much faster on the probe batches (median of the timed rounds):
# below it, a shared machine's noise decides.
MIN_SPEEDUP = 1.05
TIMING_ROUNDS = 3


def _session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def time_on_probe(paths: list[Path], batches, rounds: int = TIMING_ROUNDS) -> list[float]:
    """Median seconds of one pass over ``batches`` per graph; rounds interleaved so that a change in
    machine load hits every graph alike."""
    from mst5_dist.export.gate import ort_outputs

    sessions = [_session(p) for p in paths]
    for s in sessions:
        ort_outputs(s, batches)  # warm-up
    times: list[list[float]] = [[] for _ in paths]
    for _ in range(rounds):
        for i, s in enumerate(sessions):
            t0 = time.perf_counter()
            ort_outputs(s, batches)
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def fuse(src: Path, dst: Path, config) -> dict[str, int]:
    """Write the optimised graph to ``dst``; return the fused-op counts (non-zero only)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = OPTIMIZER_MODEL_TYPES[config.model_type]
    options = FusionOptions(model_type)
    options.use_raw_attention_mask(True)
    heads = int(getattr(config, "num_attention_heads", None) or config.num_heads)
    hidden = int(getattr(config, "hidden_size", None) or config.d_model)
    model = optimize_model(
        str(src), model_type=model_type, num_heads=heads, hidden_size=hidden, optimization_options=options, opt_level=0
    )
    model.save_model_to_file(str(dst))
    return {op: n for op, n in model.get_fused_operator_statistics().items() if n}


def try_optimizer(src: Path, dst: Path, config, gate, batches) -> dict[str, Any]:
    """Fuse, gate (fp32 thresholds) and time ``src`` vs the fused graph; leave ``dst`` only when
    it is kept. Returns the decision and its figures (for ``export_report.json``)."""
    model_type = getattr(config, "model_type", "")
    if model_type not in OPTIMIZER_MODEL_TYPES:
        return {"kept": False, "reason": f"no optimizer model type for '{model_type}'"}
    info: dict[str, Any] = {"model_type": OPTIMIZER_MODEL_TYPES[model_type], "kept": False}
    t0 = time.perf_counter()
    try:
        info["fused"] = fuse(src, dst, config)
    except Exception as e:  # the optimizer is an optional speed-up: its failure is reported, not fatal
        dst.unlink(missing_ok=True)
        info["reason"] = f"optimizer failed: {type(e).__name__}: {e}"
        logger.warning(f"[export] ORT transformer optimizer: {info['reason']}")
        return info
    info["optimize_seconds"] = round(time.perf_counter() - t0, 2)
    if not info["fused"]:
        info["reason"] = "nothing fused"
    else:
        try:
            info["gate"] = gate(dst)
        except GateFailed as e:
            info["gate"], info["reason"] = e.report, "parity gate failed: " + "; ".join(e.report.get("failures", []))
    if "reason" not in info:
        plain, fused = time_on_probe([src, dst], batches)
        info.update(probe_seconds_plain=round(plain, 4), probe_seconds_optimized=round(fused, 4))
        info["speedup"] = round(plain / fused, 3)
        info["kept"] = info["speedup"] >= MIN_SPEEDUP
        if not info["kept"]:
            info["reason"] = f"not faster: {info['speedup']}x on the probe batches (needs >= {MIN_SPEEDUP}x)"
    if not info["kept"]:
        dst.unlink(missing_ok=True)
    brief = {k: v for k, v in info.items() if k != "gate"}
    logger.info(f"[export] ORT transformer optimizer ({'kept' if info['kept'] else 'dropped'}): {brief}")
    return info
