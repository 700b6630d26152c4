"""Semantic textual similarity: Spearman (x100) between cosine similarity and gold scores.

Readers return ``StsPairs``; ``read_stsb_csv`` takes the stsb-multi-mt layout (``s1,s2,score``, CSV
quoting, no header). A malformed row raises ``EvalDataError`` naming file and line.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch


class EvalDataError(ValueError):
    """A malformed evaluation file; the message names file and line."""


@dataclass
class StsPairs:
    first: list[str]
    second: list[str]
    scores: list[float]


def read_stsb_csv(path: str | Path) -> StsPairs:
    path = Path(path)
    out = StsPairs([], [], [])
    with path.open(encoding="utf-8", newline="") as f:
        for number, cells in enumerate(csv.reader(f), start=1):
            if not cells:
                continue
            if len(cells) != 3:
                raise EvalDataError(f"{path}:{number}: expected 3 columns (s1,s2,score), got {len(cells)}")
            try:
                score = float(cells[2])
            except ValueError:
                raise EvalDataError(f"{path}:{number}: score {cells[2]!r} is not a number") from None
            out.first.append(cells[0])
            out.second.append(cells[1])
            out.scores.append(score)
    if not out.scores:
        raise EvalDataError(f"{path}: no pairs")
    return out


def spearman_x100(a: torch.Tensor, b: torch.Tensor, gold: list[float]) -> float:
    from scipy.stats import spearmanr

    cos = torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)
    return float(spearmanr(cos.numpy(), gold).statistic) * 100


def evaluate_sts(encoder, pairs: StsPairs, batch_size: int = 64) -> float:
    """Spearman x100 of the encoder's cosine similarities. Runs the same forwards on every rank
    (under ZeRO-3 each forward gathers parameters from all ranks, so rank 0 alone would hang)."""
    a = encoder.encode(pairs.first, batch_size=batch_size)
    b = encoder.encode(pairs.second, batch_size=batch_size)
    return spearman_x100(a, b, pairs.scores)
