"""Tatoeba bitext retrieval (LASER v1 files ``tatoeba.{xxx}-eng.{xxx,eng}``, line i of one side is
the translation of line i of the other).

Accuracy (XTREME / mSimCSE protocol): for each xx sentence the English sentence of highest cosine
similarity is retrieved; it is correct iff it is the line-aligned one (index match, so a duplicate
English sentence at another line counts as an error, as in XTREME). ``xx2en`` and ``en2xx`` are both
reported, with their mean, x100, per language and averaged over named sets:

- Tatoeba-14: ar bg zh de el fr hi ru es sw th tr ur vi (the XNLI languages but en)
- Tatoeba-36: those plus af bn et eu fi he hu id it jv ja ka kk ko ml mr nl fa pt ta te tl (XTREME)
- Table 2 of the m-ST5 paper (low-resource focus): hi fr de af te tl ga ka am sw

Optional xSIM (LASER): ratio-margin scoring with k=4,
``margin(x, y) = cos(x, y) / ((mean_{z in NN_k(x)} cos(x, z) + mean_{z in NN_k(y)} cos(y, z)) / 2)``,
the best of the k nearest neighbours of x by that score is retrieved, reported as an error rate (%).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mst5_dist.evaluate.embedder import encode_routed, unit_rows
from mst5_dist.evaluate.sts import EvalDataError

ISO_TO_LASER: dict[str, str] = {
    "af": "afr", "am": "amh", "ar": "ara", "bg": "bul", "bn": "ben", "de": "deu", "el": "ell",
    "es": "spa", "et": "est", "eu": "eus", "fa": "pes", "fi": "fin", "fr": "fra", "ga": "gle",
    "he": "heb", "hi": "hin", "hu": "hun", "id": "ind", "it": "ita", "ja": "jpn", "jv": "jav",
    "ka": "kat", "kk": "kaz", "ko": "kor", "ml": "mal", "mr": "mar", "nl": "nld", "pt": "por",
    "ru": "rus", "sw": "swh", "ta": "tam", "te": "tel", "th": "tha", "tl": "tgl", "tr": "tur",
    "ur": "urd", "vi": "vie", "zh": "cmn",
}  # fmt: skip
LASER_TO_ISO = {v: k for k, v in ISO_TO_LASER.items()}

TATOEBA_14 = ["ar", "bg", "zh", "de", "el", "fr", "hi", "ru", "es", "sw", "th", "tr", "ur", "vi"]
TATOEBA_36 = [*TATOEBA_14, "af", "bn", "et", "eu", "fi", "he", "hu", "id", "it", "jv", "ja", "ka",
              "kk", "ko", "ml", "mr", "nl", "fa", "pt", "ta", "te", "tl"]  # fmt: skip
TABLE2 = ["hi", "fr", "de", "af", "te", "tl", "ga", "ka", "am", "sw"]
NAMED_SETS = {"tatoeba14": TATOEBA_14, "tatoeba36": TATOEBA_36, "table2": TABLE2}


def laser_code(lang: str) -> str:
    """ISO 639-1 (``de``) or LASER's 3-letter name (``deu``) -> LASER name."""
    if lang in ISO_TO_LASER:
        return ISO_TO_LASER[lang]
    if lang in LASER_TO_ISO:
        return lang
    raise EvalDataError(f"unknown Tatoeba language {lang!r} (ISO code like 'de' or LASER name like 'deu')")


def iso_code(lang: str) -> str:
    return LASER_TO_ISO.get(lang, lang)


def expand_languages(spec: str | list[str]) -> list[str]:
    """``"tatoeba36,table2"`` / ``"de,fr"`` / ``"all"`` -> ISO codes, order kept, duplicates dropped."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in (i.strip() for i in items if i.strip()):
        if item == "all":
            out += [*TATOEBA_36, *TABLE2]
        elif item in NAMED_SETS:
            out += NAMED_SETS[item]
        else:
            out.append(iso_code(laser_code(item)))
    return list(dict.fromkeys(out))


def tatoeba_files(data_dir: str | Path, lang: str) -> tuple[Path, Path]:
    code = laser_code(lang)
    base = Path(data_dir) / f"tatoeba.{code}-eng"
    return base.with_name(base.name + f".{code}"), base.with_name(base.name + ".eng")


def _lines(path: Path) -> list[str]:
    with path.open(encoding="utf-8", newline="") as f:
        return [line.rstrip("\r\n") for line in f]


def read_tatoeba(data_dir: str | Path, lang: str) -> tuple[list[str], list[str]]:
    """(xx sentences, English sentences), line-aligned."""
    src_path, eng_path = tatoeba_files(data_dir, lang)
    src, eng = _lines(src_path), _lines(eng_path)
    if len(src) != len(eng):
        longer = src_path if len(src) > len(eng) else eng_path
        raise EvalDataError(
            f"{src_path} has {len(src)} lines but {eng_path} has {len(eng)}: "
            f"line {min(len(src), len(eng)) + 1} of {longer} has no translation"
        )
    if not src:
        raise EvalDataError(f"{src_path}: no sentences")
    return src, eng


def knn(x: np.ndarray, y: np.ndarray, k: int, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity and index of the k nearest rows of y for each row of x (best first).

    Chunked so a BUCC-sized (10^4 x 10^4) problem never holds the whole similarity matrix.
    """
    x, y = unit_rows(x), unit_rows(y)
    k = min(k, y.shape[0])
    sims = np.empty((x.shape[0], k), dtype=np.float32)
    inds = np.empty((x.shape[0], k), dtype=np.int64)
    for start in range(0, x.shape[0], chunk):
        s = x[start : start + chunk] @ y.T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < s.shape[1] else np.tile(np.arange(k), (len(s), 1))
        psim = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-psim, axis=1, kind="stable")
        inds[start : start + len(s)] = np.take_along_axis(part, order, axis=1)
        sims[start : start + len(s)] = np.take_along_axis(psim, order, axis=1)
    return sims, inds


