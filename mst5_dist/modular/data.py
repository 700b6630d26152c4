"""The rows of each modular stage, from the line-aligned STS-B translations (``modular.stsb_dir``).

stage 1 (language L):  L's own paraphrase pairs (gold score >= ``modular.min_score``)
stage 2 (cla L):       (L sentence, pivot translation), one row per distinct pivot sentence
"""

from __future__ import annotations

from pathlib import Path

from mst5_dist.errors import ConfigError
from mst5_dist.evaluate.sts import read_stsb_csv, stsb_path
from mst5_dist.files import atomic_write_bytes


def read_stsb_train(stsb_dir: str | Path, lang: str) -> tuple[Path, list[tuple[str, str, float]]]:
    path = stsb_path(stsb_dir, lang, "train")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no STS-B train file for '{lang}' (modular.stsb_dir={stsb_dir})")
    pairs = read_stsb_csv(path, lang)
    return path, list(zip(pairs.first, pairs.second, pairs.scores))


def language_rows(stsb_dir: str | Path, lang: str, min_score: float) -> list[dict[str, str]]:
    """Stage 1: the language's own paraphrase pairs (gold score >= ``min_score``)."""
    path, rows = read_stsb_train(stsb_dir, lang)
    out = [
        {"anchor": a, "positive": b, "source_id": f"{path.name}:{i + 1}"}
        for i, (a, b, score) in enumerate(rows)
        if score >= min_score
    ]
    if not out:
        raise ConfigError(f"{path}: no pair scores >= modular.min_score={min_score}")
    return out


def parallel_rows(stsb_dir: str | Path, lang: str, pivot: str, max_rows: int | None) -> list[dict[str, str]]:
    """Stage 2: (L sentence, pivot translation) from the line-aligned STS-B translations, one row per
    distinct pivot sentence (a repeated sentence in one batch would be its own false negative)."""
    p_lang, rows = read_stsb_train(stsb_dir, lang)
    p_pivot, pivot_rows = read_stsb_train(stsb_dir, pivot)
    if len(rows) != len(pivot_rows):
        raise ConfigError(f"{p_lang} has {len(rows)} pairs but {p_pivot} has {len(pivot_rows)}: not line-aligned")
    seen: dict[str, dict[str, str]] = {}
    for i, ((a, b, s), (pa, pb, ps)) in enumerate(zip(rows, pivot_rows)):
        if abs(s - ps) > 1e-6:
            raise ConfigError(f"{p_lang}:{i + 1}: score {s} differs from {p_pivot}:{i + 1} ({ps}): not line-aligned")
        for text, pivot_text in ((a, pa), (b, pb)):
            seen.setdefault(pivot_text, {"anchor": text, "positive": pivot_text, "source_id": pivot_text})
    out = list(seen.values())
    return out[:max_rows] if max_rows is not None else out


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    """Atomic, and untouched when the content is already there (every rank may call it: identical
    bytes, and an unchanged mtime keeps the Arrow cache key stable)."""
    import json

    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    if path.is_file() and path.read_bytes() == data:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return path
