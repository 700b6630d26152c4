"""Contrastive loss for sentence embeddings: InfoNCE with in-batch and hard negatives.

The loss is LOCAL (as in open_clip): each rank scores only its own anchors, against the
candidates of the whole global batch gathered from every rank with autograd:

    candidates = [positives of rank 0, ..., positives of rank N-1,
                  negatives of rank 0, ..., negatives of rank N-1]
    label(i)   = rank * local_batch + i        (the anchor's own positive)

At world size 1 the gather is the identity and this is plain in-batch InfoNCE.
"""

from __future__ import annotations

from collections.abc import Callable

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
) -> torch.Tensor:
    """Mean cross-entropy of each anchor's cosine scores over all gathered candidates.

    ``gather`` defaults to the autograd all-gather of :mod:`mst5_dist.distributed`; pass
    ``lambda t: t`` to disable cross-rank negatives (then ``rank`` must be 0).
    """
    if gather is None:
        gather = distributed.all_gather_with_grad
    if rank is None:
        rank = distributed.rank() if gather is distributed.all_gather_with_grad else 0
    local = anchors.shape[0]
    candidates = [gather(positives)]
    if negatives is not None:
        candidates.append(gather(negatives))
    cand = torch.cat(candidates, dim=0)
    # Cosine similarity in fp32: bf16 scores divided by a 0.05 temperature lose too many bits.
    scores = F.normalize(anchors.float(), dim=-1) @ F.normalize(cand.float(), dim=-1).T
    labels = torch.arange(local, device=anchors.device) + rank * local
    return F.cross_entropy(scores / temperature, labels)
