"""Finished-or-absent output folders: build under ``NAME.tmp``, rename into place on success."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path.tmp`` and rename it over ``path``: readers see old or new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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
