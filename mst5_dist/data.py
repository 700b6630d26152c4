"""Training triplets (anchor, positive, hard negative, source id) and the global batch sampler.

Readers turn each input layout into rows ``{anchor, positive, negative, source_id}``, validating
every field: a bad row raises ``DataError("FILE:LINE: field 'F': ...")`` unless
``data.skip_bad_rows`` is on, in which case the skipped count is reported. The rows become a
``datasets.Dataset`` saved in Arrow format under a cache key of the inputs, so a second run
memory-maps it instead of parsing again. JSONL is parsed block by block straight into Arrow
(pyarrow's JSON reader, with the Python reader as the reference for any block it cannot vouch
for), so memory stays bounded at millions of rows. Beside the Arrow data the cache keeps integer
source-id codes and, per tokenizer, token lengths, each computed once.

``GlobalBatchSampler`` builds GLOBAL batches (all ranks together) in which no two rows share a
source id (translations of one example would be false negatives of each other), optionally
grouped by length, then hands each rank an equal contiguous slice. It works on numpy arrays
(O(N log N) per epoch), never on per-row Python objects.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mst5_dist.config import DataConfig
from mst5_dist.errors import DataError
from mst5_dist.files import atomic_write_bytes
from mst5_dist.layout import resolve_path

__all__ = [
    "DataError",
    "GlobalBatchSampler",
    "load_cached",
    "load_dataset",
    "read_jsonl",
    "read_triplets",
    "source_codes",
    "token_lengths",
]
logger = logging.getLogger(__name__)
NLI_LABELS = {"entailment", "neutral", "contradiction"}
COLUMNS = ("anchor", "positive", "negative", "source_id")
# Bytes that ``surrogateescape`` turned into lone surrogates: the mark of invalid UTF-8.
_UNDECODABLE = re.compile("[\udc80-\udcff]")
# Any other lone surrogate comes from a JSON escape such as "\ud800": not text Arrow can store.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _unicode_problem(value: str) -> str | None:
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


class _RowChecker:
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
        problem = _unicode_problem(value)
        if problem:
            self.fail(path, line, fieldname, problem)
            return None
        if not value.strip():
            self.fail(path, line, fieldname, "empty sentence")
            return None
        return value.strip()


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) with undecodable bytes kept as surrogates so the field can be named."""
    with path.open("rb") as f:
        yield from _decoded(enumerate(f, start=1))


def _decoded(raw_lines) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines among (line number, bytes) pairs."""
    for number, raw in raw_lines:
        text = raw.decode("utf-8", errors="surrogateescape").rstrip("\r\n")
        if text.strip():
            yield number, text


def _open_existing(path: Path, folder: bool = False) -> Path:
    if not path.exists():
        raise DataError(f"{path}: {'folder' if folder else 'file'} not found")
    if folder and not path.is_dir():
        raise DataError(f"{path}: not a folder (data.format=xnli reads a folder of {{split}}-{{lang}}.tsv files)")
    if not folder and not path.is_file():
        raise DataError(f"{path}: not a file (a folder? data.paths lists the input files)")
    return path


# ------------------------------------------------------------------------------------ readers


def read_jsonl(path: Path, skip_bad: bool = False, need_negative: bool = True) -> ReadReport:
    """``{"anchor", "positive", "negative"[, "source_id"]}`` per line."""
    report = ReadReport()
    report.rows.extend(iter_jsonl(path, _RowChecker(report, skip_bad), need_negative))
    return report


def _json_objects(
    path: Path, check: _RowChecker, lines: Iterator[tuple[int, str]] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of a JSON-lines file (or of its ``lines``, already decoded); a line
    that is not a JSON object is reported."""
    for number, text in _lines(_open_existing(path)) if lines is None else lines:
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
    path: Path, check: _RowChecker, need_negative: bool = True, lines: Iterator[tuple[int, str]] | None = None
) -> Iterator[dict[str, Any]]:
    """Validated rows of a triplet JSONL file (or of some of its ``lines``), one at a time: the
    reference reader, which the block reader (``_jsonl_to_arrow``) falls back to."""
    for number, obj in _json_objects(path, check, lines):
        row = _triplet_row(check, path, number, obj, ("anchor", "positive", "negative"), need_negative)
        if row is None:
            continue
        row["source_id"] = str(obj.get("source_id", f"{path.name}:{number}"))
        problem = _unicode_problem(row["source_id"])
        if problem:
            check.fail(path, number, "source_id", problem)
            continue
        yield row


