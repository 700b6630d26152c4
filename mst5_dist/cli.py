"""``mst5`` command line: one subcommand per job (train, build-tiny, eval, data, sweep, export, embed,
import-adapter, train-modular). Every subcommand takes ``--log-level`` and ``--log-all-ranks``;
library modules log through ``logging``, commands print their own output (tables, paths) to stdout,
and every failure goes through ``errors.run_command`` (one line on stderr, the documented exit code).
"""

from __future__ import annotations

import argparse
import os
import sys

from mst5_dist import logs
from mst5_dist.commands import AddArguments, Parser, Run, add_command, exit_now, parse, positive_int
from mst5_dist.errors import run_command


def _build_tiny(args: argparse.Namespace) -> int:
    def job() -> None:
        from mst5_dist.tiny_default import build_tiny_mt5

        path = build_tiny_mt5(args.output, vocab_size=args.vocab_size)
        print(f"tiny mT5 + tokenizer written to {path}")

    return run_command("mst5 build-tiny", job)


def _build_tiny_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default="runs/tiny-mt5", help="folder to write")
    p.add_argument("--vocab-size", type=positive_int, default=2000, help="SentencePiece pieces (upper bound)")


def commands() -> list[tuple[str, str, AddArguments, Run]]:
    """Every subcommand: (name, help, its arguments, its run function)."""
    from mst5_dist.evaluate.download import add_data_arguments
    from mst5_dist.evaluate.suite import add_eval_arguments, run_eval_command
    from mst5_dist.evaluate.sweep import add_sweep_arguments, run_sweep_command
    from mst5_dist.export.cli import add_embed_arguments, add_export_arguments, run_embed, run_export
    from mst5_dist.interop.cli import add_import_arguments, run_import
    from mst5_dist.modular.cli import add_arguments as add_modular_arguments
    from mst5_dist.modular.cli import run as run_modular
    from mst5_dist.train import add_train_arguments, run_train

    return [
        ("train", "train a sentence encoder (LoRA contrastive)", add_train_arguments, run_train),
        ("build-tiny", "train the embedded tokenizer and save a tiny random mT5", _build_tiny_arguments, _build_tiny),
        ("eval", "evaluate a model on Tatoeba, BUCC, STS17, STS-B, ... into results.json", add_eval_arguments,
         run_eval_command),
        ("data", "evaluation and training data sets", add_data_arguments, None),  # `data download`: its own run function
        ("sweep", "table + plot of scores over runs (learning rate or model size)", add_sweep_arguments,
         run_sweep_command),
        ("export", "merge, export to ONNX (fp32/fp16/int8), parity-gate, write atomically", add_export_arguments,
         run_export),
        ("embed", "embed texts with an exported model through ONNX Runtime", add_embed_arguments, run_embed),
        ("import-adapter", "import a (PEFT 0.4-era) LoRA adapter such as pkshatech/m-ST5", add_import_arguments,
         run_import),
        ("train-modular", "train language modules and cross-lingual alignment adapters", add_modular_arguments,
         run_modular),
    ]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mst5", description="m-ST5 sentence encoder training and export")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text, add_arguments, run in commands():
        add_command(sub, name, help_text, add_arguments, run)
    return parser


TRAINING_COMMANDS = ("train", "train-modular")


def main(argv: list[str] | None = None, *, keep_signal_handlers: bool = False) -> int:
    """Run one ``mst5`` command; returns its exit code. In-process callers get their signal handlers
    back; the console script keeps ours until the process ends (``console``)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from mst5_dist.training.signals import STOP

    # First thing, before the imports of torch and the data loading: a stop signal in the first
    # seconds of a training command is a clean stop (exit 75 with a message), not a death by signal.
    STOP.install()
    try:
        args = parse(build_parser(), argv)
        if args.command not in TRAINING_COMMANDS:
            STOP.release()  # other commands keep the usual Ctrl-C
        logs.configure(args.log_level, all_ranks=args.log_all_ranks)
        return args.func(args)
    finally:
        if not keep_signal_handlers:
            STOP.restore()


def console() -> int:
    """The ``mst5`` executable. A training command keeps our signal handlers to the end and leaves
    without the interpreter's teardown (``commands.exit_now``): a late signal (a second Ctrl-C while
    the process winds down) cannot replace the exit code and last line the command gave."""
    code = main(keep_signal_handlers=True)
    if len(sys.argv) > 1 and sys.argv[1] in TRAINING_COMMANDS:
        exit_now(code)
    return code


if __name__ == "__main__":
    sys.exit(console())
