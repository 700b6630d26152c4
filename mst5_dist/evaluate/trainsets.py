"""The training sets ``mst5 data download`` makes from the archives it fetched (names in
``mst5_dist/resources/train_data.jsonl``), in the layout the shipped configs read:

- ``en-nli``: SNLI 1.0 + MultiNLI 1.0 train (``snli_1.0.zip``, ``multinli_1.0.zip``) made into
  ``en-nli/train.jsonl``: one {anchor, positive, negative, source_id} triplet per entailment
  hypothesis of a premise that also has a contradiction (the ``snli`` reader's rule; gold label
  ``-`` and malformed rows skipped and counted);
- ``xnli``: the 15 ``multinli.train.{lang}.tsv`` files of XNLI-MT 1.0 (``XNLI-MT-1.0.zip``), copied
  as published into ``xnli/``; ``data.format: xnli`` with ``data.split: train`` reads them with
  mSimCSE sampling (``data/formats/xnli_mt.py``).

Each output is built under a temporary name and renamed when complete; ``SOURCE.json`` beside it
records the archives' sha256, so a rerun with the same archives converts nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from mst5_dist.data.formats.snli import snli_rows
from mst5_dist.data.formats.xnli_mt import count_xnli_mt
from mst5_dist.data.rows import ReadReport, RowChecker, decoded
from mst5_dist.errors import DataError
from mst5_dist.files import atomic_dir, atomic_write_json, read_json_or_none

XNLI_LANGUAGES = ["ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh"]
EN_NLI_MEMBERS = [
    ("snli_1.0.zip", "snli_1.0/snli_1.0_train.jsonl", "snli"),
    ("multinli_1.0.zip", "multinli_1.0/multinli_1.0_train.jsonl", "mnli"),
]
XNLI_MEMBER = "XNLI-MT-1.0/multinli/multinli.train.{lang}.tsv"


def _archive(archives: dict[str, Path], name: str) -> Path:
    try:
        return archives[name]
    except KeyError:
        raise DataError(f"manifest: no archive named {name} among {sorted(archives)}") from None


@contextmanager
def _member(archive: Path, member: str) -> Iterator[IO[bytes]]:
    """An open member of a zip archive, or a DataError naming both."""
    try:
        z = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as e:
        raise DataError(f"{archive}: not a zip archive ({e})") from None
    with z:
        try:
            f = z.open(member)
        except KeyError:
            raise DataError(f"{archive}: no member {member}") from None
        with f:
            yield f


def _stamp(archives: dict[str, Path], digests: dict[str, str]) -> dict[str, str]:
    return {name: digests[str(path)] for name, path in sorted(archives.items())}


def _current(out: Path, stamp: dict[str, str]) -> dict[str, Any] | None:
    source = read_json_or_none(out / "SOURCE.json")
    return source if isinstance(source, dict) and source.get("archives") == stamp else None


def prepare_en_nli(out: Path, archives: dict[str, Path], digests: dict[str, str]) -> str:
    """``out/train.jsonl`` from the SNLI and MultiNLI archives; a line saying what it holds."""
    stamp = _stamp(archives, digests)
    done = _current(out, stamp)
    if done:
        return f"en-nli: {done['triplets']} triplets in {out / 'train.jsonl'} (already there)"
    counts: dict[str, int] = {}
    skipped = 0
    with atomic_dir(out) as tmp:
        tmp.mkdir(parents=True)
        with (tmp / "train.jsonl").open("w", encoding="utf-8") as f:
            for archive_name, member, prefix in EN_NLI_MEMBERS:
                archive = _archive(archives, archive_name)
                report = ReadReport()
                with _member(archive, member) as raw:
                    numbered = decoded(enumerate(raw, start=1))
                    rows = snli_rows(Path(f"{archive}!{member}"), RowChecker(report, True), True, numbered, prefix)
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                counts[prefix] = len(rows)
                skipped += report.skipped
        source = {"archives": stamp, "triplets": sum(counts.values()), "per_source": counts, "skipped_rows": skipped}
        atomic_write_json(tmp / "SOURCE.json", source)
    parts = ", ".join(f"{k} {v}" for k, v in counts.items())
    return f"en-nli: {source['triplets']} triplets ({parts}; {skipped} malformed rows skipped) in {out / 'train.jsonl'}"


def prepare_xnli(out: Path, archives: dict[str, Path], digests: dict[str, str]) -> str:
    """``out/multinli.train.{lang}.tsv`` for the 15 languages; a line with the triplet count."""
    stamp = _stamp(archives, digests)
    done = _current(out, stamp)
    if done:
        return f"xnli: {done['triplets']} cross-lingual triplets in {out} (already there)"
    archive = _archive(archives, "XNLI-MT-1.0.zip")
    with atomic_dir(out) as tmp:
        tmp.mkdir(parents=True)
        for lang in XNLI_LANGUAGES:
            name = XNLI_MEMBER.format(lang=lang)
            with _member(archive, name) as src, (tmp / Path(name).name).open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        examples, triplets = count_xnli_mt(tmp, "train", XNLI_LANGUAGES)
        source = {"archives": stamp, "examples": examples, "languages": len(XNLI_LANGUAGES), "triplets": triplets}
        atomic_write_json(tmp / "SOURCE.json", source)
    return (
        f"xnli: {triplets} cross-lingual triplets ({examples} premises with an entailment and a contradiction"
        f" x {len(XNLI_LANGUAGES)} languages) in {out}"
    )


PREPARE = {"en-nli": prepare_en_nli, "xnli": prepare_xnli}


def prepare(name: str, root: Path, archives: dict[str, Path], digests: dict[str, str]) -> str:
    """Make training set ``name`` under ``root`` from its fetched ``archives`` (file name -> path)."""
    out = root / name
    os.makedirs(root, exist_ok=True)
    return PREPARE[name](out, archives, digests)