def _triplet_row(
    check: _RowChecker, path: Path, number: int, obj: dict, names: tuple[str, str, str], need_negative: bool
) -> dict[str, Any] | None:
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


def read_csv(path: Path, skip_bad: bool = False, need_negative: bool = True) -> ReadReport:
    """SimCSE triplet CSV with a header ``sent0,sent1,hard_neg``."""
    report = ReadReport()
    check = _RowChecker(report, skip_bad)
    lines = list(_lines(_open_existing(path)))
    if not lines:
        raise DataError(f"{path}: empty file")
    header = next(csv.reader([lines[0][1]]))
    needed = ["sent0", "sent1"] + (["hard_neg"] if need_negative else [])
    for name in needed:
        if name not in header:
            raise DataError(f"{path}:{lines[0][0]}: field '{name}' missing from header {header}")
    # Parse the body as one stream so quoted fields with embedded newlines stay intact.
    body = io.StringIO("\n".join(t for _, t in lines[1:]))
    numbers = [n for n, _ in lines[1:]]
    for i, cells in enumerate(csv.reader(body)):
        number = numbers[min(i, len(numbers) - 1)]
        obj = {name: (cells[j] if j < len(cells) else None) for j, name in enumerate(header)}
        row = _triplet_row(check, path, number, obj, ("sent0", "sent1", "hard_neg"), need_negative)
        if row is not None:
            row["source_id"] = f"{path.name}:{number}"
            report.rows.append(row)
    return report


def read_snli(path: Path, skip_bad: bool = False, need_negative: bool = True) -> ReadReport:
    """SNLI/MNLI jsonl: triplets from hypotheses sharing a premise (entailment as positive,
    contradiction as hard negative). Rows with gold label ``-`` (no annotator consensus) are
    ignored, as in SimCSE; any other unknown label is an error."""
    report = ReadReport()
    check = _RowChecker(report, skip_bad)
    groups: dict[str, dict[str, list[str]]] = {}
    for number, obj in _json_objects(path, check):
        label = obj.get("gold_label")
        if label is None:
            check.fail(path, number, "gold_label", "missing")
            continue
        if label == "-":
            continue
        if label not in NLI_LABELS:
            check.fail(path, number, "gold_label", f"unknown label {label!r} (expected {sorted(NLI_LABELS)})")
            continue
        premise = check.text(path, number, "sentence1", obj.get("sentence1"))
        hypothesis = check.text(path, number, "sentence2", obj.get("sentence2")) if premise else None
        if premise is None or hypothesis is None:
            continue
        groups.setdefault(premise, {k: [] for k in NLI_LABELS})[label].append(hypothesis)
    for premise, hyps in groups.items():
        source = "snli:" + hashlib.sha1(premise.encode()).hexdigest()[:16]
        negatives = hyps["contradiction"]
        if need_negative and not negatives:
            continue
        for i, positive in enumerate(hyps["entailment"]):
            negative = negatives[i % len(negatives)] if negatives else None
            report.rows.append({"anchor": premise, "positive": positive, "negative": negative, "source_id": source})
    return report


def _read_xnli_file(path: Path, check: _RowChecker) -> list[tuple[int, str, str, str] | None]:
    rows: list[tuple[int, str, str, str] | None] = []
    for number, text in _lines(_open_existing(path)):
        cells = text.split("\t")
        names = ("premise", "hypothesis", "label")
        if len(cells) < 3:
            check.fail(path, number, names[len(cells)], "missing (XNLI rows are premise<TAB>hypothesis<TAB>label)")
            rows.append(None)
            continue
        premise = check.text(path, number, "premise", cells[0])
        hypothesis = check.text(path, number, "hypothesis", cells[1]) if premise else None
        label = cells[2].strip()
        if premise is None or hypothesis is None:
            rows.append(None)
            continue
        if label not in NLI_LABELS:
            check.fail(path, number, "label", f"unknown label {label!r} (expected {sorted(NLI_LABELS)})")
            rows.append(None)
            continue
        rows.append((number, premise, hypothesis, label))
    return rows


