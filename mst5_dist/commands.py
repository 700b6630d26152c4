"""How a command is wired: its parser arguments, logging flags, and a run function returning the
exit code (which goes through ``errors.run_command``). Used by ``mst5`` (``cli.py``) and by the
modules that are also entry points of their own (``python -m mst5_dist.train``, ``... .modular``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from mst5_dist import logs

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


def add_command(sub, name: str, help_text: str, add_arguments: AddArguments, run: Run) -> argparse.ArgumentParser:
    """A subcommand of ``mst5`` with its own arguments plus ``--log-level`` / ``--log-all-ranks``."""
    p = sub.add_parser(name, help=help_text)
    add_arguments(p)
    logs.add_arguments(p)
    p.set_defaults(func=run)
    return p


def standalone_main(prog: str, description: str, add_arguments: AddArguments, run: Run, argv=None) -> int:
    """``python -m MODULE ...``: the same arguments as the subcommand, logging configured, then run."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    logs.add_arguments(parser)
    args = parser.parse_args(argv)
    logs.configure(args.log_level, all_ranks=args.log_all_ranks)
    return run(args)
