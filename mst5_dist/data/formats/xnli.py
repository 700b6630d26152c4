"""``xnli``: aligned multilingual NLI, a folder of ``{split}-{lang}.tsv`` files (XTREME layout) or of
``multinli.{split}.{lang}.tsv`` files (XNLI-MT 1.0, the translated MultiNLI training set: ``xnli_mt``)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from mst5_dist.data.formats.base import Format, register
from mst5_dist.data.formats.xnli_mt import mt_languages, read_xnli_mt
from mst5_dist.data.rows import NLI_LABELS, ReadReport, RowChecker, gather, lines, open_existing
from mst5_dist.errors import DataError

# One checked TSV line: (line number, premise, hypothesis, label), or None for a bad line.
Line = tuple[int, str, str, str] | None


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
    return gather(skip_bad, lambda check: _xnli_rows(folder, split, languages, cross_lingual, seed, check))


def _read_xnli_file(path: Path, check: RowChecker) -> list[Line]:
    rows: list[Line] = []
    for number, text in lines(open_existing(path)):
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


def _aligned_tables(folder: Path, split: str, languages: list[str] | None, check: RowChecker) -> dict[str, list[Line]]:
    """Each language's checked lines; the files must be line-aligned."""
    folder = open_existing(folder, folder=True)
    if not languages:
        languages = sorted(p.stem.split("-", 1)[1] for p in folder.glob(f"{split}-*.tsv"))
    if not languages:
        raise DataError(f"{folder}: no {split}-<lang>.tsv (XTREME) or multinli.{split}.<lang>.tsv (XNLI-MT) files")
    tables = {lang: _read_xnli_file(folder / f"{split}-{lang}.tsv", check) for lang in languages}
    sizes = {lang: len(t) for lang, t in tables.items()}
    if len(set(sizes.values())) != 1:
        raise DataError(f"{folder}: {split} files are not line-aligned (rows per language: {sizes})")
    return tables


def _premise_groups(pivot: list[Line]) -> list[list[int]]:
    """Line indices grouped by consecutive equal pivot premises: each group is one source example."""
    groups: list[list[int]] = []
    last = None
    for i, row in enumerate(pivot):
        if row is None:
            continue
        if row[1] != last:
            groups.append([])
            last = row[1]
        groups[-1].append(i)
    return groups


def _by_label(
    idx: list[int], tables: dict[str, list[Line]], folder: Path, split: str, check: RowChecker
) -> dict[str, list[int]]:
    """A group's lines that every language has, by their (agreeing) label."""
    languages = list(tables)
    pivot = languages[0]
    by_label: dict[str, list[int]] = {k: [] for k in NLI_LABELS}
    for i in idx:
        if all(tables[lang][i] is not None for lang in languages):
            labels = {tables[lang][i][3] for lang in languages}
            if len(labels) != 1:
                lang = next(lang for lang in languages if tables[lang][i][3] != tables[pivot][i][3])
                check.fail(folder / f"{split}-{lang}.tsv", tables[lang][i][0], "label", f"disagrees with {pivot}")
                continue
            by_label[labels.pop()].append(i)
    return by_label


def _xnli_rows(
    folder: Path, split: str, languages: list[str] | None, cross_lingual: bool, seed: int, check: RowChecker
) -> list[dict[str, Any]]:
    if not any(open_existing(folder, folder=True).glob(f"{split}-*.tsv")) and mt_languages(folder, split):
        return read_xnli_mt(folder, split, languages or [], cross_lingual, seed, check)
    tables = _aligned_tables(folder, split, languages, check)
    languages = list(tables)
    rng = random.Random(seed)
    rows = []
    for g, idx in enumerate(_premise_groups(tables[languages[0]])):
        by_label = _by_label(idx, tables, folder, split, check)
        if not by_label["entailment"] or not by_label["contradiction"]:
            continue
        source = f"xnli-{split}:{g}"
        for lang in languages:
            ent, con = rng.choice(by_label["entailment"]), rng.choice(by_label["contradiction"])
            lang_pos = rng.choice(languages) if cross_lingual else lang
            lang_neg = rng.choice(languages) if cross_lingual else lang
            rows.append(
                {
                    "anchor": tables[lang][ent][1],
                    "positive": tables[lang_pos][ent][2],
                    "negative": tables[lang_neg][con][2],
                    "source_id": source,
                }
            )
    return rows


@register("xnli")
class Xnli(Format):
    uses_seed = True  # the drawn hypotheses (and, cross-lingual, their languages) follow train.seed

    def read(self, source, cfg, seed, need_negative, check):
        return _xnli_rows(source, cfg.split, cfg.languages, cfg.cross_lingual, seed, check)