def read_xnli(
    folder: Path,
    split: str = "dev",
    languages: list[str] | None = None,
    cross_lingual: bool = True,
    seed: int = 0,
    skip_bad: bool = False,
) -> ReadReport:
    """Aligned multilingual NLI (XTREME layout ``{split}-{lang}.tsv``; row i is the same example in
    every language). Examples are groups of consecutive rows sharing a premise. For each example
    and each language L: premise in L; entailment and contradiction hypotheses in L
    (``cross_lingual=False``) or each in a randomly drawn language (mSimCSE)."""
    report = ReadReport()
    check = _RowChecker(report, skip_bad)
    folder = _open_existing(folder, folder=True)
    if not languages:
        languages = sorted(p.stem.split("-", 1)[1] for p in folder.glob(f"{split}-*.tsv"))
    if not languages:
        raise DataError(f"{folder}: no {split}-<lang>.tsv files")
    tables = {lang: _read_xnli_file(folder / f"{split}-{lang}.tsv", check) for lang in languages}
    sizes = {lang: len(t) for lang, t in tables.items()}
    if len(set(sizes.values())) != 1:
        raise DataError(f"{folder}: {split} files are not line-aligned (rows per language: {sizes})")
    pivot = languages[0]
    rng = random.Random(seed)
    # Group consecutive rows by the pivot premise; each group is one source example.
    groups: list[list[int]] = []
    last = None
    for i, row in enumerate(tables[pivot]):
        if row is None:
            continue
        if row[1] != last:
            groups.append([])
            last = row[1]
        groups[-1].append(i)
    for g, idx in enumerate(groups):
        by_label: dict[str, list[int]] = {k: [] for k in NLI_LABELS}
        for i in idx:
            if all(tables[lang][i] is not None for lang in languages):
                labels = {tables[lang][i][3] for lang in languages}
                if len(labels) != 1:
                    lang = next(lang for lang in languages if tables[lang][i][3] != tables[pivot][i][3])
                    check.fail(folder / f"{split}-{lang}.tsv", tables[lang][i][0], "label", f"disagrees with {pivot}")
                    continue
                by_label[labels.pop()].append(i)
        if not by_label["entailment"] or not by_label["contradiction"]:
            continue
        source = f"xnli-{split}:{g}"
        for lang in languages:
            ent, con = rng.choice(by_label["entailment"]), rng.choice(by_label["contradiction"])
            lang_pos = rng.choice(languages) if cross_lingual else lang
            lang_neg = rng.choice(languages) if cross_lingual else lang
            report.rows.append(
                {
                    "anchor": tables[lang][ent][1],
                    "positive": tables[lang_pos][ent][2],
                    "negative": tables[lang_neg][con][2],
                    "source_id": source,
                }
            )
    return report


def read_hub(name: str, split: str) -> ReadReport:
    """A Hugging Face dataset with anchor/positive/negative (or SimCSE) columns; needs a network."""
    from datasets import load_dataset

    ds = load_dataset(name, split=split)
    mapping = [("anchor", "positive", "negative"), ("sent0", "sent1", "hard_neg")]
    for cols in mapping:
        if set(cols[:2]) <= set(ds.column_names):
            break
    else:
        raise DataError(f"{name}: no anchor/positive or sent0/sent1 columns (has {ds.column_names})")
    report = ReadReport()
    for i, row in enumerate(ds):
        report.rows.append(
            {"anchor": row[cols[0]], "positive": row[cols[1]], "negative": row.get(cols[2]), "source_id": f"{name}:{i}"}
        )
    return report


