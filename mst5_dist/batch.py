"""One micro-batch as the training step gets it: the encoder's chunks, the rows they came from and
the tensors the objective's loss reads beside the embeddings; and the ranks' agreement on its chunk
count."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from mst5_dist import distributed
from mst5_dist.encoding import ChunkedBatch, Counts, move, split_to


@dataclass(frozen=True)
class Batch:
    """A micro-batch of ``rows`` data set rows (built by ``collate.BatchCollator``)."""

    encode: ChunkedBatch
    """Every text the objective asked for, in the encoder's chunks (``mst5_dist.encoding``)."""
    rows: int
    """Data set rows; the texts are the objective's columns of each (anchors, then positives, ...)."""
    source_ids: list[str] = field(default_factory=list)
    """Each row's ``source_id``, in row order (empty for synthetic batches: benchmarks)."""
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    """The objective's tensors beside the embeddings (``objectives.Collated.extras``), moved with the batch."""

    @property
    def counts(self) -> Counts:
        """What the encoder runs for it, read from ``encode`` (so a split for the ranks shows)."""
        return self.encode.counts()

    def to(self, device) -> Batch:
        """The batch with its tensors on ``device`` (to a GPU without blocking: ``encoding.move``)."""
        extras = {k: move(v, device) for k, v in self.extras.items()}
        return replace(self, encode=self.encode.to(device), extras=extras)


def agree_across_ranks(batch: Batch, device) -> Batch:
    """The batch with the largest chunk count of any rank (its largest chunks split): DDP and ZeRO-3
    run collectives in each forward, so the ranks must run the same number of them."""
    chunked = batch.encode
    if chunked.fixed_count or not distributed.is_distributed():
        return batch
    count = distributed.max_over_ranks(len(chunked.input_ids), device)
    if count <= len(chunked.input_ids):
        return batch
    return replace(batch, encode=split_to(chunked, count))
