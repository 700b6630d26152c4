"""Exception types and the one mapping from exception to exit code, shared by every subcommand.

    0   done
    1   anything else (a traceback, then one line)
    2   bad input: config, data, model, arguments, a path that does not exist, an output that may
        not be written or a full disk (one line naming the file, line and field where there is one)
    3   an export's parity gate failed (nothing written)
    75  stopped by a signal after writing a checkpoint (rerun with ``--resume latest``)
    130 aborted by a second interrupt (the last complete checkpoint is kept)

Library code raises; only ``run_command`` (used by the CLI entry points) prints and picks the code.
No torch here: this module sits in the bottom layer.
"""

from __future__ import annotations

import errno
import sys
import traceback
from collections.abc import Callable

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_GATE_FAILED = 0, 1, 2, 3
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: a checkpoint was written, resume with --resume latest
EXIT_ABORTED = 130


class MstError(Exception):
    """Base of the project's errors; ``exit_code`` is what the CLI exits with."""

    exit_code = EXIT_FAILED


class BadInput(MstError, ValueError):
    """Something the user gave is unusable; the message names the file, line and field."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(BadInput):
    """A config file or override is malformed; the message names the key."""


class DataError(BadInput):
    """A malformed input row; the message names file, line and field."""


class ModelError(BadInput):
    """The model folder or settings are unusable; the message says why."""


class Interrupted(MstError):
    """Training stopped on a signal after writing a checkpoint."""

    exit_code = EXIT_INTERRUPTED


# Paths the user named that are not there or not what they should be: bad input, not a crash.
_BAD_PATH = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
# A full disk or quota: the output could not be written (``outputs.no_space`` names the path).
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def exit_code(exc: BaseException) -> int:
    """The exit code for ``exc`` (see the module docstring)."""
    if isinstance(exc, MstError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_ABORTED
    if isinstance(exc, _BAD_PATH) or (isinstance(exc, OSError) and exc.errno in _NO_SPACE):
        return EXIT_BAD_INPUT
    return EXIT_FAILED


def _one_line(exc: BaseException) -> str:
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def describe(exc: BaseException) -> str:
    """The one line printed for ``exc`` after the program name (a multi-line message is joined)."""
    code = exit_code(exc)
    if code == EXIT_INTERRUPTED:
        return f"interrupted: {_one_line(exc)}"
    if code == EXIT_ABORTED:
        return "aborted (second interrupt); last complete checkpoint kept"
    if code in (EXIT_BAD_INPUT, EXIT_GATE_FAILED) or isinstance(exc, MstError):
        if isinstance(exc, OSError) and exc.filename is not None:
            return f"error: {exc.filename}: {exc.strerror or exc}"
        return f"error: {_one_line(exc)}"
    return f"failed: {type(exc).__name__}: {_one_line(exc)}"


def run_command(prog: str, fn: Callable[[], int | None]) -> int:
    """Run ``fn`` and turn what it raises into one line on stderr and an exit code.

    ``fn`` returns None (or an exit code of its own). An exception with a ``details()`` method
    (the parity gate's report) prints those details first; an unexpected one prints its traceback.
    """
    try:
        rc = fn()
        return EXIT_OK if rc is None else int(rc)
    except BaseException as e:
        if isinstance(e, SystemExit):
            raise
        code = exit_code(e)
        details = getattr(e, "details", None)
        if callable(details):
            print(details(), file=sys.stderr)
        if not isinstance(e, MstError) and code == EXIT_FAILED:
            traceback.print_exc()  # a failure nobody foresaw: the traceback is the report
        print(f"{prog}: {describe(e)}", file=sys.stderr, flush=True)
        return code