def read_triplets(cfg: DataConfig, seed: int, need_negative: bool = True) -> ReadReport:
    """Dispatch on ``cfg.format`` and concatenate every path's rows."""
    total = ReadReport()
    for raw in cfg.paths:
        if cfg.format == "hub":
            report = read_hub(raw, cfg.split)
        else:
            path = resolve_path(raw)
            if cfg.format == "jsonl":
                report = read_jsonl(path, cfg.skip_bad_rows, need_negative)
            elif cfg.format == "csv":
                report = read_csv(path, cfg.skip_bad_rows, need_negative)
            elif cfg.format == "snli":
                report = read_snli(path, cfg.skip_bad_rows, need_negative)
            else:
                report = read_xnli(path, cfg.split, cfg.languages, cfg.cross_lingual, seed, cfg.skip_bad_rows)
        total.rows += report.rows
        total.skipped += report.skipped
        total.errors += report.errors
    if cfg.max_rows is not None:
        total.rows = total.rows[: cfg.max_rows]
    if not total.rows:
        raise DataError(f"no usable triplets in {cfg.paths} (skipped {total.skipped} bad rows)")
    return total


# ------------------------------------------------------------------------------------ dataset


def _cache_key(cfg: DataConfig, seed: int, need_negative: bool) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps(
            [
                cfg.format,
                cfg.paths,
                cfg.languages,
                cfg.split,
                cfg.cross_lingual,
                cfg.skip_bad_rows,
                cfg.max_rows,
                seed,
                need_negative,
            ]
        ).encode()
    )
    for raw in cfg.paths:
        path = resolve_path(raw) if cfg.format != "hub" else None
        if path is not None and path.exists():
            files = sorted(path.rglob("*")) if path.is_dir() else [path]
            for f in files:
                st = f.stat()
                h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def dataset_cache_dir(cfg: DataConfig, seed: int, need_negative: bool = True) -> Path:
    """The folder ``load_dataset`` caches these inputs in; source codes and token lengths are
    cached inside it, so they share its key (and go when it goes)."""
    import datasets

    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else Path(datasets.config.HF_DATASETS_CACHE) / "mst5_dist"
    return cache_root / _cache_key(cfg, seed, need_negative)


def load_dataset(cfg: DataConfig, seed: int, need_negative: bool = True):
    """Read, validate and cache the triplets as an Arrow ``datasets.Dataset`` (memory-mapped)."""
    return load_cached(cfg, seed, need_negative)[0]


def load_cached(cfg: DataConfig, seed: int, need_negative: bool = True):
    """(dataset, its cache folder): ``load_dataset`` with the folder that ``source_codes`` and
    ``token_lengths`` cache their arrays in."""
    target = dataset_cache_dir(cfg, seed, need_negative)
    return _load_into(target, cfg, seed, need_negative), target


def _load_into(target: Path, cfg: DataConfig, seed: int, need_negative: bool):
    import datasets

    if (target / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(target))
    # One scratch folder per process: every rank of a launch may build the same cache at once.
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    build = tmp.with_name(tmp.name + "-build")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if cfg.format == "jsonl":
            ds = _jsonl_dataset(cfg, need_negative, build)
        elif cfg.streaming:
            raise DataError(f"data.streaming supports format jsonl (got {cfg.format}); convert the input to JSONL")
        else:
            report = read_triplets(cfg, seed, need_negative)
            if report.skipped:
                logger.warning("skipped %d bad rows; first: %s", report.skipped, report.errors[0])
            ds = datasets.Dataset.from_dict({c: [r[c] for r in report.rows] for c in COLUMNS})
        # Written to a temporary folder and renamed when complete: an interrupted run leaves no
        # half-written cache that a later run would trust.
        ds.save_to_disk(str(tmp))
        codes = _encode_source_ids(_arrow_column(ds, "source_id"))
        _save_array(tmp / SOURCE_CODES, codes)
        del ds  # release the scratch copy's memory map before moving or deleting it
        if not (target / "dataset_info.json").is_file():
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:  # another rank renamed its identical copy first: use that one
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        shutil.rmtree(build, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(target))


# ------------------------------------------------------------------ JSONL block by block into Arrow

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


