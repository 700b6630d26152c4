"""``mst5 train-modular``'s config: the run sections every stage starts from, plus ``modular``.

Loaded like a run config (``section.key=value`` overrides, ``modular.key=value`` included); each
stage trains a plain :class:`~mst5_dist.config.Config` made from it (``run_config``), so a stage's
saved config.yaml reruns as an ordinary ``mst5 train``.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mst5_dist.config import SECTION, Config, at_least, kinds, load_config

__all__ = ["ModularConfig", "ModularRunConfig", "load_modular_config"]

# Modular settings reach a stage only through the run config they make, so none is fingerprinted.
_NEITHER = kinds(resume=False, cache=False)


@dataclass
class ModularConfig:
    languages: list[str] = field(default_factory=list, metadata=_NEITHER)
    """``mst5 train-modular``: languages that get a language module (stage 1); each one except
    the pivot also gets a cross-lingual alignment (CLA) adapter on top of it (stage 2)."""

    pivot_language: str = field(default="en", metadata=_NEITHER)
    """The language whose embedding space the CLA adapters map into (frozen during stage 2)."""

    stsb_dir: str = field(default="../shared/data/stsb-multi-mt", metadata=_NEITHER)
    """Folder of line-aligned ``stsb-{lang}-train.csv`` translations: stage 1 takes each language's
    paraphrase pairs, stage 2 its sentences paired with their pivot-language translations."""

    min_score: float = field(default=4.0, metadata=_NEITHER)
    """Stage 1: an STS-B train pair is a positive (paraphrase) pair when its gold score is at least this."""

    parallel_max_rows: int | None = field(default=None, metadata=_NEITHER)
    """Stage 2: keep at most this many parallel pairs per language (None: all)."""

    language_overrides: list[str] = field(default_factory=list, metadata=_NEITHER)
    """``section.key=value`` overrides applied to every stage-1 run (e.g. ``optim.lr=1e-4``)."""

    cla_overrides: list[str] = field(default_factory=list, metadata=_NEITHER)
    """``section.key=value`` overrides applied to every stage-2 (CLA) run."""


@dataclass
class ModularRunConfig(Config):
    modular: ModularConfig = field(default_factory=ModularConfig, metadata=SECTION)
    """Modular encoders: language modules and cross-lingual alignment adapters."""

    EXTRA_LIMITS: ClassVar[dict[str, Any]] = {"modular.parallel_max_rows": at_least(1)}

    def run_config(self) -> Config:
        """The run sections alone, as a plain config (a copy)."""
        return Config(**{f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(Config)})


def load_modular_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ModularRunConfig:
    """Read ``mst5 train-modular``'s YAML (the run sections plus ``modular``) with overrides."""
    return load_config(path, overrides, schema=ModularRunConfig)  # type: ignore[return-value]
