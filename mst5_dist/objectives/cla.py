"""``cla``: a modular cross-lingual alignment (CLA) stage (see ``mst5_dist.modular``).

Each row is (sentence in language L, its pivot-language translation). The pivot side is embedded
ONCE, before training, by the frozen pivot module (``loss.pivot_model``); only this run's LoRA (on
top of L's language module, merged into the base by ``model.merge_adapters``) trains. Which side of
a pair is the anchor is a fixed coin per row (seed + source id), as in the reference code, so a
resumed run and every rank draw the same; in-batch negatives are all-gathered across ranks.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import torch

from mst5_dist.batch import Batch
from mst5_dist.config import Config
from mst5_dist.errors import ConfigError
from mst5_dist.losses import info_nce
from mst5_dist.model import SentenceEncoder, same_model
from mst5_dist.objectives.base import Collated, SetupContext, register

logger = logging.getLogger(__name__)


@dataclass
class PivotTable:
    """Frozen pivot-language embeddings of every distinct ``positive`` text of the dataset."""

    row: dict[str, int]
    vectors: torch.Tensor


def check_config(cfg: Config) -> None:
    if not cfg.loss.pivot_model:
        raise ConfigError("loss.objective=cla needs loss.pivot_model (the pivot language's final/ folder)")
    if cfg.loss.hard_negatives:
        raise ConfigError("loss.objective=cla trains on pairs: set loss.hard_negatives=false")
    if cfg.loss.symmetric or cfg.loss.matryoshka_dims:
        key = "loss.symmetric" if cfg.loss.symmetric else "loss.matryoshka_dims"
        raise ConfigError(f"{key}: applies to loss.objective=triplet only, not cla")
    if not cfg.model.merge_adapters:
        raise ConfigError("loss.objective=cla needs model.merge_adapters=[the language module it sits on]")


@torch.no_grad()
def build_pivot_table(cfg: Config, texts: list[str], device) -> PivotTable:
    """Embed the pivot side with the frozen pivot module (eval mode: no dropout). Every rank computes
    the same table, so no communication is needed; the module is freed before training."""
    texts = list(dict.fromkeys(texts))
    pivot = SentenceEncoder.from_pretrained(cfg.loss.pivot_model, dtype=cfg.model.dtype).to(device)
    if not same_model(str(pivot.base_model), cfg.model.name_or_path):
        raise ConfigError(
            f"loss.pivot_model {cfg.loss.pivot_model} was trained on {pivot.base_model}, "
            f"not on model.name_or_path={cfg.model.name_or_path}"
        )
    vectors = pivot.encode(texts, batch_size=cfg.eval.batch_size).float().cpu()
    del pivot
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    logger.info("pivot table: %d sentences embedded by %s", len(texts), cfg.loss.pivot_model)
    return PivotTable({t: i for i, t in enumerate(texts)}, vectors)


def anchor_is_pivot(seed: int, source_id: str) -> bool:
    """The per-pair coin: fixed by (seed, row), so a resumed run and every rank draw the same."""
    return bool(hashlib.sha256(f"{seed}:{source_id}".encode()).digest()[0] & 1)


def cla_pairs(emb: torch.Tensor, pivot: torch.Tensor, flip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(anchors, positives): per pair, the trained sentence is the anchor or the candidate."""
    flip = flip.to(torch.bool).unsqueeze(1)
    pivot = pivot.to(emb.dtype)
    return torch.where(flip, pivot, emb), torch.where(flip, emb, pivot)


@register("cla")
class ClaObjective:
    columns = ("anchor", "positive")  # length grouping reads both, as the reference runs did

    def __init__(self, cfg: Config) -> None:
        check_config(cfg)
        self.cfg = cfg
        self.table: PivotTable | None = None

    def setup(self, ctx: SetupContext) -> None:
        self.table = build_pivot_table(self.cfg, list(ctx.dataset["positive"]), ctx.device)

    def collate(self, rows: list[dict[str, Any]]) -> Collated:
        assert self.table is not None, "setup() first"
        seed = self.cfg.train.seed
        return Collated(
            texts=[r["anchor"] for r in rows],  # only this language's side is encoded
            extras={
                "pivot": self.table.vectors[[self.table.row[r["positive"]] for r in rows]],
                "flip": torch.tensor([anchor_is_pivot(seed, r["source_id"]) for r in rows]),
            },
        )

    def loss(self, embeddings, batch: Batch, gather) -> Any:
        anchors, positives = cla_pairs(embeddings, batch.extras["pivot"], batch.extras["flip"])
        return info_nce(
            anchors, positives, None, temperature=self.cfg.loss.temperature, gather=gather, rank=gather.rank
        )
