"""Rows of the data set -> one training batch: the objective's texts, tokenised and cut into
length-aware chunks (``mst5_dist.encoding``)."""

from __future__ import annotations

from typing import Any

from mst5_dist.batch import Batch
from mst5_dist.encoding import Chunker
from mst5_dist.model.batching import tokenize_truncated


class BatchCollator:
    """Rows -> one batch: the objective says which texts to encode (and adds the tensors its loss
    needs); they are tokenised without padding and cut by ``chunker`` (``mst5_dist.encoding``) into
    length-sorted chunks, each padded to its own longest text (the default chunker: one chunk, one
    width, input order)."""

    def __init__(self, tokenizer, max_seq_length: int, objective, chunker=None) -> None:
        self.tokenizer, self.max_len, self.objective = tokenizer, max_seq_length, objective
        self.chunker = chunker or Chunker(tokenizer.pad_token_id or 0)

    def __call__(self, rows: list[dict[str, Any]]) -> Batch:
        collated = self.objective.collate(rows)
        # Without padding (about half the tokenizer's time here): each chunk is padded on its own.
        ids = tokenize_truncated(self.tokenizer, collated.texts, self.max_len)["input_ids"]
        return Batch(self.chunker(ids), len(rows), [r["source_id"] for r in rows], collated.extras)