def _arrow_schema():
    import pyarrow as pa

    return pa.schema([(c, pa.string()) for c in COLUMNS])


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
    when Arrow cannot vouch for that (any error, null, empty sentence or unusual byte pattern):
    such a block goes to the Python reader, which names the file, line and field of a bad row."""
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
            parse_options=pj.ParseOptions(explicit_schema=_arrow_schema(), unexpected_field_behavior="ignore"),
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
        if pc.min(pc.utf8_length(col)).as_py() == 0:
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
    return pa.table([columns[c] for c in COLUMNS], schema=_arrow_schema())


def _python_block(path: Path, first: int, block: bytes, check: _RowChecker, need_negative: bool):
    import pyarrow as pa

    lines = _decoded(enumerate(block.split(b"\n"), start=first))
    rows = list(iter_jsonl(path, check, need_negative, lines))
    return pa.Table.from_pylist(rows, schema=_arrow_schema())


def _jsonl_dataset(cfg: DataConfig, need_negative: bool, build_dir: Path):
    """JSONL files block by block into one Arrow file in ``build_dir`` (memory: a block, not the
    data); a block Arrow cannot vouch for is read by the Python reader (the reference)."""
    import datasets
    import pyarrow as pa

    report = ReadReport()
    check = _RowChecker(report, cfg.skip_bad_rows)
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir(parents=True)
    out = build_dir / "rows.arrow"
    written = fallback_blocks = 0
    with pa.OSFile(str(out), "wb") as sink, pa.ipc.new_stream(sink, _arrow_schema()) as writer:
        for raw in cfg.paths:
            path = _open_existing(resolve_path(raw))
            for first, block in _jsonl_blocks(path):
                if cfg.max_rows is not None and written >= cfg.max_rows:
                    break
                table = _arrow_block(path, first, block, need_negative)
                if table is None:
                    fallback_blocks += 1
                    table = _python_block(path, first, block, check, need_negative)
                if cfg.max_rows is not None:
                    table = table.slice(0, cfg.max_rows - written)
                writer.write_table(table)
                written += table.num_rows
    if fallback_blocks:
        logger.info("%d JSONL block(s) read by the Python reader", fallback_blocks)
    if report.skipped:
        logger.warning("skipped %d bad rows; first: %s", report.skipped, report.errors[0])
    if written == 0:
        raise DataError(f"no usable triplets in {cfg.paths} (skipped {report.skipped} bad rows)")
    return datasets.Dataset.from_file(str(out), in_memory=False)


# ------------------------------------------------------------------ arrays cached beside the data

SOURCE_CODES = "source_codes.npy"
_LENGTHS_VERSION = 1  # bump when the meaning of a cached length changes
_LENGTH_CHUNK = 65536  # rows tokenised per call: the fast tokenizer's batch


def _arrow_column(dataset, name: str):
    """A column as one Arrow ChunkedArray, taken once (never item by item through ``datasets``)."""
    return dataset.with_format("arrow")[:].column(name)


def _save_array(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def _cached_array(path: Path | None, n: int, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()`` cached in ``path`` (a .npy written atomically); a file of the wrong shape
    (or unreadable) is recomputed, never trusted."""
    if path is not None and path.is_file():
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            logger.warning("unreadable cache %s (%s): recomputing", path, e)
        else:
            if array.shape == (n,) and array.dtype.kind in "iu":
                return array
            logger.warning(
                "cache %s holds %s %s, expected (%d,) integers: recomputing", path, array.shape, array.dtype, n
            )
    array = compute()
    if path is not None:
        _save_array(path, array)
    return array


def _encode_source_ids(column) -> np.ndarray:
    """Integer codes (equal ids, equal codes) of a string column, by Arrow's hash table."""
    import pyarrow.compute as pc

    if hasattr(column, "combine_chunks"):
        column = column.combine_chunks()
    return pc.dictionary_encode(column).indices.to_numpy(zero_copy_only=False).astype(np.int32)


def source_codes(dataset, cache_dir: Path | None = None) -> np.ndarray:
    """The ``source_id`` column as int32 codes, read from ``cache_dir`` (where ``load_dataset``
    writes them) when given."""
    path = None if cache_dir is None else Path(cache_dir) / SOURCE_CODES
    return _cached_array(path, len(dataset), lambda: _encode_source_ids(_arrow_column(dataset, "source_id")))


