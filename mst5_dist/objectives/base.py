"""The objective seam: what a training run reads, how its rows become a batch, and its loss.

The trainer knows objectives only through this protocol and the registry below; it imports no
implementation by name. ``loss.objective`` (a config field) picks one by its registered name. A new
objective (Matryoshka, distillation, a symmetric loss) is a new module that calls ``register``, not
an edit of the training loop::

    @register("my-loss")
    class MyObjective:
        def __init__(self, cfg): ...
        columns = ("anchor", "positive")          # text columns every row must carry
        def setup(self, ctx): ...                 # once, after the data is loaded
        def collate(self, rows): return Collated(texts=[...], extras={...})
        def loss(self, embeddings, batch, gather): return ...   # a scalar tensor

``collate`` returns the texts to encode (the trainer tokenises and encodes them, in one pass or in
GradCache chunks, and hands back one embedding per text in the same order) and the tensors the loss
needs beside the embeddings; ``loss`` reads them from the ``batch.Batch`` (``batch.extras``, beside
``batch.rows``). ``gather`` is ``distributed.Gather``: an autograd all-gather across
ranks (identity at world size 1, or when ``loss.gather_across_ranks`` is off) with its ``rank``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from mst5_dist.batch import Batch
from mst5_dist.config import Config
from mst5_dist.registry import Registry


@dataclass
class Collated:
    """One batch as an objective lays it out."""

    texts: list[str]
    """Sequences to encode, in the order the loss expects their embeddings."""
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    """Tensors the loss reads beside the embeddings (``Batch.extras``, moved to the device by the trainer)."""


@dataclass
class SetupContext:
    """What ``Objective.setup`` may use: the run's config, its dataset and the training device."""

    cfg: Config
    dataset: Any
    device: Any


class Objective(Protocol):
    columns: tuple[str, ...]

    def setup(self, ctx: SetupContext) -> None: ...

    def collate(self, rows: list[dict[str, Any]]) -> Collated: ...

    def loss(self, embeddings: Any, batch: Batch, gather: Any) -> Any: ...


OBJECTIVES: Registry[Callable[[Config], Objective]] = Registry("loss.objective", "objective")
register = OBJECTIVES.register
"""Class decorator (or call with a factory): make ``loss.objective=NAME`` build it from the config."""
unregister, names = OBJECTIVES.unregister, OBJECTIVES.names


def build(cfg: Config) -> Objective:
    """The objective ``cfg.loss.objective`` names, built (and its settings checked) from ``cfg``."""
    return OBJECTIVES.get(cfg.loss.objective)(cfg)
