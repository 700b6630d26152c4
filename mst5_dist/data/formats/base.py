"""The format seam: ``data.format`` names a registered reader, looked up once per read.

A new input layout is a new module in this package that registers a ``Format`` (the package imports
every module in it), not an edit of the cache or the trainer::

    @register("tsv-pairs")
    class TsvPairs(Format):
        def read(self, source, cfg, seed, need_negative, check):
            return [...]   # rows {anchor, positive, negative, source_id}, validated through ``check``

``read`` gives one source's rows as Python dicts (the reference); ``tables`` gives them as Arrow
tables for the cache and may be overridden by a reader that builds Arrow directly (JSONL).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from mst5_dist.config import DataConfig
from mst5_dist.data.rows import ReadReport, RowChecker, rows_table
from mst5_dist.errors import DataError
from mst5_dist.layout import resolve_path
from mst5_dist.registry import Registry

Chunk = TypeVar("Chunk")  # a list of rows or an Arrow table: sized and sliceable


class Format:
    """A reader of one input layout."""

    name = ""
    uses_seed = False
    """Rows depend on ``train.seed`` (random sampling): only then does the seed enter the cache key."""
    local = True
    """``data.paths`` are local files or folders (resolved, and their sizes and mtimes keyed)."""

    def sources(self, cfg: DataConfig) -> list[Any]:
        return [resolve_path(raw) if self.local else raw for raw in cfg.paths]

    def read(
        self, source: Any, cfg: DataConfig, seed: int, need_negative: bool, check: RowChecker
    ) -> list[dict[str, Any]]:
        raise NotImplementedError

    def tables(self, source: Any, cfg: DataConfig, seed: int, need_negative: bool, check: RowChecker) -> Iterator:
        """One source's rows as Arrow tables (``rows.arrow_schema``)."""
        yield rows_table(self.read(source, cfg, seed, need_negative, check))


FORMATS: Registry[Format] = Registry("data.format", "format")
unregister, names, get = FORMATS.unregister, FORMATS.names, FORMATS.get


def register(name: str) -> Callable[[type[Format]], type[Format]]:
    """Class decorator: make ``data.format=NAME`` read with an instance of the class."""

    def add(cls: type[Format]) -> type[Format]:
        reader = cls()
        reader.name = name
        FORMATS.register(name)(reader)
        return cls

    return add


def take(chunks: Iterable[Chunk], limit: int | None) -> Iterator[Chunk]:
    """``chunks`` (row lists or Arrow tables) up to ``limit`` rows in all (``data.max_rows``), the
    last one cut to fit; no chunk is read once the limit is reached."""
    left = limit
    for chunk in chunks:
        if left is not None:
            chunk = chunk[:left]
            left -= len(chunk)
        yield chunk
        if left is not None and left <= 0:
            return


def chunks(reader: Format, cfg: DataConfig, seed: int, need_negative: bool, check: RowChecker, arrow: bool) -> Iterator:
    """Every source's rows, as Python row lists or (``arrow``) Arrow tables, up to ``data.max_rows``."""
    read = reader.tables if arrow else lambda *a: iter([reader.read(*a)])
    every = (chunk for source in reader.sources(cfg) for chunk in read(source, cfg, seed, need_negative, check))
    return take(every, cfg.max_rows)


def require_rows(n_rows: int, report: ReadReport, paths: list[str]) -> None:
    if n_rows == 0:
        raise DataError(f"no usable triplets in {paths} (skipped {report.skipped} bad rows)")


def read_triplets(cfg: DataConfig, seed: int, need_negative: bool = True) -> ReadReport:
    """Every path's rows through the Python readers of ``cfg.format`` (the reference that the
    cached Arrow data equals), concatenated and cut to ``data.max_rows``."""
    reader = get(cfg.format)
    report = ReadReport()
    check = RowChecker(report, cfg.skip_bad_rows)
    for rows in chunks(reader, cfg, seed, need_negative, check, arrow=False):
        report.rows += rows
    require_rows(len(report.rows), report, cfg.paths)
    return report
