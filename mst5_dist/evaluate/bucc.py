"""BUCC 2018 bitext mining (files ``{xx}-en.{split}.{xx,en}`` with ``ID<TAB>sentence`` lines and
``{xx}-en.{split}.gold`` with ``XX_ID<TAB>EN_ID`` lines), following LASER / XTREME ``mine_bitext``:

1. Each side is reduced to its distinct sentences (a sentence that occurs under several ids cannot be
   mapped back to one id and is dropped from the candidates, as XTREME's ``read_sent2id`` does).
2. Ratio margin with k=4: ``score(x, y) = cos(x, y) / ((mean_kNN(x) + mean_kNN(y)) / 2)`` where
   ``mean_kNN(x)`` is the mean cosine of x to its k nearest neighbours on the other side.
3. "max" retrieval: each source sentence proposes its best-scoring candidate among its k nearest
   targets (forward) and each target its best source (backward); all proposals are sorted by score
   and accepted greedily one-to-one (a sentence already used on either side is skipped).
4. Threshold: the candidate list sorted by score; the F1 against gold is computed at every cut and the
   threshold set halfway between the score at the best cut and the next one. Precision, recall and
   F1 (x100) of the candidates scoring >= threshold are reported.

When the threshold is tuned on the split it is evaluated on, the result is an ORACLE number (the
protocol of mSimCSE and the m-ST5 tables); ``threshold=`` transfers one tuned elsewhere, and the
output says which (``threshold_protocol``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mst5_dist.evaluate.embedder import encode_routed
from mst5_dist.evaluate.sts import EvalDataError
from mst5_dist.evaluate.tatoeba import knn


@dataclass
class BuccSplit:
    src_ids: list[str]
    src_texts: list[str]
    trg_ids: list[str]
    trg_texts: list[str]
    gold: set[tuple[str, str]]
    files: list[str]


def _read_ids(path: Path) -> tuple[list[str], list[str]]:
    ids, texts = [], []
    with path.open(encoding="utf-8", newline="") as f:
        for number, line in enumerate(f, start=1):
            cells = line.rstrip("\r\n").split("\t")
            if len(cells) != 2 or not cells[0]:
                raise EvalDataError(f"{path}:{number}: expected 'ID<TAB>sentence', got {len(cells)} columns")
            ids.append(cells[0])
            texts.append(cells[1].strip())
    if not ids:
        raise EvalDataError(f"{path}: no sentences")
    return ids, texts


def read_bucc(data_dir: str | Path, lang: str = "zh", split: str = "dev", *, gold: bool = True) -> BuccSplit:
    base = Path(data_dir) / f"{lang}-en.{split}"
    src_path, trg_path, gold_path = (base.with_name(f"{base.name}.{ext}") for ext in (lang, "en", "gold"))
    src_ids, src_texts = _read_ids(src_path)
    trg_ids, trg_texts = _read_ids(trg_path)
    pairs: set[tuple[str, str]] = set()
    files = [str(src_path), str(trg_path)]
    if gold:
        known_src, known_trg = set(src_ids), set(trg_ids)
        with gold_path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                cells = line.strip().split("\t")
                if len(cells) != 2:
                    raise EvalDataError(
                        f"{gold_path}:{number}: expected '{lang.upper()}_ID<TAB>EN_ID', got {len(cells)} columns"
                    )
                if cells[0] not in known_src or cells[1] not in known_trg:
                    raise EvalDataError(
                        f"{gold_path}:{number}: id pair {cells} not in {src_path.name} / {trg_path.name}"
                    )
                pairs.add((cells[0], cells[1]))
        files.append(str(gold_path))
    return BuccSplit(src_ids, src_texts, trg_ids, trg_texts, pairs, files)


def mine(x: np.ndarray, y: np.ndarray, k: int = 4) -> list[tuple[int, int, float]]:
    """Ratio-margin "max" retrieval, greedy one-to-one: (source row, target row, score), best first."""
    fwd_sim, fwd_ind = knn(x, y, k)
    bwd_sim, bwd_ind = knn(y, x, k)
    fwd_mean, bwd_mean = fwd_sim.mean(axis=1), bwd_sim.mean(axis=1)
    fwd_scores = fwd_sim / ((fwd_mean[:, None] + bwd_mean[fwd_ind]) / 2)
    bwd_scores = bwd_sim / ((bwd_mean[:, None] + fwd_mean[bwd_ind]) / 2)
    fwd_best = fwd_ind[np.arange(len(x)), fwd_scores.argmax(axis=1)]
    bwd_best = bwd_ind[np.arange(len(y)), bwd_scores.argmax(axis=1)]
    src = np.concatenate([np.arange(len(x)), bwd_best])
    trg = np.concatenate([fwd_best, np.arange(len(y))])
    scores = np.concatenate([fwd_scores.max(axis=1), bwd_scores.max(axis=1)])
    out, seen_src, seen_trg = [], set(), set()
    for i in np.argsort(-scores, kind="stable"):
        s, t = int(src[i]), int(trg[i])
        if s in seen_src or t in seen_trg:
            continue
        seen_src.add(s)
        seen_trg.add(t)
        if scores[i] > 0:  # LASER's default threshold 0
            out.append((s, t, float(scores[i])))
    return out


def _unique(ids: list[str], texts: list[str]) -> tuple[list[str], dict[str, str]]:
    """Distinct texts in first-seen order, and text -> id for texts that occur under one id only."""
    uniq = list(dict.fromkeys(texts))
    first_id: dict[str, str] = {}
    repeated = set()
    for i, t in zip(ids, texts):
        if t in first_id:
            repeated.add(t)
        else:
            first_id[t] = i
    return uniq, {t: i for t, i in first_id.items() if t not in repeated}


def candidates_by_id(split: BuccSplit, x: np.ndarray, y: np.ndarray, k: int = 4) -> dict[tuple[str, str], float]:
    """Mined pairs as (source id, target id) -> score; x, y embed the distinct texts of each side."""
    src_uniq, src_id = _unique(split.src_ids, split.src_texts)
    trg_uniq, trg_id = _unique(split.trg_ids, split.trg_texts)
    out: dict[tuple[str, str], float] = {}
    for s, t, score in mine(x, y, k):
        a, b = src_uniq[s], trg_uniq[t]
        if a in src_id and b in trg_id:
            key = (src_id[a], trg_id[b])
            out[key] = max(score, out.get(key, score))
    return out


def best_threshold(candidates: dict[tuple[str, str], float], gold: set[tuple[str, str]]) -> float:
    """The score cut of best F1, halfway to the next candidate's score (XTREME ``bucc_optimize``)."""
    items = sorted(candidates.items(), key=lambda kv: -kv[1])
    n_correct, best_f1, threshold = 0, 0.0, 0.0
    for n_extract, (pair, score) in enumerate(items, start=1):
        n_correct += pair in gold
        if n_correct:
            p, r = n_correct / n_extract, n_correct / len(gold)
            f1 = 2 * p * r / (p + r)
            if f1 > best_f1:
                best_f1 = f1
                # XTREME indexes items[i + 1] and crashes on the last item; the score itself is the cut there.
                nxt = items[n_extract][1] if n_extract < len(items) else score
                threshold = (score + nxt) / 2
    return threshold


