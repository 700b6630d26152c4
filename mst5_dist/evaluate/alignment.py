"""Cross-lingual alignment diagnostics.

**Language bias** (Modular Sentence Encoders, Huang et al. 2024): given bilingual STS datasets
D_1..D_m (each a set of pairs with gold scores g and model cosines c), with
``rho(D) = Spearman(c over D, g over D) * 100``,

    bias = (1/m) * sum_i [ rho(D_i) - rho(D_1 u ... u D_m) ]

i.e. the mean drop from each dataset's own Spearman to the Spearman of all pairs pooled. An encoder
whose cosines depend on the language pair (e.g. systematically higher for same-language pairs) ranks
well inside each dataset but badly once the datasets are mixed: a large positive bias. 0 means the
cosine scale is the same for every language combination.

**RSIM** (representational similarity of a parallel corpus x_1..x_n <-> y_1..y_n):

    RSIM = Pearson( [cos(x_i, x_j)]_{i<j}, [cos(y_i, y_j)]_{i<j} )

over all n(n-1)/2 pairs i<j: 1 when the two languages' embedding spaces have the same geometry.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mst5_dist.evaluate.embedder import unit_rows


def language_bias(datasets: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """``datasets``: name -> (cosines, gold scores). Spearmans are x100; ``bias`` is the mean drop."""
    from scipy.stats import spearmanr

    if len(datasets) < 2:
        raise ValueError("language bias needs at least two datasets")
    own = {name: float(spearmanr(c, g).statistic) * 100 for name, (c, g) in datasets.items()}
    cos = np.concatenate([np.asarray(c, dtype=np.float64) for c, _ in datasets.values()])
    gold = np.concatenate([np.asarray(g, dtype=np.float64) for _, g in datasets.values()])
    pooled = float(spearmanr(cos, gold).statistic) * 100
    return {
        "bias": float(np.mean([v - pooled for v in own.values()])),
        "pooled_spearman": pooled,
        "own_spearman": own,
        "n_pairs": len(gold),
    }


def rsim(x: np.ndarray, y: np.ndarray, max_sentences: int | None = None) -> float:
    """Pearson of the i<j cosine matrices of two parallel embedding sets (first ``max_sentences`` rows)."""
    from scipy.stats import pearsonr

    if len(x) != len(y):
        raise ValueError(f"RSIM needs a parallel corpus: {len(x)} vs {len(y)} rows")
    if max_sentences is not None:
        x, y = x[:max_sentences], y[:max_sentences]
    if len(x) < 3:
        raise ValueError("RSIM needs at least 3 parallel sentences")
    x, y = unit_rows(x), unit_rows(y)
    iu = np.triu_indices(len(x), k=1)
    return float(pearsonr((x @ x.T)[iu], (y @ y.T)[iu]).statistic)
