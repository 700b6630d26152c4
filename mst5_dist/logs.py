"""Logging for the library and its commands.

Library modules log through ``logging.getLogger(__name__)`` (all under the ``mst5_dist`` logger)
and never configure handlers; ``configure()`` is called by the command-line entry points only.
Under a distributed launch only each node's first process (``LOCAL_RANK`` 0) writes, the way
``accelerate``'s ``print`` does, unless ``all_ranks`` is asked for (``--log-all-ranks`` or
``MST5_LOG_ALL_RANKS=1``); then every line carries its rank.
"""

from __future__ import annotations

import logging
import os
import sys

ROOT = "mst5_dist"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _env_rank(name: str) -> int:
    try:
        return int(os.environ.get(name, "0"))
    except ValueError:
        return 0


class MainProcessFilter(logging.Filter):
    """Drop records on processes other than each node's first, unless every rank should log."""

    def __init__(self, all_ranks: bool) -> None:
        super().__init__()
        self.all_ranks = all_ranks

    def filter(self, record: logging.LogRecord) -> bool:
        return self.all_ranks or _env_rank("LOCAL_RANK") == 0


class StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record is emitted, not as it was at ``configure``: a
    caller that swaps stderr (a test capturing it, an in-process ``main``) and closes its stream
    later must not leave our handler writing to a closed file ("I/O operation on closed file")."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass  # always the current sys.stderr


def configure(level: str = "INFO", *, all_ranks: bool | None = None, stream=None) -> None:
    """One handler on the ``mst5_dist`` logger (replacing an earlier one of ours): ``stream``, or
    whatever ``sys.stderr`` is at the time of each record."""
    if all_ranks is None:
        all_ranks = os.environ.get("MST5_LOG_ALL_RANKS", "") not in ("", "0")
    logger = logging.getLogger(ROOT)
    for h in [h for h in logger.handlers if getattr(h, "_mst5", False)]:
        logger.removeHandler(h)
    handler = logging.StreamHandler(stream) if stream is not None else StderrHandler()
    handler._mst5 = True  # type: ignore[attr-defined]
    # The launcher sets RANK before the process starts, so it can be read once here.
    handler.setFormatter(logging.Formatter(f"[rank {_env_rank('RANK')}] %(message)s" if all_ranks else "%(message)s"))
    handler.addFilter(MainProcessFilter(all_ranks))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


def add_arguments(parser) -> None:
    """``--log-level`` and ``--log-all-ranks`` for a command's parser."""
    parser.add_argument("--log-level", default="INFO", choices=LEVELS, type=str.upper, help="library log level")
    parser.add_argument(
        "--log-all-ranks", action="store_true", default=None, help="log from every rank, not only each node's first"
    )
