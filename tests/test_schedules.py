"""Learning-rate schedules chosen by ``optim.scheduler`` from a registry."""

from __future__ import annotations

import pytest
import torch
from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

from mst5_dist.config import ConfigError, load_config
from mst5_dist.training.recipe import setup
from mst5_dist.training.schedules import SCHEDULES, build_scheduler

STEPS = 20


def _lrs(scheduler) -> list[float]:
    out = []
    for _ in range(STEPS):
        out.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)


@pytest.mark.parametrize(
    "name, reference",
    [
        ("linear", lambda opt: get_linear_schedule_with_warmup(opt, 3, STEPS)),  # ceil(20 * 0.15) = 3
        ("constant", lambda opt: get_constant_schedule_with_warmup(opt, 3)),
    ],
)
def test_linear_and_constant_are_the_transformers_schedules(name, reference):
    cfg = load_config(None, [f"optim.scheduler={name}", "optim.warmup_ratio=0.15", "optim.lr=1e-3"])
    got = _lrs(build_scheduler(cfg, _optimizer(), STEPS))
    assert got == _lrs(reference(_optimizer()))
    assert got[0] == 0.0 and got[3] == 1e-3 and (got[-1] < 1e-4 if name == "linear" else got[-1] == 1e-3)


def test_a_registered_schedule_is_chosen_by_name():
    @SCHEDULES.register("halved")
    def halved(optimizer, warmup, total):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)

    try:
        cfg = load_config(None, ["optim.scheduler=halved", "optim.lr=1e-3"])
        assert _lrs(build_scheduler(cfg, _optimizer(), STEPS)) == [5e-4] * STEPS
    finally:
        SCHEDULES.unregister("halved")


def test_an_unknown_schedule_names_the_key_and_the_known_ones_before_anything_loads(monkeypatch):
    cfg = load_config(None, ["optim.scheduler=cosine"])
    with pytest.raises(
        ConfigError, match=r"optim\.scheduler: unknown scheduler 'cosine' \(registered: constant, linear\)"
    ):
        build_scheduler(cfg, _optimizer(), STEPS)
    from mst5_dist.training import builders

    monkeypatch.setattr(builders, "setup_accelerator", lambda cfg: pytest.fail("setup went past the config check"))
    with pytest.raises(ConfigError, match=r"optim\.scheduler: unknown scheduler 'cosine'"):
        setup(cfg)
