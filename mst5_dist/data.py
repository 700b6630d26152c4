"""Training triplets (anchor, positive, hard negative, source id) and the global batch sampler.

Readers turn each input layout into rows ``{anchor, positive, negative, source_id}``, validating
every field: a bad row raises ``DataError("FILE:LINE: field 'F': ...")`` unless
``data.skip_bad_rows`` is on, in which case the skipped count is reported. The rows become a
``datasets.Dataset`` saved in Arrow format under a cache key of the inputs, so a second run
memory-maps it instead of parsing again.

``GlobalBatchSampler`` builds GLOBAL batches (all ranks together) in which no two rows share a
source id (translations of one example would be false negatives of each other), optionally
grouped by length, then hands each rank an equal contiguous slice.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import logging
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mst5_dist.config import DataConfig
from mst5_dist.errors import DataError
from mst5_dist.layout import resolve_path

__all__ = ["DataError", "GlobalBatchSampler", "load_dataset", "read_jsonl", "read_triplets"]
logger = logging.getLogger(__name__)
NLI_LABELS = {"entailment", "neutral", "contradiction"}
COLUMNS = ("anchor", "positive", "negative", "source_id")


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
        if any("\udc80" <= ch <= "\udcff" for ch in value):
            self.fail(path, line, fieldname, "contains bytes that are not valid UTF-8")
            return None
        if not value.strip():
            self.fail(path, line, fieldname, "empty sentence")
            return None
        return value.strip()


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) with undecodable bytes kept as surrogates so the field can be named."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
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


def _json_objects(path: Path, check: _RowChecker) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of a JSON-lines file; a line that is not a JSON object is reported."""
    for number, text in _lines(_open_existing(path)):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            check.fail(path, number, None, f"invalid JSON ({e.msg})")
            continue
        if not isinstance(obj, dict):
            check.fail(path, number, None, "expected a JSON object")
            continue
        yield number, obj


def iter_jsonl(path: Path, check: _RowChecker, need_negative: bool = True) -> Iterator[dict[str, Any]]:
    """Validated rows of a triplet JSONL file, one at a time (the streaming path uses it as is)."""
    for number, obj in _json_objects(path, check):
        row = _triplet_row(check, path, number, obj, ("anchor", "positive", "negative"), need_negative)
        if row is not None:
            row["source_id"] = str(obj.get("source_id", f"{path.name}:{number}"))
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


def load_dataset(cfg: DataConfig, seed: int, need_negative: bool = True):
    """Read, validate and cache the triplets as an Arrow ``datasets.Dataset`` (memory-mapped)."""
    import datasets

    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else Path(datasets.config.HF_DATASETS_CACHE) / "mst5_dist"
    target = cache_root / _cache_key(cfg, seed, need_negative)
    if (target / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(target))
    # One scratch folder per process: every rank of a launch may build the same cache at once.
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if cfg.streaming:
        ds = _streamed_dataset(cfg, need_negative, tmp.with_name(tmp.name + "-build"))
    else:
        report = read_triplets(cfg, seed, need_negative)
        if report.skipped:
            logger.warning("skipped %d bad rows; first: %s", report.skipped, report.errors[0])
        ds = datasets.Dataset.from_dict({c: [r[c] for r in report.rows] for c in COLUMNS})
    # Written to a temporary folder and renamed when complete: an interrupted run leaves no
    # half-written cache that a later run would trust.
    ds.save_to_disk(str(tmp))
    del ds  # release the scratch copy's memory map before moving or deleting it
    if not (target / "dataset_info.json").is_file():
        shutil.rmtree(target, ignore_errors=True)
    try:
        tmp.rename(target)
    except OSError:  # another rank renamed its identical copy first: use that one
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(tmp.with_name(tmp.name + "-build"), ignore_errors=True)  # streaming's scratch copy
    return datasets.load_from_disk(str(target))


def _streamed_dataset(cfg: DataConfig, need_negative: bool, build_dir: Path):
    """JSONL files row by row into Arrow on disk (``Dataset.from_generator`` writes in batches),
    so inputs larger than memory are never held as Python objects."""
    import datasets

    if cfg.format != "jsonl":
        raise DataError(f"data.streaming supports format jsonl (got {cfg.format}); convert the input to JSONL")
    report = ReadReport()
    check = _RowChecker(report, cfg.skip_bad_rows)

    def rows():
        emitted = 0
        for raw in cfg.paths:
            for row in iter_jsonl(resolve_path(raw), check, need_negative):
                if cfg.max_rows is not None and emitted >= cfg.max_rows:
                    return
                emitted += 1
                yield row

    features = datasets.Features({c: datasets.Value("string") for c in COLUMNS})
    shutil.rmtree(build_dir, ignore_errors=True)
    try:
        ds = datasets.Dataset.from_generator(rows, features=features, cache_dir=str(build_dir))
    except datasets.exceptions.DatasetGenerationError as e:
        # datasets wraps whatever the generator raised; our message names file, line and field
        cause = e.__cause__
        raise (cause if isinstance(cause, DataError) else e) from None
    if report.skipped:
        logger.warning("skipped %d bad rows; first: %s", report.skipped, report.errors[0])
    if len(ds) == 0:
        raise DataError(f"no usable triplets in {cfg.paths} (skipped {report.skipped} bad rows)")
    return ds


