"""Semantic textual similarity: Spearman (x100) between cosine similarity and gold scores.

Readers return ``StsPairs`` (``first``, ``second``, ``scores`` and the languages of the two columns).
A malformed row raises ``EvalDataError`` naming file and line.

- ``read_stsb_csv``: stsb-multi-mt (``s1,s2,score``, CSV quoting, no header).
- ``read_sts17``: SemEval-2017 ``STS.input.trackN.xx-yy.txt`` (two tab-separated sentences) +
  ``STS.gs.trackN.xx-yy.txt`` (one score a line). Column order is not what the track name says in
  every track: in track2 ar-en (and 4b es-en, 6 tr-en) the FIRST column is English. We reorder so that
  ``first`` is always in the track name's first language (cosine is symmetric, so Spearman does not
  change; the language bookkeeping of cross-lingual analyses does). Track 6 ships 500 input lines
  for 250 gold scores; like mSimCSE's ``evaluation_xsts.py`` we score the first 250.
- ``read_jsts``: JGLUE JSTS JSON lines (``sentence1``, ``sentence2``, ``label``).
- ``read_korsts``: KorSTS TSV with header ``genre filename year id score sentence1 sentence2``.
- ``read_sick``: SICK TSV with header ``pair_ID sentence_A sentence_B relatedness_score ...``.
- ``crosslingual_stsb``: sentence 1 from language a, sentence 2 from language b, built from the
  line-aligned stsb-multi-mt translations (the gold score of both lines must agree).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mst5_dist.errors import BadInput
from mst5_dist.evaluate.embedder import encode_routed


class EvalDataError(BadInput):
    """A malformed evaluation file; the message names file and line."""


@dataclass
class StsPairs:
    first: list[str]
    second: list[str]
    scores: list[float]
    lang1: str = ""
    lang2: str = ""
    files: list[str] = field(default_factory=list)

    def head(self, n: int | None) -> StsPairs:
        """The first ``n`` pairs (all when ``n`` is None): quick runs and tests."""
        if n is None:
            return self
        return StsPairs(self.first[:n], self.second[:n], self.scores[:n], self.lang1, self.lang2, self.files)

    def __len__(self) -> int:
        return len(self.scores)


def _score(path: Path, number: int, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise EvalDataError(f"{path}:{number}: score {text!r} is not a number") from None
    if not np.isfinite(value):
        raise EvalDataError(f"{path}:{number}: score {text!r} is not a finite number")
    return value


def _nonempty(path: Path, out: StsPairs) -> StsPairs:
    if not out.scores:
        raise EvalDataError(f"{path}: no pairs")
    out.files.append(str(path))
    return out


def read_stsb_csv(path: str | Path, lang: str = "") -> StsPairs:
    path = Path(path)
    out = StsPairs([], [], [], lang, lang)
    with path.open(encoding="utf-8", newline="") as f:
        for number, cells in enumerate(csv.reader(f), start=1):
            if not cells:
                continue
            if len(cells) != 3:
                raise EvalDataError(f"{path}:{number}: expected 3 columns (s1,s2,score), got {len(cells)}")
            score = _score(path, number, cells[2])
            out.first.append(cells[0])
            out.second.append(cells[1])
            out.scores.append(score)
    return _nonempty(path, out)


def stsb_path(data_dir: str | Path, lang: str, split: str = "test") -> Path:
    return Path(data_dir) / f"stsb-{lang}-{split}.csv"


def crosslingual_stsb(data_dir: str | Path, lang1: str, lang2: str, split: str = "test") -> StsPairs:
    """Pairs (sentence 1 in ``lang1``, sentence 2 in ``lang2``) from line-aligned translations."""
    p1, p2 = stsb_path(data_dir, lang1, split), stsb_path(data_dir, lang2, split)
    a, b = read_stsb_csv(p1, lang1), read_stsb_csv(p2, lang2)
    if len(a) != len(b):
        raise EvalDataError(f"{p1} has {len(a)} pairs but {p2} has {len(b)}: the translations are not line-aligned")
    for i, (sa, sb) in enumerate(zip(a.scores, b.scores)):
        if abs(sa - sb) > 1e-6:
            raise EvalDataError(f"{p2}:{i + 1}: score {sb} differs from {p1}:{i + 1} ({sa}): not line-aligned")
    return StsPairs(a.first, b.second, a.scores, lang1, lang2, [str(p1), str(p2)])


# Languages of the (first, second) input columns as the files ship them.
STS17_TRACKS: dict[str, tuple[str, str]] = {
    "track1.ar-ar": ("ar", "ar"),
    "track2.ar-en": ("en", "ar"),
    "track3.es-es": ("es", "es"),
    "track4a.es-en": ("es", "en"),
    "track4b.es-en": ("en", "es"),
    "track5.en-en": ("en", "en"),
    "track6.tr-en": ("en", "tr"),
}
# Short names as in the papers' XSTS tables (es-en = track 4a, the SNLI-sourced subtrack).
STS17_NAMES = {
    "ar-ar": "track1.ar-ar",
    "ar-en": "track2.ar-en",
    "es-es": "track3.es-es",
    "es-en": "track4a.es-en",
    "es-en-wmt": "track4b.es-en",
    "en-en": "track5.en-en",
    "tr-en": "track6.tr-en",
}
_STS17_TRUNCATE = {"track6.tr-en": 250}


def read_sts17(data_dir: str | Path, track: str) -> StsPairs:
    """One STS17 track by short name (``ar-en``) or file name part (``track2.ar-en``)."""
    track = STS17_NAMES.get(track, track)
    if track not in STS17_TRACKS:
        raise EvalDataError(f"unknown STS17 track {track!r} (known: {', '.join(STS17_NAMES)})")
    data_dir = Path(data_dir)
    inp, gs = data_dir / f"STS.input.{track}.txt", data_dir / f"STS.gs.{track}.txt"
    first, second = [], []
    with inp.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            cells = line.rstrip("\r\n").split("\t")
            if len(cells) != 2:
                raise EvalDataError(f"{inp}:{number}: expected 2 tab-separated sentences, got {len(cells)} columns")
            first.append(cells[0])
            second.append(cells[1])
    gold: list[float | None] = []
    with gs.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            text = line.strip()
            # An empty gold line means "no gold score" in SemEval files: that pair is not scored.
            gold.append(_score(gs, number, text) if text else None)
    keep = len(gold)
    if len(first) != len(gold) and not (len(gold) == _STS17_TRUNCATE.get(track) and len(first) > keep):
        longer = inp if len(first) > len(gold) else gs
        raise EvalDataError(
            f"{inp} has {len(first)} pairs but {gs} has {len(gold)} scores: "
            f"line {min(len(first), len(gold)) + 1} of {longer} has no counterpart"
        )
    col1 = STS17_TRACKS[track][0]
    name1 = track.split(".")[1].split("-")[0]
    swap = col1 != name1  # put the track name's first language into `first`
    out = StsPairs([], [], [], *(track.split(".")[1].split("-")))
    for a, b, s in zip(first[:keep], second[:keep], gold[:keep]):
        if s is None:
            continue
        out.first.append(b if swap else a)
        out.second.append(a if swap else b)
        out.scores.append(s)
    out.files.append(str(inp))
    return _nonempty(gs, out)


def read_jsts(path: str | Path) -> StsPairs:
    path = Path(path)
    out = StsPairs([], [], [], "ja", "ja")
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalDataError(f"{path}:{number}: not JSON ({e.msg})") from None
            for key in ("sentence1", "sentence2", "label"):
                if key not in row:
                    raise EvalDataError(f"{path}:{number}: field {key!r} missing")
            out.first.append(str(row["sentence1"]))
            out.second.append(str(row["sentence2"]))
            out.scores.append(_score(path, number, str(row["label"])))
    return _nonempty(path, out)


def _read_tsv(
    path: Path, header: list[str], s1: str, s2: str, score: str, lang: str, min_columns: int | None = None
) -> StsPairs:
    out = StsPairs([], [], [], lang, lang)
    with path.open(encoding="utf-8") as f:
        head = f.readline().rstrip("\r\n").split("\t")
        if head[: len(header)] != header:
            raise EvalDataError(f"{path}:1: expected header {' '.join(header)}, got {' '.join(head)}")
        i1, i2, isc = head.index(s1), head.index(s2), head.index(score)
        # Plain split, not csv: KorSTS / SICK sentences contain unbalanced quotes.
        for number, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            cells = line.split("\t")
            if len(cells) != len(head):
                raise EvalDataError(f"{path}:{number}: expected {len(head)} tab-separated columns, got {len(cells)}")
            out.first.append(cells[i1])
            out.second.append(cells[i2])
            out.scores.append(_score(path, number, cells[isc]))
    return _nonempty(path, out)


def read_korsts(path: str | Path) -> StsPairs:
    header = ["genre", "filename", "year", "id", "score", "sentence1", "sentence2"]
    return _read_tsv(Path(path), header, "sentence1", "sentence2", "score", "ko")


def read_sick(path: str | Path) -> StsPairs:
    header = ["pair_ID", "sentence_A", "sentence_B", "relatedness_score"]
    return _read_tsv(Path(path), header, "sentence_A", "sentence_B", "relatedness_score", "en")


# ---------------------------------------------------------------- metric


def spearman_x100(a: Any, b: Any, gold: list[float]) -> float:
    """Spearman x100 between row-wise cosine(a_i, b_i) and gold (torch tensors or numpy arrays)."""
    from scipy.stats import spearmanr

    return float(spearmanr(paired_cosine(a, b), gold).statistic) * 100


def paired_cosine(a: Any, b: Any) -> np.ndarray:
    """Row-wise cosine in float64: float32 rounding turns near-equal cosines into spurious ties."""
    # torch tensors or arrays (no torch import here: `mst5 --help` should not pay for it)
    a = (a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)).astype(np.float64)
    b = (b.detach().cpu().numpy() if hasattr(b, "detach") else np.asarray(b)).astype(np.float64)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return np.einsum("ij,ij->i", a, b) / norms


def embed_pairs(embedder: Any, pairs: StsPairs, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of both columns; each distinct sentence is embedded once (per language, for a
    modular model: monolingual data goes through the language module, cross-lingual through CLA)."""
    if getattr(embedder, "routes_by_language", False) and pairs.lang1 != pairs.lang2:
        a = _embed_unique(embedder, pairs.first, batch_size, pairs.lang1, True)
        b = _embed_unique(embedder, pairs.second, batch_size, pairs.lang2, True)
        return a, b
    emb = _embed_unique(embedder, pairs.first + pairs.second, batch_size, pairs.lang1, False)
    return emb[: len(pairs.first)], emb[len(pairs.first) :]


