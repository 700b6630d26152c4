"""``mst5`` command line: one subcommand per job (train, build-tiny, eval, data, sweep, export, embed, ...)."""

from __future__ import annotations

import argparse
import os
import sys


def _build_tiny(args: argparse.Namespace) -> int:
    from mst5_dist.tiny_default import build_tiny_mt5

    path = build_tiny_mt5(args.output, vocab_size=args.vocab_size)
    print(f"tiny mT5 + tokenizer written to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from mst5_dist.train import add_train_arguments, run_train

    parser = argparse.ArgumentParser(prog="mst5", description="m-ST5 sentence encoder training and export")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a sentence encoder (LoRA contrastive)")
    add_train_arguments(p)
    p.set_defaults(func=run_train)
    p = sub.add_parser("build-tiny", help="train the embedded tokenizer and save a tiny random mT5")
    p.add_argument("--output", default="runs/tiny-mt5", help="folder to write")
    p.add_argument("--vocab-size", type=int, default=2000, help="SentencePiece pieces (upper bound)")
    p.set_defaults(func=_build_tiny)
    from mst5_dist.evaluate.suite import register as register_eval

    register_eval(sub)  # eval, data
    from mst5_dist.evaluate.sweep import register as register_sweep

    register_sweep(sub)  # sweep
    from mst5_dist.export.cli import register as register_export

    register_export(sub)  # export, embed
    from mst5_dist.interop import register as register_interop

    register_interop(sub)  # import-adapter
    from mst5_dist.modular import register as register_modular

    register_modular(sub)  # train-modular
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
