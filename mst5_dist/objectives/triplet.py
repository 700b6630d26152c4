"""``triplet``: the m-ST5 objective. InfoNCE of each anchor against every positive (and, with
``loss.hard_negatives``, every contradiction hypothesis) of the global batch, gathered across ranks;
with ``loss.symmetric`` also each positive against every anchor, and with ``loss.matryoshka_dims``
summed over re-normalised prefixes of the embeddings (the math: ``mst5_dist.losses``)."""

from __future__ import annotations

from typing import Any

from mst5_dist.batch import Batch
from mst5_dist.config import Config
from mst5_dist.losses import info_nce
from mst5_dist.objectives.base import Collated, SetupContext, register


@register("triplet")
class TripletObjective:
    def __init__(self, cfg: Config) -> None:
        self.hard_negatives = cfg.loss.hard_negatives
        self.temperature = cfg.loss.temperature
        self.symmetric = cfg.loss.symmetric
        self.dims, self.weights = list(cfg.loss.matryoshka_dims), list(cfg.loss.matryoshka_weights)
        self.columns = ("anchor", "positive", "negative") if self.hard_negatives else ("anchor", "positive")

    def setup(self, ctx: SetupContext) -> None:
        pass

    def collate(self, rows: list[dict[str, Any]]) -> Collated:
        # Anchors, positives and negatives are encoded together: one forward (or one GradCache pass).
        return Collated(texts=[r[c] for c in self.columns for r in rows])

    def loss(self, embeddings, batch: Batch, gather) -> Any:
        n = batch.rows
        negatives = embeddings[2 * n : 3 * n] if self.hard_negatives else None
        return info_nce(
            embeddings[:n],
            embeddings[n : 2 * n],
            negatives,
            temperature=self.temperature,
            gather=gather,
            rank=gather.rank,
            symmetric=self.symmetric,
            dims=self.dims,
            weights=self.weights,
        )
