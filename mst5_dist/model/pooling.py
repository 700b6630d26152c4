"""Token states -> one vector per sentence: masked mean or CLS pooling, and the packed variants
(several sequences per row, told apart by segment ids)."""

from __future__ import annotations

import torch

from mst5_dist.errors import ModelError

POOLINGS = ("mean", "cls")


def check_pooling(mode: str) -> str:
    if mode not in POOLINGS:
        raise ModelError(f"unknown pooling '{mode}' (use mean or cls)")
    return mode


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the non-padding token states. An all-padding row gives a zero vector, not NaN."""
    m = mask.unsqueeze(-1).to(torch.float32)
    summed = (hidden.float() * m).sum(dim=1)
    return summed / m.sum(dim=1).clamp(min=1.0)


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    if check_pooling(mode) == "mean":
        return mean_pool(hidden, mask)
    return hidden[:, 0].float()


def packed_mean_pool(hidden: torch.Tensor, segments: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of each sequence's token states in packed rows: ``segments`` holds 1 + the sequence's
    index on its tokens and 0 on padding; returns (n, dim) in sequence-index order. index_add, not
    boolean indexing: no host sync on a GPU."""
    flat = hidden.reshape(-1, hidden.shape[-1]).float()
    idx = segments.reshape(-1) - 1
    idx = torch.where(idx < 0, torch.full_like(idx, n), idx)  # padding goes to a discarded bucket n
    sums = flat.new_zeros(n + 1, flat.shape[1]).index_add_(0, idx, flat)[:n]
    counts = flat.new_zeros(n + 1).index_add_(0, idx, torch.ones_like(idx, dtype=flat.dtype))[:n]
    return sums / counts.clamp(min=1.0).unsqueeze(-1)


def segment_mask(segments: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """(rows, 1, width, width) mask: a token attends only to tokens of its own segment (the padding
    of a row only to padding: finite scores, and nothing real sees it). ``dtype`` None: boolean
    (True = attend; what transformers builds for SDPA), else additive (0 / dtype's min; eager)."""
    same = (segments.unsqueeze(2) == segments.unsqueeze(1)).unsqueeze(1)
    if dtype is None:
        return same
    return torch.zeros(same.shape, dtype=dtype, device=segments.device).masked_fill(~same, torch.finfo(dtype).min)
