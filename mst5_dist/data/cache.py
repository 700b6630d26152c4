"""The triplets as an Arrow ``datasets.Dataset`` saved under a key of the inputs, so a second run
memory-maps it instead of parsing again; the integer source-id codes are kept beside it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from mst5_dist.config import DataConfig, config_keys
from mst5_dist.data.arrays import arrow_column, cached_array, encode_source_ids, save_array
from mst5_dist.data.formats import Format, chunks, get
from mst5_dist.data.formats.base import require_rows
from mst5_dist.data.rows import ReadReport, RowChecker, arrow_schema

logger = logging.getLogger(__name__)
SOURCE_CODES = "source_codes.npy"


def _cache_key(reader: Format, cfg: DataConfig, seed: int, need_negative: bool) -> str:
    h = hashlib.sha256()
    # The fields are those that declare ``cache`` in mst5_dist.config, so a new data field chooses.
    fields = [getattr(cfg, key.split(".", 1)[1]) for key in config_keys("cache") if key.startswith("data.")]
    seeded = seed if reader.uses_seed else None  # a new seed must not re-parse seed-free rows
    h.update(json.dumps([*fields, seeded, need_negative]).encode())
    for path in reader.sources(cfg) if reader.local else ():
        if path.exists():
            files = sorted(path.rglob("*")) if path.is_dir() else [path]
            for f in files:
                st = f.stat()
                h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def _cache_dir(reader: Format, cfg: DataConfig, seed: int, need_negative: bool) -> Path:
    import datasets

    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else Path(datasets.config.HF_DATASETS_CACHE) / "mst5_dist"
    return cache_root / _cache_key(reader, cfg, seed, need_negative)


def dataset_cache_dir(cfg: DataConfig, seed: int, need_negative: bool = True) -> Path:
    """The folder ``load_dataset`` caches these inputs in; source codes and token lengths are
    cached inside it, so they share its key (and go when it goes)."""
    return _cache_dir(get(cfg.format), cfg, seed, need_negative)


def load_dataset(cfg: DataConfig, seed: int, need_negative: bool = True):
    """Read, validate and cache the triplets as an Arrow ``datasets.Dataset`` (memory-mapped)."""
    return load_cached(cfg, seed, need_negative)[0]


def load_cached(cfg: DataConfig, seed: int, need_negative: bool = True):
    """(dataset, its cache folder): ``load_dataset`` with the folder that ``source_codes`` and
    ``token_lengths`` cache their arrays in."""
    reader = get(cfg.format)
    target = _cache_dir(reader, cfg, seed, need_negative)
    return _load_into(target, reader, cfg, seed, need_negative), target


def _load_into(target: Path, reader: Format, cfg: DataConfig, seed: int, need_negative: bool):
    import datasets

    if (target / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(target))
    # One scratch folder per process: every rank of a launch may build the same cache at once.
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    build = tmp.with_name(tmp.name + "-build")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        ds = _write_rows(reader, cfg, seed, need_negative, build)
        # Written to a temporary folder and renamed when complete: an interrupted run leaves no
        # half-written cache that a later run would trust.
        ds.save_to_disk(str(tmp))
        save_array(tmp / SOURCE_CODES, encode_source_ids(arrow_column(ds, "source_id")))
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


def _write_rows(reader: Format, cfg: DataConfig, seed: int, need_negative: bool, build_dir: Path):
    """Every source's Arrow tables into one Arrow file in ``build_dir`` (memory: a table, not the
    data), memory-mapped as a ``datasets.Dataset``."""
    import datasets
    import pyarrow as pa

    report = ReadReport()
    check = RowChecker(report, cfg.skip_bad_rows)
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir(parents=True)
    out = build_dir / "rows.arrow"
    written = 0
    with pa.OSFile(str(out), "wb") as sink, pa.ipc.new_stream(sink, arrow_schema()) as writer:
        for table in chunks(reader, cfg, seed, need_negative, check, arrow=True):
            writer.write_table(table)
            written += table.num_rows
    if report.skipped:
        logger.warning("skipped %d bad rows; first: %s", report.skipped, report.errors[0])
    require_rows(written, report, cfg.paths)
    return datasets.Dataset.from_file(str(out), in_memory=False)


def source_codes(dataset, cache_dir: Path | None = None) -> np.ndarray:
    """The ``source_id`` column as int32 codes, read from ``cache_dir`` (where ``load_dataset``
    writes them) when given."""
    path = None if cache_dir is None else Path(cache_dir) / SOURCE_CODES
    return cached_array(path, len(dataset), lambda: encode_source_ids(arrow_column(dataset, "source_id")))
