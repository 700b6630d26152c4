"""Contrastive loss for sentence embeddings: InfoNCE with in-batch and hard negatives, optionally
symmetric and over Matryoshka prefixes.

The loss is LOCAL (as in open_clip): each rank scores only its own anchors, against the
candidates of the whole global batch gathered from every rank with autograd:

    candidates = [positives of rank 0, ..., positives of rank N-1,
                  negatives of rank 0, ..., negatives of rank N-1]
    label(i)   = rank * local_batch + i        (the anchor's own positive)

At world size 1 the gather is the identity and this is plain in-batch InfoNCE.

``symmetric`` adds the other direction (GTE, mE5): each local positive against the anchors of the
whole global batch (gathered the same way, same labels); the two directions are averaged. Hard
negatives are candidates of the first direction only.

``dims`` (Matryoshka, as sentence-transformers' ``MatryoshkaLoss``): the loss is the weighted SUM,
over each ``d`` of ``dims``, of the loss on the first ``d`` coordinates of every embedding,
re-normalised. The gather runs once, at full width: truncation commutes with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from mst5_dist import distributed


def info_nce(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    *,
    temperature: float = 0.05,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    rank: int | None = None,
    symmetric: bool = False,
    dims: Sequence[int] = (),
    weights: Sequence[float] = (),
) -> torch.Tensor:
    """Mean cross-entropy of each anchor's cosine scores over all gathered candidates (and, with
    ``symmetric``, of each positive's over all gathered anchors), summed over Matryoshka ``dims``
    with ``weights`` (default 1 each); no ``dims``: the full width only.

    ``gather`` defaults to the autograd all-gather of :mod:`mst5_dist.distributed`; pass
    ``lambda t: t`` to disable cross-rank negatives (then ``rank`` must be 0).
    """
    if gather is None:
        gather = distributed.all_gather_with_grad
    if rank is None:
        rank = distributed.rank() if gather is distributed.all_gather_with_grad else 0
    candidates = [gather(positives)]
    if negatives is not None:
        candidates.append(gather(negatives))
    cand = torch.cat(candidates, dim=0)
    all_anchors = gather(anchors) if symmetric else None
    labels = torch.arange(anchors.shape[0], device=anchors.device) + rank * anchors.shape[0]
    widths: Sequence[int | None] = list(dims) or [None]
    scale = list(weights) or [1.0] * len(widths)
    total = anchors.new_zeros((), dtype=torch.float32)
    for width, weight in zip(widths, scale, strict=True):
        loss = _cross_entropy(anchors, cand, labels, temperature, width)
        if all_anchors is not None:
            loss = 0.5 * (loss + _cross_entropy(positives, all_anchors, labels, temperature, width))
        total = total + weight * loss
    return total


def _cross_entropy(
    queries: torch.Tensor, candidates: torch.Tensor, labels: torch.Tensor, temperature: float, width: int | None
) -> torch.Tensor:
    """Cross-entropy of ``queries``' cosine scores against ``candidates`` (the first ``width``
    coordinates of each, re-normalised; None: all)."""
    if width is not None:
        queries, candidates = queries[..., :width], candidates[..., :width]
    # Cosine similarity in fp32: bf16 scores divided by a 0.05 temperature lose too many bits.
    scores = F.normalize(queries.float(), dim=-1) @ F.normalize(candidates.float(), dim=-1).T
    return F.cross_entropy(scores / temperature, labels)
