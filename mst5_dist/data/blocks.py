"""JSONL block by block into Arrow (pyarrow's JSON reader), so memory stays bounded at millions of
rows; a block Arrow cannot vouch for is read by the Python reader (``rows.iter_jsonl``, the
reference), which names the file, line and field of a bad row."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path

from mst5_dist.data.rows import (
    COLUMNS,
    INVISIBLE,
    RowChecker,
    arrow_schema,
    decoded,
    iter_jsonl,
    open_existing,
    rows_table,
)

logger = logging.getLogger(__name__)

_BLOCK_BYTES = 16 << 20  # JSONL bytes parsed at a time (whole lines): bounds the reader's memory
# Exactly the characters str.strip() removes (every ch with ch.isspace()); a test recomputes it.
_PY_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
# Blocks the Arrow reader must leave to the Python one, because Arrow would read them differently:
# a blank line (Arrow skips it, which shifts line numbers), a UTF-8 byte-order mark (Arrow skips
# it, Python's json refuses it), and a \u escape of a printable ASCII character (it can spell a
# field name, e.g. "source\u005fid", that Arrow does not match against the schema). Separate
# patterns: one alternation of them scans 40x slower.
_BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*\n")
_ASCII_ESCAPE = re.compile(rb"\\u00[2-7][0-9a-fA-F]")
_BOM = b"\xef\xbb\xbf"


def _jsonl_blocks(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number of the first line, bytes) of consecutive blocks of whole lines."""
    first, rest = 1, b""
    with path.open("rb") as f:
        while True:
            data = f.read(_BLOCK_BYTES)
            if not data:
                if rest:
                    yield first, rest
                return
            data = rest + data
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # one line longer than a block: keep reading
                rest = data
                continue
            block, rest = data[:cut], data[cut:]
            yield first, block
            first += block.count(b"\n")


def _arrow_block(path: Path, first: int, block: bytes, need_negative: bool):
    """The block's rows as an Arrow table, exactly as the Python reader would give them, or None
    when Arrow cannot vouch for that (any error, null, empty sentence or unusual byte pattern)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj

    body = block[:-1] if block.endswith(b"\n") else block
    if _BOM in body or _ASCII_ESCAPE.search(body) or _BLANK_LINE.search(b"\n" + body + b"\n"):
        return None
    try:
        table = pj.read_json(
            io.BytesIO(block),
            read_options=pj.ReadOptions(block_size=4 << 20),
            parse_options=pj.ParseOptions(explicit_schema=arrow_schema(), unexpected_field_behavior="ignore"),
        )
        table.validate(full=True)  # the reader does not check that strings are valid UTF-8
    except (pa.ArrowException, ValueError):  # invalid JSON or UTF-8, a wrong type, a line over 4 MiB
        return None
    n = body.count(b"\n") + 1
    if table.num_rows != n:  # e.g. two objects on one line, which Python's json refuses
        return None
    columns = {}
    for name in ("anchor", "positive", "negative") if need_negative else ("anchor", "positive"):
        col = table.column(name)
        if col.null_count:
            return None
        col = pc.utf8_trim(col, characters=_PY_WHITESPACE)
        # An empty or invisible-only sentence: the Python reader names its line and field.
        if pc.min(pc.utf8_length(pc.utf8_trim(col, characters=_PY_WHITESPACE + INVISIBLE))).as_py() == 0:
            return None
        columns[name] = col
    if not need_negative:
        columns["negative"] = pa.nulls(n, pa.string())
    sid = table.column("source_id")
    if sid.null_count:
        if b"source_id" in block:  # the Python reader turns a present null into the id "None"
            return None
        sid = pc.coalesce(sid, pa.array([f"{path.name}:{first + i}" for i in range(n)]))
    columns["source_id"] = sid
    return pa.table([columns[c] for c in COLUMNS], schema=arrow_schema())


def _python_block(path: Path, first: int, block: bytes, check: RowChecker, need_negative: bool):
    numbered = decoded(enumerate(block.split(b"\n"), start=first))
    return rows_table(list(iter_jsonl(path, check, need_negative, numbered)))


def jsonl_tables(path: Path, need_negative: bool, check: RowChecker) -> Iterator:
    """A JSONL file's rows as Arrow tables, one per block (memory: a block, not the file)."""
    fallback_blocks = 0
    try:
        for first, block in _jsonl_blocks(open_existing(path)):
            table = _arrow_block(path, first, block, need_negative)
            if table is None:
                fallback_blocks += 1
                table = _python_block(path, first, block, check, need_negative)
            yield table
    finally:  # also when data.max_rows stops the reading early
        if fallback_blocks:
            logger.info("%s: %d JSONL block(s) read by the Python reader", path, fallback_blocks)
