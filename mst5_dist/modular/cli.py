"""``mst5 train-modular`` and ``python -m mst5_dist.modular`` (so ``accelerate launch -m
mst5_dist.modular ...`` works): every stage of a modular model in one launch."""

from __future__ import annotations

import argparse

from mst5_dist.commands import exit_now, standalone_main
from mst5_dist.errors import Interrupted, run_command
from mst5_dist.training.signals import STOP


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", required=True, help="YAML run config plus a modular: section (see configs/modular-tiny.yaml)"
    )
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. modular.languages=[en,de]")
    p.add_argument("--stages", default="language,cla", help="which stages to run (default: language,cla)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted stage from its latest checkpoint")


def run(args: argparse.Namespace) -> int:
    def job() -> None:
        from mst5_dist import distributed
        from mst5_dist.config import check_world_size
        from mst5_dist.modular.config import load_modular_config
        from mst5_dist.modular.manifest import MANIFEST
        from mst5_dist.modular.pipeline import train_modular

        cfg = load_modular_config(args.config, args.overrides)
        check_world_size(cfg, distributed.launched_world_size())
        try:
            with distributed.process_group(cfg.train.collective_timeout_s):  # one for all stages
                out = train_modular(
                    cfg, stages=[s for s in args.stages.split(",") if s], resume=args.resume, config_file=args.config
                )
        except Interrupted as e:
            raise Interrupted(f"{e} (train-modular: rerun with --resume)") from e
        print(f"modular model in {out} ({MANIFEST})")

    return run_command("mst5 train-modular", job)


def main(argv: list[str] | None = None) -> int:
    STOP.install()  # first thing: a stop signal while torch and the data load is a clean stop
    return standalone_main("python -m mst5_dist.modular", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    exit_now(main())
