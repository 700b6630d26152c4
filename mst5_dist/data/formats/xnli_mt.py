"""The XNLI-MT 1.0 layout of ``data.format: xnli`` (no format of its own: ``xnli`` picks it when the
folder holds ``multinli.{split}.{lang}.tsv`` files).

XNLI-MT 1.0 (``XNLI-MT-1.0.zip``, folder ``XNLI-MT-1.0/multinli/``) publishes the MultiNLI training
set machine-translated into the 15 XNLI languages: ``multinli.train.{lang}.tsv``, a header line
``premise<TAB>hypo<TAB>label``, no quoting, labels ``entailment`` / ``neutral`` / ``contradictory``,
line i the same example in every language. Unlike the XTREME dev files, the hypotheses of one
premise are not on consecutive lines (MultiNLI train is shuffled), so the examples are grouped by the
pivot language's premise text over the whole file.

The file is read twice: first the labels and which lines are usable in every language (and the
premise groups of the pivot), then, after the mSimCSE draws, only the sentences the triplets use.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from mst5_dist.data.rows import NLI_LABELS, ReadReport, RowChecker, lines
from mst5_dist.errors import DataError

HEADER = ("premise", "hypo", "label")
LABELS = {
    "entailment": "entailment",
    "neutral": "neutral",
    "contradictory": "contradiction",
    "contradiction": "contradiction",
}


def mt_file(folder: Path, split: str, lang: str) -> Path:
    return folder / f"multinli.{split}.{lang}.tsv"


def mt_languages(folder: Path, split: str) -> list[str]:
    prefix = f"multinli.{split}."
    return sorted(p.name[len(prefix) : -len(".tsv")] for p in folder.glob(f"{prefix}*.tsv"))


def _cells(path: Path, check: RowChecker):
    """(index, line number, premise, hypothesis, label) of each data line; None fields when bad.
    The index counts data lines (the header is not one): it aligns the languages."""
    index = -1
    for number, text in lines(path):
        cells = text.lstrip("\ufeff").split("\t")
        if index == -1:
            index = 0
            if tuple(c.strip() for c in cells) != HEADER:
                check.fail(path, number, None, f"expected the XNLI-MT header {'<TAB>'.join(HEADER)!r}")
            continue
        label = cells[2].strip() if len(cells) > 2 else ""
        yield index, number, cells, LABELS.get(label, label)
        index += 1


def _labels(path: Path, check: RowChecker) -> list[str | None]:
    """Each data line's label, or None for a line that cannot be used (empty label: skipped, as
    every XNLI-MT reader does; a bad sentence or unknown label: reported through ``check``)."""
    out: list[str | None] = []
    for _, number, cells, label in _cells(path, check):
        ok = len(cells) >= 3 and label != ""
        if len(cells) < 3:
            check.fail(path, number, HEADER[len(cells)], "missing (XNLI-MT rows are premise<TAB>hypo<TAB>label)")
        elif label and label not in NLI_LABELS:
            check.fail(path, number, "label", f"unknown label {label!r} (expected entailment, neutral, contradictory)")
            ok = False
        elif label:
            ok = check.text(path, number, "premise", cells[0]) is not None
            ok = ok and check.text(path, number, "hypo", cells[1]) is not None
        out.append(label if ok else None)
    return out


def _usable(folder: Path, split: str, languages: list[str], check: RowChecker) -> list[str | None]:
    """The label of each line usable in every language (None elsewhere); the files must align."""
    tables = {lang: _labels(mt_file(folder, split, lang), check) for lang in languages}
    sizes = {lang: len(t) for lang, t in tables.items()}
    if len(set(sizes.values())) != 1:
        raise DataError(f"{folder}: multinli.{split} files are not line-aligned (rows per language: {sizes})")
    pivot = tables[languages[0]]
    usable: list[str | None] = []
    for i, label in enumerate(pivot):
        others = {tables[lang][i] for lang in languages}
        if None in others:
            usable.append(None)
            continue
        if len(others) != 1:
            lang = next(lang for lang in languages if tables[lang][i] != label)
            check.fail(mt_file(folder, split, lang), i + 2, "label", f"disagrees with {languages[0]}")
            usable.append(None)
            continue
        usable.append(label)
    return usable


def mt_groups(folder: Path, split: str, languages: list[str], check: RowChecker) -> list[dict[str, list[int]]]:
    """The examples: the usable lines of each pivot premise (first language of ``languages``) by
    label, in order of first appearance, only those with an entailment and a contradiction."""
    usable = _usable(folder, split, languages, check)
    groups: dict[str, dict[str, list[int]]] = {}
    # The pivot's lines were checked in the first pass: a throwaway report here.
    for i, _, cells, _ in _cells(mt_file(folder, split, languages[0]), RowChecker(ReadReport(), True)):
        if usable[i] is not None:
            groups.setdefault(cells[0].strip(), {k: [] for k in NLI_LABELS})[usable[i]].append(i)
    return [g for g in groups.values() if g["entailment"] and g["contradiction"]]


def order_languages(languages: list[str]) -> list[str]:
    """The pivot (``en`` when present) first, then the others in their given order."""
    return (["en"] if "en" in languages else []) + [lang for lang in languages if lang != "en"]


def _texts(folder: Path, split: str, lang: str, premises: set[int], hypos: set[int]) -> dict[tuple[int, int], str]:
    """The wanted sentences of one language: (line index, 0 premise | 1 hypothesis) -> text."""
    out: dict[tuple[int, int], str] = {}
    for i, _, cells, _ in _cells(mt_file(folder, split, lang), RowChecker(ReadReport(), True)):
        if i in premises:
            out[(i, 0)] = cells[0].strip()
        if i in hypos:
            out[(i, 1)] = cells[1].strip()
    return out


def read_xnli_mt(
    folder: Path, split: str, languages: list[str], cross_lingual: bool, seed: int, check: RowChecker
) -> list[dict[str, Any]]:
    """mSimCSE triplets from XNLI-MT: for each example and each language L, the premise in L, an
    entailment and a contradiction hypothesis, each in L or (``cross_lingual``) in a drawn language."""
    languages = order_languages(languages or mt_languages(folder, split))
    if not languages:
        raise DataError(f"{folder}: no multinli.{split}.<lang>.tsv files")
    rng = random.Random(seed)
    draws = []
    for g, group in enumerate(mt_groups(folder, split, languages, check)):
        for lang in languages:
            ent, con = rng.choice(group["entailment"]), rng.choice(group["contradiction"])
            lang_pos = rng.choice(languages) if cross_lingual else lang
            lang_neg = rng.choice(languages) if cross_lingual else lang
            draws.append((g, lang, ent, con, lang_pos, lang_neg))
    wanted = {lang: (set(), set()) for lang in languages}
    for _, lang, ent, con, lang_pos, lang_neg in draws:
        wanted[lang][0].add(ent)
        wanted[lang_pos][1].add(ent)
        wanted[lang_neg][1].add(con)
    texts = {lang: _texts(folder, split, lang, *wanted[lang]) for lang in languages}
    return [
        {
            "anchor": texts[lang][(ent, 0)],
            "positive": texts[lang_pos][(ent, 1)],
            "negative": texts[lang_neg][(con, 1)],
            "source_id": f"xnli-mt-{split}:{g}",
        }
        for g, lang, ent, con, lang_pos, lang_neg in draws
    ]


def count_xnli_mt(folder: Path, split: str = "train", languages: list[str] | None = None) -> tuple[int, int]:
    """(examples, triplets) that ``read_xnli_mt`` gives: premises with an entailment and a
    contradiction, times the languages (what ``mst5 data download xnli`` prints)."""
    languages = order_languages(languages or mt_languages(folder, split))
    groups = mt_groups(folder, split, languages, RowChecker(ReadReport(), True))
    return len(groups), len(groups) * len(languages)
