"""The int8 recipe, chosen per model by the parity gate.

A quantisation recipe measured on one model is no guide for another (STACK-FACTS: per-tensor QInt8
is best on a random tiny mT5 and worst on all-MiniLM-L6-v2). So ``choose_int8`` tries dynamic
QInt8 recipes in order of expected speed and keeps the FIRST that passes the int8 gate:

1. ``per_channel``: per-channel weights, every op ONNX Runtime quantises (MatMul, Gather, ...);
2. ``per_channel_matmul``: per-channel weights, MatMul only;
3. ``per_channel_matmul_keep_fp32``: (2) with the most sensitive node families kept in fp32, a
   ladder. A family is one projection role across layers (e.g. ``layer.*/output/dense``, BERT's FFN
   output, or T5's ``DenseReluDense/wo``). Its sensitivity is the gain in mean probe cosine when
   only that family is kept in fp32 in recipe (2) (families scanned in graph order; a one-family
   graph that passes is kept at once); step k of the ladder keeps the k most sensitive families,
   until the gate passes or half of the weight matmuls would be fp32 (no int8 speed left).

Fastest first, because every recipe that passes already meets the quality bar the gate sets (and
keeping fewer nodes in fp32 is faster). Static QDQ is not a candidate: calibrated MinMax on 256
real sentences scored worse than every dynamic recipe on MiniLM (min cos 0.915) and percentile
calibration failed on variable-length batches (STACK-FACTS). Per-tensor QInt8 (the old recipe) is
not tried by default; ``recipes=("per_tensor",)`` forces it (the negative control in the tests).
When nothing passes, ``GateFailed`` names the candidate that came closest, with its figures.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from mst5_dist.export.gate import GateFailed

logger = logging.getLogger(__name__)
# Stop the ladder before more than this fraction of the weight matmuls are kept in fp32.
MAX_KEEP_FRACTION = 0.5


@dataclass(frozen=True)
class Recipe:
    name: str
    per_channel: bool
    op_types: tuple[str, ...] | None = None  # None: every op type ONNX Runtime quantises
    keep_fp32: tuple[str, ...] = ()  # node names left in fp32
    families: tuple[str, ...] = field(default=())  # the families those nodes make up

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["weight_type"] = "QInt8"
        d["activations"] = "dynamic per-tensor QUInt8"
        d["op_types"] = list(self.op_types) if self.op_types else "all"
        d["keep_fp32"], d["families"] = list(self.keep_fp32), list(self.families)
        return d


RECIPES = {
    "per_tensor": Recipe("per_tensor", per_channel=False),
    "per_channel": Recipe("per_channel", per_channel=True),
    "per_channel_matmul": Recipe("per_channel_matmul", per_channel=True, op_types=("MatMul",)),
}
LADDER = "per_channel_matmul_keep_fp32"
DEFAULT_ORDER = ("per_channel", "per_channel_matmul", LADDER)
RECIPE_NAMES = (*RECIPES, LADDER)


def quantize(src: Path, dst: Path, recipe: Recipe) -> Path:
    """``quantize_dynamic`` with ``recipe``; external data re-saved under our one stable name."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from mst5_dist.export.onnx_graph import model_files, save_onnx

    external = len(model_files(src)) > 1
    for old in model_files(dst):
        old.unlink(missing_ok=True)
    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=recipe.per_channel,
        op_types_to_quantize=list(recipe.op_types) if recipe.op_types else None,
        nodes_to_exclude=list(recipe.keep_fp32) or None,
        use_external_data_format=external,
    )
    if external:
        # quantize_dynamic names its data file itself; re-save under our one stable name.
        import onnx

        model = onnx.load(str(dst), load_external_data=True)
        for p in [p for p in dst.parent.iterdir() if p.name.startswith(dst.name)]:
            p.unlink()
        save_onnx(model, dst, external=True)
    return dst


