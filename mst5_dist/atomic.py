"""Finished-or-absent output folders: build under ``NAME.tmp``, rename into place on success."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield an empty ``out.tmp``; on normal exit it replaces ``out``, on any exception it is removed,
    so a reader never finds a half-written folder under the final name."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
