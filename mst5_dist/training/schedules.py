"""Learning-rate schedules, chosen by ``optim.scheduler``. A schedule is a registered function
``(optimizer, warmup_steps, total_steps) -> LR scheduler``; a new one is a new function::

    @SCHEDULES.register("cosine")
    def cosine(optimizer, warmup, total):
        return transformers.get_cosine_schedule_with_warmup(optimizer, warmup, total)
"""

from __future__ import annotations

import math
from typing import Any

from mst5_dist.config import Config
from mst5_dist.registry import Registry

SCHEDULES: Registry[Any] = Registry("optim.scheduler", "scheduler")


@SCHEDULES.register("linear")
def linear(optimizer: Any, warmup: int, total: int) -> Any:
    """Linear warmup from 0 to the peak, then linear decay to 0 at the last step."""
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, warmup, total)


@SCHEDULES.register("constant")
def constant(optimizer: Any, warmup: int, total: int) -> Any:
    """Linear warmup from 0 to the peak, then constant."""
    from transformers import get_constant_schedule_with_warmup

    return get_constant_schedule_with_warmup(optimizer, warmup)


def build_scheduler(cfg: Config, optimizer: Any, total_steps: int) -> Any:
    """The schedule ``optim.scheduler`` names over ``total_steps``, warming up for ``optim.warmup_ratio``."""
    make = SCHEDULES.get(cfg.optim.scheduler)
    return make(optimizer, math.ceil(total_steps * cfg.optim.warmup_ratio), total_steps)