def _backend_copy(tokenizer):
    """A private copy of a fast tokenizer's Rust backend without truncation or padding (the
    ``transformers`` wrapper leaves the settings of its last call on its own backend)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides a tokenizer's output: its class, the full serialised backend (vocab,
    normaliser, pre-tokeniser, post-processor, added tokens) or, for a slow tokenizer, its vocab
    files and vocab, and its special tokens. Not its path: a moved copy keeps its fingerprint."""
    h = hashlib.sha256(f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}".encode())
    backend = _backend_copy(tokenizer)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        from mst5_dist.files import file_sha256

        for attr in sorted(getattr(tokenizer, "vocab_files_names", {})):
            f = getattr(tokenizer, attr, None)
            if isinstance(f, str) and os.path.isfile(f):
                h.update(f"{attr}:{file_sha256(f)}".encode())
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps(sorted(str(t) for t in tokenizer.all_special_tokens)).encode())
    return h.hexdigest()


def _count_tokens(tokenizer, backend, texts: list[str], max_len: int) -> np.ndarray:
    """Token counts as ``tokenizer(texts, truncation=True, max_length=max_len)`` gives them."""
    if backend is not None:
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # no offsets: faster
        counts = np.fromiter(map(len, encode(texts)), dtype=np.int32, count=len(texts))
        return np.minimum(counts, max_len)  # truncation keeps max_len tokens, special ones included
    enc = tokenizer(texts, truncation=True, max_length=max_len, return_attention_mask=False, return_length=True)
    return np.asarray(enc["length"], dtype=np.int32)


@contextlib.contextmanager
def _tokenizer_threads() -> Iterator[None]:
    """Let the Rust tokenizer use every core for one pass. The entry points turn its parallelism
    off (TOKENIZERS_PARALLELISM=false, for forked DataLoader workers); ``tokenizers`` reads the
    variable at every call, and in a process forked after parallel use it turns parallelism off
    by itself, so switching it on around this pass is safe."""
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


def _compute_lengths(dataset, tokenizer, max_len: int, columns: tuple[str, ...]) -> np.ndarray:
    with _tokenizer_threads():
        return _lengths_of(dataset, tokenizer, max_len, columns)


def _lengths_of(dataset, tokenizer, max_len: int, columns: tuple[str, ...]) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")[:]
    n = table.num_rows
    backend = _backend_copy(tokenizer)
    if backend is not None:  # the Rust backend must count what the wrapper's call does; else use the call
        probe = table.column(columns[0]).slice(0, 64).to_pylist()
        slow = [len(ids) for ids in tokenizer(probe, truncation=True, max_length=max_len)["input_ids"]]
        if _count_tokens(tokenizer, backend, probe, max_len).tolist() != slow:
            logger.warning("%s: backend token counts differ from the tokenizer's; using the tokenizer", type(tokenizer))
            backend = None
    lengths = np.zeros(n, dtype=np.int32)
    for start in range(0, n, _LENGTH_CHUNK):
        parts = [table.column(c).slice(start, _LENGTH_CHUNK) for c in columns]
        m = len(parts[0])
        texts = pa.chunked_array([chunk for p in parts for chunk in p.chunks], type=pa.string()).combine_chunks()
        if texts.null_count:
            raise DataError(f"token lengths: a row has no text in one of the columns {list(columns)}")
        # Each distinct text once: the translations of one example often share a hypothesis.
        encoded = pc.dictionary_encode(texts)
        counts = _count_tokens(tokenizer, backend, encoded.dictionary.to_pylist(), max_len)
        per_column = counts[encoded.indices.to_numpy()].reshape(len(columns), m)
        lengths[start : start + m] = per_column.max(axis=0)
    return lengths


