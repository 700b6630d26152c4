"""Evaluation during training: STS Spearman every ``eval.every_steps`` (and at the end), logged as
``eval_sts_spearman``; with ``eval.keep_best`` the best-scoring model is written as ``best/``."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from mst5_dist.config import Config
from mst5_dist.errors import ConfigError
from mst5_dist.evaluate.sts import evaluate_sts, read_stsb_csv
from mst5_dist.files import read_json
from mst5_dist.layout import BEST_DIR, BEST_FILE
from mst5_dist.training.checkpoint import save_final

logger = logging.getLogger(__name__)


def previous_best(output_dir: Path, cfg: Config, step: int) -> float:
    """The value ``eval.keep_best`` must beat: on resume, the one in ``best/best.json``; else -inf."""
    path = output_dir / BEST_DIR / BEST_FILE
    if not cfg.eval.keep_best or step == 0 or not path.is_file():
        return -math.inf
    info = read_json(path)
    return float(info["value"]) if info.get("metric") == cfg.eval.best_metric else -math.inf


class PeriodicEval:
    """The STS pairs (read once, before training) and the best value so far."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.pairs = read_stsb_csv(cfg.eval.sts_path) if cfg.eval.sts_path else None
        if cfg.eval.keep_best and self.pairs is None:
            raise ConfigError("eval.keep_best=true needs eval.sts_path (the evaluation whose best model it keeps)")
        self.best = -math.inf

    def resume(self, output_dir: Path, step: int) -> None:
        self.best = previous_best(output_dir, self.cfg, step)

    def due(self, step: int, total_steps: int) -> bool:
        every = self.cfg.eval.every_steps
        return self.pairs is not None and ((every and step % every == 0) or step == total_steps)

    def run(self, accelerator, model, output_dir: Path, record: dict[str, Any]) -> None:
        """Score the model (every rank), add it to ``record``, and keep ``best/`` when asked."""
        encoder = accelerator.unwrap_model(model)
        record["eval_sts_spearman"] = evaluate_sts(encoder, self.pairs, self.cfg.eval.batch_size)
        encoder.train()
        logger.info("step %d: STS Spearman x100 = %.2f", record["step"], record["eval_sts_spearman"])
        if self.cfg.eval.keep_best:
            self.best = self._save_if_best(accelerator, model, output_dir, record)

    def _save_if_best(self, accelerator, model, output_dir: Path, record: dict[str, Any]) -> float:
        """Write ``best/`` (all ranks, like ``final/``) when this evaluation beats the best so far.

        Every rank decides on the main process's score, so all of them enter the (collective) save or none.
        """
        from accelerate.utils import broadcast

        metric = self.cfg.eval.best_metric
        value = torch.tensor([record[f"eval_{metric}"]], dtype=torch.float64, device=accelerator.device)
        value = float(broadcast(value, from_process=0).item())
        if not value > self.best:  # higher is better; NaN never improves
            return self.best
        info = {"step": record["step"], "metric": metric, "log_key": f"eval_{metric}", "value": value}
        save_final(accelerator, model, self.cfg, output_dir, name=BEST_DIR, extra={BEST_FILE: info})
        record["saved_best"] = True
        logger.info("step %d: new best %s = %.4f, model in %s", record["step"], metric, value, output_dir / BEST_DIR)
        return value