def weight_matmul_families(path: Path) -> dict[str, list[str]]:
    """MatMul nodes with a constant weight, grouped by role: the node name with its layer index
    replaced by ``*`` (``/backbone/encoder/layer.*/output/dense/MatMul``)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    families: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in weights:
            role = re.sub(r"(layer|block)[._](\d+)", r"\1.*", node.name)
            families.setdefault(role, []).append(node.name)
    return families


Gate = Callable[[Path], dict[str, Any]]  # gate figures of one graph (raises GateFailed on failure)


class _Trials:
    """Quantises and gates candidates in scratch space, keeping each one's figures."""

    def __init__(self, src: Path, scratch: Path, gate: Gate) -> None:
        self.src, self.scratch, self.gate = src, scratch, gate
        self.records: list[dict[str, Any]] = []
        scratch.mkdir(parents=True, exist_ok=True)

    def run(self, recipe: Recipe, purpose: str = "candidate") -> tuple[dict[str, Any], Path]:
        path = self.scratch / f"trial{len(self.records)}.onnx"
        t0 = time.perf_counter()
        quantize(self.src, path, recipe)
        t1 = time.perf_counter()
        try:
            figures, passed, failures = self.gate(path), True, []
        except GateFailed as e:
            figures, passed, failures = e.report, False, e.report.get("failures", [str(e)])
        rec = {
            "recipe": recipe.name,
            "purpose": purpose,
            "families_fp32": list(recipe.families),
            "nodes_fp32": len(recipe.keep_fp32),
            "embedding_min_cos": figures.get("embedding_min_cos"),
            "embedding_mean_cos": figures.get("embedding_mean_cos"),
            "retrieval_top1_agreement": figures.get("retrieval_top1_agreement"),
            "passed": passed,
            "failures": failures,
            "quantize_seconds": round(t1 - t0, 2),
            "probe_seconds": figures.get("probe_seconds"),
        }
        self.records.append(rec)
        logger.info(
            f"[export] int8 {purpose} {recipe.name} (fp32 families {list(recipe.families)}): "
            f"min cos {rec['embedding_min_cos']:.4f}, retrieval {rec['retrieval_top1_agreement']:.3f}: "
            + ("PASS" if passed else "fail")
        )
        return rec, path


def _ladder(trials: _Trials, base: Recipe, families: dict[str, list[str]]) -> tuple[Recipe, Path] | None:
    """Keep families in fp32, most sensitive first, until the gate passes (see module docstring)."""
    total = sum(len(v) for v in families.values())
    base_rec = next((r for r in trials.records if r["recipe"] == base.name), None)
    if base_rec is None:
        base_rec, _ = trials.run(base, "baseline for sensitivity")
    gains = []
    for fam, nodes in families.items():
        if len(nodes) > MAX_KEEP_FRACTION * total:
            continue
        rec, path = trials.run(replace(base, name=LADDER, keep_fp32=tuple(nodes), families=(fam,)), "sensitivity")
        if rec["passed"]:  # the ladder's first step would be this very graph
            return replace(base, name=LADDER, keep_fp32=tuple(nodes), families=(fam,)), path
        gains.append((rec["embedding_mean_cos"] - base_rec["embedding_mean_cos"], rec["embedding_min_cos"], fam))
    ranked = [fam for *_, fam in sorted(gains, reverse=True)]
    for k in range(2, len(ranked) + 1):
        kept = ranked[:k]
        nodes = tuple(n for fam in kept for n in families[fam])
        if len(nodes) > MAX_KEEP_FRACTION * total:
            break
        recipe = replace(base, name=LADDER, keep_fp32=nodes, families=tuple(kept))
        rec, path = trials.run(recipe, f"ladder step {k}")
        if rec["passed"]:
            return recipe, path
    return None


def _closest(records: list[dict[str, Any]]) -> dict[str, Any]:
    return max(records, key=lambda r: (-len(r["failures"]), r["embedding_min_cos"] or -1.0))


def choose_int8(
    src: Path, dst: Path, scratch: Path, gate: Gate, recipes: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """Write the first recipe of ``recipes`` (default ``DEFAULT_ORDER``) that passes ``gate`` to
    ``dst``; return {recipe, candidates}. Raise ``GateFailed`` naming the closest when none does."""
    order = recipes or DEFAULT_ORDER
    unknown = [r for r in order if r not in RECIPE_NAMES]
    if unknown:
        from mst5_dist.export.onnx_graph import ExportError

        raise ExportError(f"int8 recipe(s) {unknown}: choose from {', '.join(RECIPE_NAMES)}")
    trials = _Trials(src, scratch, gate)
    chosen: tuple[Recipe, Path] | None = None
    try:
        for name in order:
            if name == LADDER:
                chosen = _ladder(trials, RECIPES["per_channel_matmul"], weight_matmul_families(src))
            else:
                rec, path = trials.run(RECIPES[name])
                chosen = (RECIPES[name], path) if rec["passed"] else None
            if chosen:
                break
        if chosen is None:
            best = _closest(trials.records)
            raise GateFailed(
                f"parity gate failed for int8: no recipe of {list(order)} passed; closest: {best['recipe']} "
                f"(fp32 families {best['families_fp32']}): min cos {best['embedding_min_cos']:.4f}, retrieval "
                f"{best['retrieval_top1_agreement']:.3f} ({'; '.join(best['failures'])})",
                {"variant": "int8", "closest": best, "candidates": trials.records},
            )
        recipe, path = chosen
        for f in sorted(path.parent.glob(path.name + "*")):
            shutil.move(str(f), dst.with_name(dst.name + f.name[len(path.name) :]))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"recipe": recipe.describe(), "rule": "first passing recipe, fastest first", "candidates": trials.records}