def token_lengths(dataset, tokenizer, max_len: int, columns: tuple[str, ...], cache_dir: Path | None = None):
    """Per-row length used for grouping: the longest of the row's sentences (``columns``), in
    tokens after truncation to ``max_len``, as an int32 array.

    Computed once with the fast tokenizer in large batches, and cached in ``cache_dir`` (the
    dataset's cache folder, see ``dataset_cache_dir``) under a key of the tokenizer's fingerprint,
    ``max_len``, the columns and the row count.
    """
    columns = tuple(columns)
    path = None if cache_dir is None else lengths_cache_path(cache_dir, len(dataset), tokenizer, max_len, columns)
    if path is not None and not path.is_file():
        logger.info("token lengths of %d rows (computed once, cached in %s)", len(dataset), path)
    return _cached_array(path, len(dataset), lambda: _compute_lengths(dataset, tokenizer, max_len, columns))


def lengths_cache_path(cache_dir: Path, n_rows: int, tokenizer, max_len: int, columns: tuple[str, ...]) -> Path:
    """Where ``token_lengths`` caches the lengths for this key in a dataset's cache folder."""
    key = json.dumps([_LENGTHS_VERSION, tokenizer_fingerprint(tokenizer), max_len, list(columns), n_rows])
    return Path(cache_dir) / f"lengths-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npy"


# ------------------------------------------------------------------------------------ sampler


def _as_codes(source_ids) -> np.ndarray:
    """Source ids as integer codes: an integer array as is; strings (list, Arrow, ``datasets``
    Column) through Arrow's dictionary encoding, never item by item."""
    if isinstance(source_ids, np.ndarray) and source_ids.dtype.kind in "iu":
        if len(source_ids) and (source_ids.min() < 0 or source_ids.max() >= len(source_ids)):
            source_ids = np.unique(source_ids, return_inverse=True)[1]  # compact: keys stay small
        return source_ids
    import pyarrow as pa

    source = getattr(source_ids, "source", None)  # a datasets Column: read its Arrow column once
    if source is not None and hasattr(source, "with_format"):
        return _encode_source_ids(_arrow_column(source, source_ids.column_name))
    if not isinstance(source_ids, (pa.Array, pa.ChunkedArray)):
        source_ids = pa.array([str(s) for s in source_ids], type=pa.string())
    return _encode_source_ids(source_ids)


def repeated_in_rows(codes: np.ndarray) -> np.ndarray:
    """Per row of a 2-D array: does some value occur twice in it? (The sampler's final check.)"""
    s = np.sort(codes, axis=1)
    return (s[:, 1:] == s[:, :-1]).any(axis=1)


