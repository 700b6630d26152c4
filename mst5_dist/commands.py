"""How a command is wired: its parser arguments, logging flags, and a run function returning the
exit code (which goes through ``errors.run_command``). Used by ``mst5`` (``cli.py``) and by the
modules that are also entry points of their own (``python -m mst5_dist.train``, ``... .modular``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from mst5_dist import logs

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    """argparse with the project's rule for bad input: exit 2 and ONE line on stderr (the option
    and what is wrong with it), not the usage block. Subcommand parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(text: str, kind: type, what: str, ok: Callable[[float], bool]):
    try:
        value = kind(text)
    except ValueError:
        value = None
    # NaN and infinities are never a count, a size or a duration; neither is zero or less.
    if value is None or value != value or value in (float("inf"), float("-inf")) or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type of every count and size option (``--batch-size``, ``--limit``, ...): 1 or more."""
    return _number(text, int, "a positive integer", lambda v: v >= 1)


def positive_float(text: str) -> float:
    """argparse type of every duration option (``--timeout``): a finite number above 0."""
    return _number(text, float, "a positive number", lambda v: v > 0)


def finite_float(text: str) -> float:
    """argparse type of a threshold or other real-valued option: any finite number (not NaN)."""
    return _number(text, float, "a finite number", lambda v: True)


def add_command(sub, name: str, help_text: str, add_arguments: AddArguments, run: Run) -> argparse.ArgumentParser:
    """A subcommand of ``mst5`` with its own arguments plus ``--log-level`` / ``--log-all-ranks``."""
    p = sub.add_parser(name, help=help_text)
    add_arguments(p)
    logs.add_arguments(p)
    p.set_defaults(func=run)
    return p


def parse(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """``parse_args``, but ``section.key=value`` overrides may also follow options
    (``mst5 train --config C --resume latest optim.lr=1e-4``): argparse alone stops collecting
    positionals at the first option and rejects the rest."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = [*(args.overrides or []), *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def standalone_main(prog: str, description: str, add_arguments: AddArguments, run: Run, argv=None) -> int:
    """``python -m MODULE ...``: the same arguments as the subcommand, logging configured, then run."""
    parser = Parser(prog=prog, description=description)
    add_arguments(parser)
    logs.add_arguments(parser)
    args = parse(parser, argv)
    logs.configure(args.log_level, all_ranks=args.log_all_ranks)
    return run(args)


def exit_now(code: int) -> None:
    """End a training process with ``code`` once its work is done and reported: flush and leave
    without the interpreter's teardown. That teardown takes seconds after a run (threads, torch,
    Arrow maps), puts the default SIGINT disposition back part-way through, and so turned a late
    second Ctrl-C into a death by signal (exit -2) after the run had already exited 75 in words;
    DeepSpeed ranks have also aborted inside it ("terminate called without an active exception")."""
    import logging
    import os
    import sys

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
