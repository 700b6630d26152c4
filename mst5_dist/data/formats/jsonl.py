"""``jsonl``: one ``{"anchor", "positive", "negative"[, "source_id"]}`` object per line; the cache
reads it block by block into Arrow (``data.blocks``)."""

from __future__ import annotations

from pathlib import Path

from mst5_dist.data.blocks import jsonl_tables
from mst5_dist.data.formats.base import Format, register
from mst5_dist.data.rows import ReadReport, gather, iter_jsonl


def read_jsonl(path: Path, skip_bad: bool = False, need_negative: bool = True) -> ReadReport:
    """``{"anchor", "positive", "negative"[, "source_id"]}`` per line."""
    return gather(skip_bad, lambda check: iter_jsonl(path, check, need_negative))


@register("jsonl")
class Jsonl(Format):
    def read(self, source, cfg, seed, need_negative, check):
        return list(iter_jsonl(source, check, need_negative))

    def tables(self, source, cfg, seed, need_negative, check):
        return jsonl_tables(source, need_negative, check)