class GlobalBatchSampler:
    """Deterministic, resumable global batches with unique source ids; yields this rank's slice.

    For epoch ``e`` the order depends only on (seed, e): resume by ``set_epoch(e, start)``.
    The ragged tail (fewer rows than a global batch) is dropped so every rank always gets exactly
    ``global_batch / world_size`` rows and collectives can never hang on a short rank.

    The algorithm (docs/training.md, "The batch sampler"), on numpy arrays: shuffle the rows (a
    numpy Generator seeded with (seed, epoch)), cut the order into even buckets of about
    ``bucket_batches`` global batches, sort each bucket by length and cut it into consecutive
    batches. Then, in rounds, every repeated source id in a batch (each occurrence after the
    first) moves to the end of the next batch, whose first rows move up to fill the gap: the
    vectorised form of "put each row in the first batch that lacks its source id". Rows pushed
    past the last batch leave the bucket. The rounds stop when no id repeats or the repeats stop
    going down; a batch that still repeats an id is broken up, and its rows, with the rows that
    left, are carried into the next bucket. After the last bucket the carried rows are cut again
    while full batches come out; the rest is dropped (``dropped``). Every kept batch is checked
    (``repeated_in_rows``): the rule holds by construction, not by luck. Finally the batches are
    shuffled.
    """

    _STALL_ROUNDS = 12  # rounds without fewer repeats before a bucket gives up on the rest

    def __init__(
        self,
        source_ids,
        global_batch: int,
        *,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        lengths=None,
        bucket_batches: int = 32,
    ) -> None:
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} does not divide by world size {world_size}")
        if global_batch < 1 or bucket_batches < 1:
            raise ValueError(f"global batch {global_batch} and bucket_batches {bucket_batches} must be >= 1")
        self.codes = _as_codes(source_ids)
        self.lengths = None if lengths is None else np.asarray(lengths)
        if self.lengths is not None and self.lengths.shape != self.codes.shape:
            raise ValueError(f"{len(self.lengths)} lengths for {len(self.codes)} rows")
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.bucket_batches = bucket_batches
        self.epoch, self.start = 0, 0
        self.dropped = 0
        self._cached: tuple[int, np.ndarray] | None = None

    def global_batches(self, epoch: int) -> np.ndarray:
        """Epoch ``epoch``'s global batches as an (n_batches, global_batch) array of row indices."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        rng = np.random.default_rng([self.seed & 0xFFFF_FFFF_FFFF_FFFF, epoch])
        n = len(self.codes)
        order = rng.permutation(n)
        n_buckets = max(1, round(n / (self.global_batch * self.bucket_batches)))  # even: no tiny last one
        bounds = [n * k // n_buckets for k in range(n_buckets + 1)]
        out: list[np.ndarray] = []
        carry = np.empty(0, dtype=np.int64)
        for lo, hi in itertools.pairwise(bounds):
            full, carry = self._fill(np.concatenate([carry, order[lo:hi]]))
            out.append(full)
        while len(carry) >= self.global_batch:  # leftovers: keep cutting while full batches come out
            full, carry = self._fill(carry)
            if not len(full):
                break
            out.append(full)
        batches = np.concatenate(out)
        batches = batches[rng.permutation(len(batches))]
        self.dropped = len(carry)
        self._cached = (epoch, batches)
        return batches

    def _fill(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cut ``items`` (length-sorted if grouping) into full batches without repeated source ids:
        (batches, rows carried on)."""
        g = self.global_batch
        if self.lengths is not None:
            items = items[np.argsort(self.lengths[items], kind="stable")]
        if len(items) < g:
            return np.empty((0, g), dtype=np.int64), items
        items, codes, n_out = self._push_repeats(items.astype(np.int64), self.codes[items].astype(np.int64))
        n_full = (len(items) - n_out) // g
        batches = items[: n_full * g].reshape(n_full, g)
        bad = repeated_in_rows(codes[: n_full * g].reshape(n_full, g))
        return batches[~bad], np.concatenate([batches[bad].ravel(), items[n_full * g :]])

    def _push_repeats(self, items: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Reorder (items, codes) so that batches (consecutive runs of ``global_batch``) repeat as
        few source ids as the rounds manage; also return how many rows left at the end."""
        g, m = self.global_batch, len(items)
        out = np.zeros(m, dtype=bool)  # pushed past the last batch: kept at the end, never back in
        k = int(codes.max()) + 1
        best, stall = None, 0
        for _ in range(4 * (m // g) + 16):
            n_full = (m - int(out.sum())) // g
            if n_full == 0:
                break
            batch = np.arange(n_full * g) // g
            keys = batch * k + codes[: n_full * g]  # (batch, source id) as one integer
            order = np.argsort(keys, kind="stable")
            repeat = keys[order][1:] == keys[order][:-1]
            count = int(repeat.sum())
            if count == 0:
                break
            if best is not None and count >= best:  # no progress (rows cycling): give up
                stall += 1
                if stall >= self._STALL_ROUNDS:
                    break
            else:
                best, stall = count, 0
            rows = order[1:][repeat]  # each occurrence of an id in a batch after its first
            position = np.arange(m, dtype=np.float64)
            position[rows] = (batch[rows] + 2) * g - 0.5  # just before the batch after next
            out[rows[batch[rows] == n_full - 1]] = True
            position[out] = 2.0 * m + np.flatnonzero(out)
            move = np.argsort(position, kind="stable")
            items, codes, out = items[move], codes[move], out[move]
        return items, codes, int(out.sum())

    def __len__(self) -> int:
        return len(self.global_batches(self.epoch)) - self.start

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and skip its first ``start`` batches (resume)."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[list[int]]:
        lo, hi = self.rank * self.local_batch, (self.rank + 1) * self.local_batch
        for batch in self.global_batches(self.epoch)[self.start :]:
            yield batch[lo:hi].tolist()
