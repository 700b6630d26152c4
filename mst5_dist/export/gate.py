"""Parity gate: ONNX Runtime outputs vs the PyTorch encoder on the multilingual probe set.

Reports, over every row of every probe batch: max abs difference of the sentence embeddings, min
cosine, max abs / relative difference of the last hidden state at non-padding positions, whether
everything is finite, and top-1 retrieval agreement (each probe item's nearest neighbour among the
others, under the reference vs the candidate). A variant passes only if all its thresholds hold.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mst5_dist.errors import EXIT_GATE_FAILED, MstError
from mst5_dist.export.probes import Probe, ProbeBatch


@dataclass(frozen=True)
class Thresholds:
    max_abs: float | None = None  # sentence_embedding
    min_cos: float = 0.0
    retrieval: float | None = None
    # A candidate top-1 that the REFERENCE scores within ``tie_margin`` (cosine) of its own best is
    # a near-tie, not a retrieval error. Per variant, far below what its min-cos threshold already
    # allows to move (cos 0.98 permits similarity shifts of ~0.2); strict agreement is reported too.
    # Measured on the 2-6-step tiny test models: int8 flips only at reference margins 5e-5..5.2e-3.
    tie_margin: float = 0.0


THRESHOLDS = {
    "fp32": Thresholds(max_abs=1e-4, min_cos=0.99999, retrieval=0.98, tie_margin=1e-4),
    "fp16": Thresholds(min_cos=0.999, retrieval=0.98, tie_margin=0.002),
    "int8": Thresholds(min_cos=0.98, retrieval=0.98, tie_margin=0.01),
}

Outputs = list[tuple[np.ndarray, np.ndarray]]  # per batch: (hidden, embedding)


class GateFailed(MstError):
    """An exported variant does not match the PyTorch encoder; ``report`` holds the figures.
    Nothing is written (the export folder is only renamed into place when every gate passes)."""

    exit_code = EXIT_GATE_FAILED

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report

    def details(self) -> str:
        import json

        return json.dumps(self.report, indent=2, default=str)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def item_embeddings(batches: list[ProbeBatch], outputs: Outputs, n_items: int) -> np.ndarray:
    emb = np.zeros((n_items, outputs[0][1].shape[-1]), dtype=np.float64)
    seen = set()
    for b, (_, e) in zip(batches, outputs):
        for j, r in enumerate(b.rows):
            if r not in seen:
                emb[r] = e[j]
                seen.add(r)
    return emb


def similarity(emb: np.ndarray) -> np.ndarray:
    u = _unit(emb)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    return sim


def retrieval_agreement(ref_emb: np.ndarray, cand_emb: np.ndarray, tie_margin: float) -> tuple[float, float]:
    """(agreement counting near-ties as agreeing, strict top-1 agreement)."""
    ref_sim, cand_sim = similarity(ref_emb), similarity(np.nan_to_num(cand_emb))
    r_top, c_top = ref_sim.argmax(axis=1), cand_sim.argmax(axis=1)
    rows = np.arange(len(r_top))
    tie = ref_sim[rows, r_top] - ref_sim[rows, c_top] <= tie_margin
    return float(((r_top == c_top) | tie).mean()), float((r_top == c_top).mean())


def compare(probe: Probe, ref: Outputs, cand: Outputs, tie_margin: float = 0.0) -> dict[str, Any]:
    batches = probe.batches
    max_abs, min_cos, h_abs, h_scale, finite = 0.0, 1.0, 0.0, 0.0, True
    cos_sum = 0.0
    for b, (rh, re), (ch, ce) in zip(batches, ref, cand):
        valid = b.attention_mask.astype(bool)
        finite &= bool(np.isfinite(ce).all() and np.isfinite(ch[valid]).all())
        re64, ce64 = re.astype(np.float64), ce.astype(np.float64)
        max_abs = max(max_abs, float(np.abs(re64 - ce64).max()))
        cos = (_unit(re64) * _unit(ce64)).sum(-1)
        min_cos = min(min_cos, float(np.nan_to_num(cos, nan=-1.0).min()))
        cos_sum += float(np.nan_to_num(cos, nan=-1.0).sum())
        h_abs = max(h_abs, float(np.abs(rh[valid].astype(np.float64) - ch[valid]).max()))
        h_scale = max(h_scale, float(np.abs(rh[valid]).max()))
    keep = probe.retrieval
    agree, strict = retrieval_agreement(
        item_embeddings(batches, ref, probe.n_items)[keep],
        item_embeddings(batches, cand, probe.n_items)[keep],
        tie_margin,
    )
    return {
        "embedding_max_abs": max_abs,
        "embedding_min_cos": min_cos,
        "embedding_mean_cos": cos_sum / max(1, sum(len(b.rows) for b in batches)),
        "hidden_max_abs": h_abs,
        "hidden_max_rel": h_abs / max(h_scale, 1e-12),
        "finite": finite,
        "retrieval_top1_agreement": agree,
        "retrieval_top1_agreement_strict": strict,
        "retrieval_items": len(keep),
        "rows": int(sum(len(b.rows) for b in batches)),
        "batches": [f"{b.label}: {b.input_ids.shape[0]}x{b.input_ids.shape[1]}" for b in batches],
    }


def evaluate(metrics: dict[str, Any], th: Thresholds) -> list[str]:
    """Names of the violated thresholds (empty when the variant passes)."""
    fails = []
    if not metrics["finite"]:
        fails.append("non-finite outputs")
    if th.max_abs is not None and not metrics["embedding_max_abs"] <= th.max_abs:
        fails.append(f"embedding max abs {metrics['embedding_max_abs']:.3g} > {th.max_abs:g}")
    if not metrics["embedding_min_cos"] >= th.min_cos:
        fails.append(f"min cosine {metrics['embedding_min_cos']:.7f} < {th.min_cos:g}")
    if th.retrieval is not None and not metrics["retrieval_top1_agreement"] >= th.retrieval:
        fails.append(f"retrieval agreement {metrics['retrieval_top1_agreement']:.3f} < {th.retrieval:g}")
    return fails


def ort_outputs(session, batches: list[ProbeBatch]) -> Outputs:
    out = []
    for b in batches:
        h, e = session.run(
            ["last_hidden_state", "sentence_embedding"],
            {"input_ids": b.input_ids, "attention_mask": b.attention_mask},
        )
        out.append((h, e))
    return out


def run_gate(
    variant: str,
    onnx_path: Path,
    probe: Probe,
    ref: Outputs,
    thresholds: Thresholds | None = None,
) -> dict[str, Any]:
    """Gate one ONNX file against reference outputs; raise ``GateFailed`` with the report."""
    import onnxruntime as ort

    th = thresholds or THRESHOLDS[variant]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    t0 = time.perf_counter()
    outputs = ort_outputs(session, probe.batches)
    seconds = time.perf_counter() - t0
    metrics = compare(probe, ref, outputs, th.tie_margin)
    fails = evaluate(metrics, th)
    report = {"variant": variant, "file": onnx_path.name, "thresholds": asdict(th), **metrics}
    report["probe_seconds"] = round(seconds, 3)  # one pass over the probe batches (CPU provider)
    report["passed"] = not fails
    report["failures"] = fails
    if fails:
        raise GateFailed(f"parity gate failed for {variant} ({onnx_path.name}): " + "; ".join(fails), report)
    return report
