"""The one inference batcher of every embedder (``SentenceEncoder.encode``, the evaluation
``TorchEmbedder``, the ONNX ``OnnxEmbedder``): texts are tokenized once, ordered by token length
(longest first: the first batch shows at once whether the largest fits in memory), cut into batches
of at most ``batch_size`` rows and ``max_tokens`` padded tokens (rows x longest), padded per batch,
and the rows come back in input order. Torch-free: the ONNX runtime path uses it as well.

``tokenize_truncated`` (and ``bounded_texts`` under it) is the one place every text meets a
tokenizer with truncation (training batches, token lengths, evaluation, embedding, export probes):
a long text is cut to a prefix before tokenising, so the work and memory per text are bounded by
``max_length``, not by the text's size (a tokenizer holds about 250 bytes per input byte).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

CUT_MARGIN_TOKENS = 128
"""Real tokens (no special ones) a cut prefix must give beyond ``max_length`` before it replaces
the whole text. Only the word a cut ends inside is tokenised differently from the whole text's
(WordPiece: at most ``max_input_chars_per_word`` = 100 pieces; SentencePiece / BPE: the pieces near
the cut), so the first ``max_length`` tokens are the whole text's."""
CUT_CHARS_PER_TOKEN = 8
"""First cut, in characters per token needed; a prefix short of tokens is doubled until it has
them or is the whole text. Texts no longer than the first cut are tokenised whole, untouched."""
CUT_MAX_CHARS_PER_TOKEN = 1024
"""Where the doubling stops: a text whose first ``need x 1024`` characters still give fewer than
``need`` tokens (nearly all of it vanishes in tokenisation: runs of spaces, invisible characters) is
read only that far, said in a warning, so memory stays bounded on ANY input."""

Embed = Callable[[np.ndarray, np.ndarray], Any]
"""(input_ids, attention_mask), int64 rows x width -> float rows x dim (numpy or a tensor's numpy)."""


def bounded_texts(tokenizer: Any, texts: Sequence[str], max_length: int | None) -> list[str]:
    """``texts`` with each long one cut to a prefix whose tokens, truncated to ``max_length``, are
    exactly the whole text's: a prefix of ``CUT_CHARS_PER_TOKEN`` characters per token needed is
    tokenised, and doubled until it gives ``max_length + CUT_MARGIN_TOKENS`` real tokens or is the
    whole text. Shorter texts are kept, and so is every text where the tokenizer does not cut at the
    right (it truncates on the left, or ``max_length`` is below its special tokens: no truncation)."""
    texts = list(texts)
    if max_length is None:
        return texts
    need = max_length + CUT_MARGIN_TOKENS
    cut = need * CUT_CHARS_PER_TOKEN
    pending = [i for i, text in enumerate(texts) if len(text) > cut]
    if not pending or tokenizer.truncation_side != "right" or max_length < tokenizer.num_special_tokens_to_add():
        return texts
    limit = need * CUT_MAX_CHARS_PER_TOKEN
    while pending:
        prefixes = [texts[i][:cut] for i in pending]
        ids = tokenizer(prefixes, add_special_tokens=False, truncation=True, max_length=need)["input_ids"]
        short = []
        for i, prefix, row in zip(pending, prefixes, ids):
            if len(row) >= need:
                texts[i] = prefix
            elif cut >= limit:
                logger.warning(
                    "text %d: its first %d of %d characters give only %d tokens: it is read up to there",
                    i, cut, len(texts[i]), len(row),
                )  # fmt: skip
                texts[i] = prefix
            else:
                short.append(i)
        cut = min(cut * 2, limit)
        pending = [i for i in short if len(texts[i]) > cut]
    return texts


def tokenize_truncated(tokenizer: Any, texts: Sequence[str], max_length: int, **kwargs: Any) -> Any:
    """``tokenizer(texts, truncation=True, max_length=max_length, **kwargs)``, with the same result,
    on ``bounded_texts``: work and memory bounded by ``max_length``, whatever the texts' size."""
    return tokenizer(bounded_texts(tokenizer, texts, max_length), truncation=True, max_length=max_length, **kwargs)


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
    token_ids = tokenize_truncated(tokenizer, texts, max_length)["input_ids"]
    lengths = [len(ids) for ids in token_ids]
    batches = plan_batches(lengths, batch_size, max_tokens, sort=sort)
    side = getattr(tokenizer, "padding_side", "right")
    for idx in batches:
        ids, mask = pad_rows([token_ids[i] for i in idx], tokenizer.pad_token_id, side)
        out[idx] = np.asarray(embed(ids, mask), dtype=np.float32)
        if on_batch is not None:
            on_batch(len(idx))
    return out, {"real_tokens": sum(lengths), "padded_tokens": padded_tokens(lengths, batches)}
