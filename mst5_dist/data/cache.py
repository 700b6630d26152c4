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
from mst5_dist.data.arrays import arrow_column, cached_array, encode_source_ids, merge_groups, save_array
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
                h.update(f"{f}:{_file_identity(f)}".encode())
    return h.hexdigest()[:24]


def _file_identity(path: Path) -> str:
    """What says a file's content may have changed, without reading it: size, mtime, ctime and
    inode. Size and mtime alone missed a same-size edit whose old mtime was put back (``cp -p``,
    ``tar``, ``rsync -a`` and ``touch -d`` all restore mtime); the kernel sets ctime on every
    write and metadata change and no user call can set it back, and a file replaced by another
    (rename, ``rsync`` without ``--inplace``) has a new inode. Hashing the bytes was the other
    choice: it reads the whole data at every start of every rank (sha256: 0.11 s per 100 MB from
    the page cache on one core, far more from a cold shared disk) only to spare a rebuild after
    a ctime-only change (``chmod``, ``touch``, a copy), which costs one parse and is never wrong."""
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


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
        save_array(tmp / SOURCE_CODES, batch_groups(ds))
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
    return cached_array(path, len(dataset), lambda: batch_groups(dataset))


def _row_digests(dataset) -> np.ndarray:
    """A 64-bit digest of each row's (anchor, positive, negative), block by block (memory: a block)."""
    digests = np.empty(len(dataset), dtype=np.uint64)
    table, start = dataset.with_format("arrow")[:], 0
    for batch in table.to_batches(max_chunksize=1 << 16):
        for i, row in enumerate(zip(*(batch.column(c).to_pylist() for c in ("anchor", "positive", "negative")))):
            text = "\x00".join("\x01" if x is None else x for x in row).encode("utf-8")
            digests[start + i] = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")
        start += batch.num_rows
    return digests


def batch_groups(dataset) -> np.ndarray:
    """The sampler's groups (no two rows of a group in one batch): rows sharing a source id, joined
    with rows that repeat another row exactly. An exact repeat in the batch of its twin is an
    in-batch false negative (its positive is the twin's too): the loss would push the anchor away
    from its own positive. Repeats are kept, not dropped (a file repeated on purpose oversamples
    it), and reported once, when the cache is built. A digest collision (2^-64) only joins two
    groups, which is harmless."""
    sources = encode_source_ids(arrow_column(dataset, "source_id"))
    content = np.unique(_row_digests(dataset), return_inverse=True)[1]
    repeats = len(content) - int(content.max() + 1 if len(content) else 0)
    if not repeats:
        return sources
    logger.warning(
        "%d rows repeat another row exactly (anchor, positive and negative): they are kept, and never "
        "put in the batch of their twin (an in-batch false negative)",
        repeats,
    )
    return merge_groups(sources, content)