def top1_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows i of x whose most cosine-similar row of y is row i (ties: lowest index)."""
    sim = unit_rows(x) @ unit_rows(y).T
    return float(np.mean(sim.argmax(axis=1) == np.arange(len(x))))


def ratio_margin_scores(
    x: np.ndarray, y: np.ndarray, k: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Forward candidates of x in y and their ratio-margin scores; also both k-NN mean similarities.

    Returns (candidate indices (n_x, k), margin scores (n_x, k), mean k-NN cos of x in y (n_x,),
    mean k-NN cos of y in x (n_y,)).
    """
    fwd_sim, fwd_ind = knn(x, y, k)
    bwd_sim, _ = knn(y, x, k)
    fwd_mean, bwd_mean = fwd_sim.mean(axis=1), bwd_sim.mean(axis=1)
    scores = fwd_sim / ((fwd_mean[:, None] + bwd_mean[fwd_ind]) / 2)
    return fwd_ind, scores, fwd_mean, bwd_mean


def margin_error_rate(x: np.ndarray, y: np.ndarray, k: int = 4) -> float:
    """xSIM: % of rows i of x whose best ratio-margin candidate in y is not row i."""
    ind, scores, _, _ = ratio_margin_scores(x, y, k)
    best = ind[np.arange(len(x)), scores.argmax(axis=1)]
    return float(np.mean(best != np.arange(len(x)))) * 100


def evaluate_tatoeba(
    embedder: Any,
    data_dir: str | Path,
    languages: list[str] | str = "all",
    *,
    batch_size: int = 64,
    margin: bool = False,
    margin_k: int = 4,
    limit: int | None = None,
    keep_embeddings: bool = False,
) -> dict[str, Any]:
    """Per-language accuracies (x100) and the named-set averages (over the languages evaluated)."""
    langs = expand_languages(languages)
    per_lang: dict[str, Any] = {}
    embeddings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for lang in langs:
        src, eng = read_tatoeba(data_dir, lang)
        src, eng = src[:limit], eng[:limit]
        x = encode_routed(embedder, src, batch_size, lang, cross_lingual=True)
        y = encode_routed(embedder, eng, batch_size, "en", cross_lingual=True)
        row = {"laser": laser_code(lang), "n": len(src)}
        row["xx2en"] = top1_accuracy(x, y) * 100
        row["en2xx"] = top1_accuracy(y, x) * 100
        row["mean"] = (row["xx2en"] + row["en2xx"]) / 2
        if margin:
            row["xsim_error_xx2en"] = margin_error_rate(x, y, margin_k)
            row["xsim_error_en2xx"] = margin_error_rate(y, x, margin_k)
        per_lang[lang] = row
        if keep_embeddings:
            embeddings[lang] = (x, y)
    out: dict[str, Any] = {
        "protocol": {
            "scoring": "top-1 cosine, index match (XTREME)",
            "margin": {"type": "ratio", "k": margin_k} if margin else None,
            "limit": limit,
        },
        "languages": per_lang,
        "averages": set_averages(per_lang),
    }
    if keep_embeddings:
        out["_embeddings"] = embeddings
    return out


def set_averages(per_lang: dict[str, Any]) -> dict[str, Any]:
    """Mean accuracy over each named set; ``complete`` is false when some of its languages are missing."""
    out = {}
    for name, members in NAMED_SETS.items():
        have = [lang for lang in members if lang in per_lang]
        if not have:
            continue
        out[name] = {
            "mean": float(np.mean([per_lang[lang]["mean"] for lang in have])),
            "xx2en": float(np.mean([per_lang[lang]["xx2en"] for lang in have])),
            "en2xx": float(np.mean([per_lang[lang]["en2xx"] for lang in have])),
            "n_languages": len(have),
            "complete": len(have) == len(members),
            "missing": [lang for lang in members if lang not in per_lang],
        }
    return out
