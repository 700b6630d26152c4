"""What every reader shares: the row layout, field validation that names file, line and field, and
the reference JSON-lines parser (the JSONL format's Python reader and the block reader's fallback).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mst5_dist.errors import DataError

NLI_LABELS = {"entailment", "neutral", "contradiction"}
COLUMNS = ("anchor", "positive", "negative", "source_id")
# Bytes that ``surrogateescape`` turned into lone surrogates: the mark of invalid UTF-8.
_UNDECODABLE = re.compile("[\udc80-\udcff]")
# Any other lone surrogate comes from a JSON escape such as "\ud800": not text Arrow can store.
_SURROGATE = re.compile("[\ud800-\udfff]")


# Characters that show nothing: zero-width spaces and joiners, word joiner, byte-order mark, bidi
# and other format controls, variation selectors, Hangul fillers, tag characters, C0/C1 controls
# (the Default_Ignorable_Code_Point set plus controls). A sentence of only these and whitespace is
# empty: its embedding would be the model's embedding of nothing. The block reader trims the same.
INVISIBLE = (
    "".join(map(chr, [*range(0x00, 0x09), *range(0x0E, 0x1C), *range(0x7F, 0x85), *range(0x86, 0xA0)]))
    + "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180e\u180f"
    + "\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
    + "\u2060\u2061\u2062\u2063\u2064\u2065\u2066\u2067\u2068\u2069\u206a\u206b\u206c\u206d\u206e\u206f"
    + "\u3164\ufeff\uffa0\ufff0\ufff1\ufff2\ufff3\ufff4\ufff5\ufff6\ufff7\ufff8"
    + "".join(map(chr, [*range(0xFE00, 0xFE10), *range(0x1BCA0, 0x1BCA4), *range(0x1D173, 0x1D17B)]))
    + "".join(map(chr, [*range(0xE0000, 0xE1000)]))
)


_VISIBLE = re.compile(f"[^\\s{re.escape(INVISIBLE)}]")  # \s: what str.strip() removes


def is_blank(value: str) -> bool:
    """Nothing visible: only whitespace and ``INVISIBLE`` characters."""
    return _VISIBLE.search(value) is None


def unicode_problem(value: str) -> str | None:
    if _UNDECODABLE.search(value):
        return "contains bytes that are not valid UTF-8"
    if _SURROGATE.search(value):
        return "contains a lone surrogate escape (not valid Unicode)"
    return None


@dataclass
class ReadReport:
    """What a reader kept and skipped."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


class RowChecker:
    """Shared validation: raise, or count and skip, naming file, line and field."""

    def __init__(self, report: ReadReport, skip_bad: bool) -> None:
        self.report, self.skip_bad = report, skip_bad

    def fail(self, path: Path, line: int, fieldname: str | None, msg: str) -> None:
        where = f"{path}:{line}" + (f": field '{fieldname}'" if fieldname else "")
        error = f"{where}: {msg}"
        if not self.skip_bad:
            raise DataError(error)
        self.report.skipped += 1
        self.report.errors.append(error)

    def text(self, path: Path, line: int, fieldname: str, value: Any) -> str | None:
        """A usable sentence, or None after ``fail``."""
        if value is None:
            self.fail(path, line, fieldname, "missing")
            return None
        if not isinstance(value, str):
            self.fail(path, line, fieldname, f"expected a string, got {type(value).__name__}")
            return None
        problem = unicode_problem(value)
        if problem:
            self.fail(path, line, fieldname, problem)
            return None
        if is_blank(value):
            self.fail(
                path, line, fieldname, "empty sentence" + ("" if not value.strip() else " (only invisible characters)")
            )
            return None
        return value.strip()


def gather(skip_bad: bool, read: Callable[[RowChecker], Iterable[dict[str, Any]]]) -> ReadReport:
    """The report of one reader call: its rows and what ``skip_bad`` let it skip."""
    report = ReadReport()
    report.rows.extend(read(RowChecker(report, skip_bad)))
    return report


def lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) with undecodable bytes kept as surrogates so the field can be named."""
    with path.open("rb") as f:
        yield from decoded(enumerate(f, start=1))


def decoded(raw_lines: Iterable[tuple[int, bytes]]) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines among (line number, bytes) pairs."""
    for number, raw in raw_lines:
        text = raw.decode("utf-8", errors="surrogateescape").rstrip("\r\n")
        if text.strip():
            yield number, text


def open_existing(path: Path, folder: bool = False) -> Path:
    if not path.exists():
        raise DataError(f"{path}: {'folder' if folder else 'file'} not found")
    if folder and not path.is_dir():
        raise DataError(f"{path}: not a folder (data.format=xnli reads a folder of {{split}}-{{lang}}.tsv files)")
    if not folder and not path.is_file():
        raise DataError(f"{path}: not a file (a folder? data.paths lists the input files)")
    return path


def triplet_row(
    check: RowChecker, path: Path, number: int, obj: dict, names: tuple[str, str, str], need_negative: bool
) -> dict[str, Any] | None:
    """``{anchor, positive, negative}`` from the fields ``names`` of ``obj``, or None after ``fail``."""
    anchor = check.text(path, number, names[0], obj.get(names[0]))
    if anchor is None:
        return None
    positive = check.text(path, number, names[1], obj.get(names[1]))
    if positive is None:
        return None
    negative = None
    if need_negative:
        negative = check.text(path, number, names[2], obj.get(names[2]))
        if negative is None:
            return None
    return {"anchor": anchor, "positive": positive, "negative": negative}


def json_objects(
    path: Path, check: RowChecker, numbered: Iterator[tuple[int, str]] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of a JSON-lines file (or of its ``numbered`` lines, already decoded);
    a line that is not a JSON object is reported."""
    for number, text in lines(open_existing(path)) if numbered is None else numbered:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            check.fail(path, number, None, f"invalid JSON ({e.msg})")
            continue
        if not isinstance(obj, dict):
            check.fail(path, number, None, "expected a JSON object")
            continue
        yield number, obj


def iter_jsonl(
    path: Path, check: RowChecker, need_negative: bool = True, numbered: Iterator[tuple[int, str]] | None = None
) -> Iterator[dict[str, Any]]:
    """Validated rows of a triplet JSONL file (or of some of its ``numbered`` lines), one at a time:
    the reference reader, which the block reader (``blocks``) falls back to."""
    for number, obj in json_objects(path, check, numbered):
        row = triplet_row(check, path, number, obj, ("anchor", "positive", "negative"), need_negative)
        if row is None:
            continue
        row["source_id"] = str(obj.get("source_id", f"{path.name}:{number}"))
        problem = unicode_problem(row["source_id"])
        if problem:
            check.fail(path, number, "source_id", problem)
            continue
        yield row


def arrow_schema():
    """The rows as Arrow stores them: every column a string."""
    import pyarrow as pa

    return pa.schema([(c, pa.string()) for c in COLUMNS])


def rows_table(rows: list[dict[str, Any]]):
    """Python rows as an Arrow table of ``arrow_schema``."""
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=arrow_schema())
