"""``snli``: SNLI/MNLI JSON lines, turned into triplets per premise."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mst5_dist.data.formats.base import Format, register
from mst5_dist.data.rows import NLI_LABELS, ReadReport, RowChecker, gather, json_objects


def read_snli(path: Path, skip_bad: bool = False, need_negative: bool = True) -> ReadReport:
    """SNLI/MNLI jsonl: triplets from hypotheses sharing a premise (entailment as positive,
    contradiction as hard negative). Rows with gold label ``-`` (no annotator consensus) are
    ignored, as in SimCSE; any other unknown label is an error."""
    return gather(skip_bad, lambda check: snli_rows(path, check, need_negative))


def snli_rows(
    path: Path, check: RowChecker, need_negative: bool, numbered: Iterator[tuple[int, str]] | None = None, prefix="snli"
) -> list[dict[str, Any]]:
    """The triplets of one SNLI/MNLI jsonl file (or of its ``numbered`` lines, e.g. from inside an
    archive); ``source_id`` is ``prefix:`` and a hash of the premise."""
    groups: dict[str, dict[str, list[str]]] = {}
    for number, obj in json_objects(path, check, numbered):
        label = obj.get("gold_label")
        if label is None:
            check.fail(path, number, "gold_label", "missing")
            continue
        if label == "-":
            continue
        if label not in NLI_LABELS:
            check.fail(path, number, "gold_label", f"unknown label {label!r} (expected {sorted(NLI_LABELS)})")
            continue
        premise = check.text(path, number, "sentence1", obj.get("sentence1"))
        hypothesis = check.text(path, number, "sentence2", obj.get("sentence2")) if premise else None
        if premise is None or hypothesis is None:
            continue
        groups.setdefault(premise, {k: [] for k in NLI_LABELS})[label].append(hypothesis)
    rows = []
    for premise, hyps in groups.items():
        source = f"{prefix}:" + hashlib.sha1(premise.encode()).hexdigest()[:16]
        negatives = hyps["contradiction"]
        if need_negative and not negatives:
            continue
        for i, positive in enumerate(hyps["entailment"]):
            negative = negatives[i % len(negatives)] if negatives else None
            rows.append({"anchor": premise, "positive": positive, "negative": negative, "source_id": source})
    return rows


@register("snli")
class Snli(Format):
    def read(self, source, cfg, seed, need_negative, check):
        return snli_rows(source, check, need_negative)