def _embed_unique(embedder: Any, texts: list[str], batch_size: int, lang: str, cross: bool) -> np.ndarray:
    uniq = list(dict.fromkeys(texts))
    emb = encode_routed(embedder, uniq, batch_size, lang, cross)  # the plain call for unrouted embedders
    row = {t: i for i, t in enumerate(uniq)}
    return emb[[row[t] for t in texts]]


def sts_scores(embedder: Any, pairs: StsPairs, batch_size: int = 64) -> dict[str, Any]:
    """Spearman and Pearson (x100) of cosine vs gold, with the pair count and languages."""
    from scipy.stats import pearsonr, spearmanr

    a, b = embed_pairs(embedder, pairs, batch_size)
    cos = paired_cosine(a, b)
    return {
        "spearman": float(spearmanr(cos, pairs.scores).statistic) * 100,
        "pearson": float(pearsonr(cos, pairs.scores).statistic) * 100,
        "n": len(pairs),
        "langs": f"{pairs.lang1}-{pairs.lang2}",
        "cosine": cos,  # kept for language bias; dropped before writing results.json
    }


def evaluate_sts(encoder, pairs: StsPairs, batch_size: int = 64) -> float:
    """Spearman x100 of the encoder's cosine similarities. Runs the same forwards on every rank
    (under ZeRO-3 each forward gathers parameters from all ranks, so rank 0 alone would hang)."""
    a = encoder.encode(pairs.first, batch_size=batch_size)
    b = encoder.encode(pairs.second, batch_size=batch_size)
    return spearman_x100(a, b, pairs.scores)