def token_lengths(dataset, tokenizer, max_len: int, columns: tuple[str, ...]) -> list[int]:
    """Per-row length used for grouping: the longest of the row's sentences (``columns``), in tokens."""
    lengths: list[int] = []
    cols = list(columns)
    for start in range(0, len(dataset), 4096):
        chunk = dataset[start : start + 4096]
        per_col = [tokenizer(chunk[c], truncation=True, max_length=max_len)["input_ids"] for c in cols]
        lengths += [max(len(col[i]) for col in per_col) for i in range(len(per_col[0]))]
    return lengths


# ------------------------------------------------------------------------------------ sampler


class GlobalBatchSampler:
    """Deterministic, resumable global batches with unique source ids; yields this rank's slice.

    For epoch ``e`` the order depends only on (seed, e): resume by ``set_epoch(e, start)``.
    The ragged tail (fewer rows than a global batch) is dropped so every rank always gets exactly
    ``global_batch / world_size`` rows and collectives can never hang on a short rank.
    """

    def __init__(
        self,
        source_ids: list[str],
        global_batch: int,
        *,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        lengths: list[int] | None = None,
        bucket_batches: int = 32,
    ) -> None:
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} does not divide by world size {world_size}")
        self.source_ids = source_ids
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.lengths = lengths
        self.bucket_batches = bucket_batches
        self.epoch, self.start = 0, 0
        self.dropped = 0
        self._cached: tuple[int, list[list[int]]] | None = None

    def global_batches(self, epoch: int) -> list[list[int]]:
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(len(self.source_ids)))
        rng.shuffle(order)
        size = self.global_batch * (self.bucket_batches if self.lengths is not None else 1)
        n_buckets = max(1, round(len(order) / size))  # even buckets: no tiny last one
        bounds = [len(order) * k // n_buckets for k in range(n_buckets + 1)]
        batches: list[list[int]] = []
        carry: list[int] = []
        for lo, hi in itertools.pairwise(bounds):
            full, carry = self._fill(carry + order[lo:hi])
            batches += full
        while carry:  # leftovers: keep cutting while full batches still come out
            full, carry = self._fill(carry)
            if not full:
                break
            batches += full
        self.dropped = len(carry)
        rng.shuffle(batches)
        self._cached = (epoch, batches)
        return batches

    def _fill(self, items: list[int]) -> tuple[list[list[int]], list[int]]:
        """Cut ``items`` (length-sorted if grouping) into full batches without repeated source ids.

        Each row goes into the first open batch, from the current one on, that lacks its source
        id, so a deferred row lands a batch or two later among rows of similar length. Rows that
        fit nowhere, and batches left short, are carried into the next bucket.
        """
        if self.lengths is not None:
            items = sorted(items, key=lambda i: self.lengths[i])
        n_batches = len(items) // self.global_batch
        batches: list[list[int]] = [[] for _ in range(n_batches)]
        seen: list[set[str]] = [set() for _ in range(n_batches)]
        carry: list[int] = []
        first_open = 0
        for i in items:
            while first_open < n_batches and len(batches[first_open]) == self.global_batch:
                first_open += 1
            sid = self.source_ids[i]
            for b in range(first_open, n_batches):
                if len(batches[b]) < self.global_batch and sid not in seen[b]:
                    batches[b].append(i)
                    seen[b].add(sid)
                    break
            else:
                carry.append(i)
        full = [b for b in batches if len(b) == self.global_batch]
        carry += [i for b in batches if len(b) < self.global_batch for i in b]
        return full, carry

    def __len__(self) -> int:
        return len(self.global_batches(self.epoch)) - self.start

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and skip its first ``start`` batches (resume)."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[list[int]]:
        lo, hi = self.rank * self.local_batch, (self.rank + 1) * self.local_batch
        for batch in self.global_batches(self.epoch)[self.start :]:
            yield batch[lo:hi]


class BatchCollator:
    """Rows -> one batch: the objective says which texts to encode (and adds the tensors its loss
    needs); they are tokenised together, so one forward pass (or one GradCache pass) encodes them."""

    def __init__(self, tokenizer, max_seq_length: int, objective) -> None:
        self.tokenizer, self.max_len, self.objective = tokenizer, max_seq_length, objective

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        collated = self.objective.collate(rows)
        enc = self.tokenizer(
            collated.texts, padding=True, truncation=True, max_length=self.max_len, return_tensors="pt"
        )
        mask = enc["attention_mask"]
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": mask,
            "n": len(rows),
            "real_tokens": int(mask.sum()),
            "padded_tokens": int(mask.numel()),
            "source_ids": [r["source_id"] for r in rows],
            **collated.extras,
        }
