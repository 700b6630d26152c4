"""``csv``: SimCSE triplets with a header ``sent0,sent1,hard_neg``."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from mst5_dist.data.formats.base import Format, register
from mst5_dist.data.rows import ReadReport, RowChecker, gather, lines, open_existing, triplet_row
from mst5_dist.errors import DataError


def read_csv(path: Path, skip_bad: bool = False, need_negative: bool = True) -> ReadReport:
    """SimCSE triplet CSV with a header ``sent0,sent1,hard_neg``."""
    return gather(skip_bad, lambda check: _csv_rows(path, check, need_negative))


def _csv_rows(path: Path, check: RowChecker, need_negative: bool) -> list[dict[str, Any]]:
    numbered = list(lines(open_existing(path)))
    if not numbered:
        raise DataError(f"{path}: empty file")
    header = next(csv.reader([numbered[0][1]]))
    needed = ["sent0", "sent1"] + (["hard_neg"] if need_negative else [])
    for name in needed:
        if name not in header:
            raise DataError(f"{path}:{numbered[0][0]}: field '{name}' missing from header {header}")
    # Parse the body as one stream so quoted fields with embedded newlines stay intact.
    body = io.StringIO("\n".join(t for _, t in numbered[1:]))
    numbers = [n for n, _ in numbered[1:]]
    rows = []
    for i, cells in enumerate(csv.reader(body)):
        number = numbers[min(i, len(numbers) - 1)]
        obj = {name: (cells[j] if j < len(cells) else None) for j, name in enumerate(header)}
        row = triplet_row(check, path, number, obj, ("sent0", "sent1", "hard_neg"), need_negative)
        if row is not None:
            row["source_id"] = f"{path.name}:{number}"
            rows.append(row)
    return rows


@register("csv")
class Csv(Format):
    def read(self, source, cfg, seed, need_negative, check):
        return _csv_rows(source, check, need_negative)