def prf(candidates: dict[tuple[str, str], float], gold: set[tuple[str, str]], threshold: float) -> dict[str, float]:
    extracted = {pair for pair, score in candidates.items() if score >= threshold}
    correct = len(extracted & gold)
    p = correct / len(extracted) if extracted else 0.0
    r = correct / len(gold) if gold else 0.0
    f1 = 2 * p * r / (p + r) if correct else 0.0
    return {
        "precision": p * 100,
        "recall": r * 100,
        "f1": f1 * 100,
        "n_extracted": len(extracted),
        "n_correct": correct,
    }


def subsample(data: BuccSplit, n_other: int) -> BuccSplit:
    """All sentences of gold pairs plus the first ``n_other`` non-gold sentences of each side, in file order."""
    gold_src, gold_trg = {a for a, _ in data.gold}, {b for _, b in data.gold}

    def keep(ids: list[str], texts: list[str], gold_ids: set[str]) -> tuple[list[str], list[str]]:
        rows, others = [], 0
        for i, t in zip(ids, texts):
            if i in gold_ids or others < n_other:
                others += i not in gold_ids
                rows.append((i, t))
        return [i for i, _ in rows], [t for _, t in rows]

    src_ids, src_texts = keep(data.src_ids, data.src_texts, gold_src)
    trg_ids, trg_texts = keep(data.trg_ids, data.trg_texts, gold_trg)
    return BuccSplit(src_ids, src_texts, trg_ids, trg_texts, set(data.gold), data.files)


def evaluate_bucc(
    embedder: Any,
    data_dir: str | Path,
    lang: str = "zh",
    split: str = "dev",
    *,
    batch_size: int = 64,
    k: int = 4,
    threshold: float | None = None,
    threshold_source: str | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """F1 / precision / recall of mining ``lang``-en on ``split``.

    ``threshold=None`` tunes it on this split's gold (oracle); otherwise it is transferred and
    ``threshold_source`` names where it came from. ``limit`` keeps every gold sentence plus the first
    N others of each side (``subsample``): a quicker, easier version for tests.
    """
    data = read_bucc(data_dir, lang, split)
    if limit is not None:
        data = subsample(data, limit)
    src_uniq, _ = _unique(data.src_ids, data.src_texts)
    trg_uniq, _ = _unique(data.trg_ids, data.trg_texts)
    x = encode_routed(embedder, src_uniq, batch_size, lang, cross_lingual=True)
    y = encode_routed(embedder, trg_uniq, batch_size, "en", cross_lingual=True)
    cands = candidates_by_id(data, x, y, k)
    tuned = threshold is None
    thr = best_threshold(cands, data.gold) if tuned else float(threshold)
    out: dict[str, Any] = {
        "pair": f"{lang}-en",
        "split": split,
        **prf(cands, data.gold, thr),
        "threshold": thr,
        "threshold_protocol": (
            f"oracle: tuned on the evaluated split ({split})"
            if tuned
            else f"transferred from {threshold_source or 'a given value'}"
        ),
        "n_gold": len(data.gold),
        "n_source": len(data.src_ids),
        "n_target": len(data.trg_ids),
        "protocol": {"margin": "ratio", "k": k, "retrieval": "max", "one_to_one": "greedy", "limit": limit},
        "_files": data.files,  # for the report's data fingerprints; dropped before results.json
    }
    return out
