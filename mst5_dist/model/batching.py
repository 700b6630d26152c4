"""The one inference batcher of every embedder (``SentenceEncoder.encode``, the evaluation
``TorchEmbedder``, the ONNX ``OnnxEmbedder``): texts are tokenized once, ordered by token length
(longest first: the first batch shows at once whether the largest fits in memory), cut into batches
of at most ``batch_size`` rows and ``max_tokens`` padded tokens (rows x longest), padded per batch,
and the rows come back in input order. Torch-free: the ONNX runtime path uses it as well.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Embed = Callable[[np.ndarray, np.ndarray], Any]
"""(input_ids, attention_mask), int64 rows x width -> float rows x dim (numpy or a tensor's numpy)."""


def plan_batches(
    lengths: Sequence[int], batch_size: int, max_tokens: int | None = None, *, sort: bool = True
) -> list[list[int]]:
    """Row indices per batch: token-length order (longest first, ties in input order; ``sort=False``
    keeps the input order), at most ``batch_size`` rows and rows x longest <= ``max_tokens`` each
    (a single row longer than the budget forms a batch alone)."""
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size}: must be at least 1")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if sort else range(len(lengths))
    batches: list[list[int]] = []
    width = 0
    for i in order:
        grown = max(width, lengths[i])
        if (
            batches
            and len(batches[-1]) < batch_size
            and (max_tokens is None or (len(batches[-1]) + 1) * grown <= max_tokens)
        ):
            batches[-1].append(i)
            width = grown
        else:
            batches.append([i])
            width = lengths[i]
    return batches


def padded_tokens(lengths: Sequence[int], batches: list[list[int]]) -> int:
    """Tokens the encoder runs for ``batches``: rows x longest, summed."""
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def pad_rows(rows: list[list[int]], pad_id: int, side: str = "right") -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int64, each row padded to the longest with ``pad_id``."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for k, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[k, span] = row
        mask[k, span] = 1
    return ids, mask


def encode_batched(
    tokenizer: Any,
    texts: Sequence[str],
    embed: Embed,
    *,
    dim: int,
    max_length: int,
    batch_size: int = 64,
    max_tokens: int | None = None,
    sort: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """float32 (len(texts), dim) embeddings in input order, and the real and padded token counts.

    ``embed`` gets each padded batch; ``on_batch`` (a progress bar) the number of rows done."""
    texts = list(texts)
    out = np.zeros((len(texts), dim), dtype=np.float32)
    if not texts:
        return out, {"real_tokens": 0, "padded_tokens": 0}
    token_ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    lengths = [len(ids) for ids in token_ids]
    batches = plan_batches(lengths, batch_size, max_tokens, sort=sort)
    side = getattr(tokenizer, "padding_side", "right")
    for idx in batches:
        ids, mask = pad_rows([token_ids[i] for i in idx], tokenizer.pad_token_id, side)
        out[idx] = np.asarray(embed(ids, mask), dtype=np.float32)
        if on_batch is not None:
            on_batch(len(idx))
    return out, {"real_tokens": sum(lengths), "padded_tokens": padded_tokens(lengths, batches)}
