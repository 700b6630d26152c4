"""Entry point of ``mst5 train`` and ``python -m mst5_dist.train`` (so ``accelerate launch -m
mst5_dist.train ...`` works): parse, configure logging, own the process group, run the recipe.

Usage: ``mst5 train --config FILE [section.key=value ...] [--resume latest|PATH]``. Exit codes are
those of ``mst5_dist.errors`` (0 done, 2 bad input, 75 stopped after a checkpoint, 1 anything else).
"""

from __future__ import annotations

import argparse
import os

from mst5_dist.commands import exit_now, standalone_main
from mst5_dist.errors import run_command
from mst5_dist.training.signals import STOP


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.lr=1e-4")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")


def run_train(args: argparse.Namespace) -> int:
    """Exit code 0 only when training completed; otherwise one line on stderr says why."""

    def job() -> None:
        from mst5_dist import distributed
        from mst5_dist.config import check_world_size, load_config
        from mst5_dist.training.recipe import train

        cfg = load_config(args.config, args.overrides)
        check_world_size(cfg, distributed.launched_world_size())  # before any process-group work
        with distributed.process_group(cfg.train.collective_timeout_s):
            train(cfg, resume=args.resume, config_file=args.config)

    return run_command("mst5 train", job)


def main(argv: list[str] | None = None) -> int:
    STOP.install()  # first thing: a stop signal while torch and the data load is a clean stop
    return standalone_main("python -m mst5_dist.train", __doc__.splitlines()[0], add_train_arguments, run_train, argv)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    exit_now(main())
