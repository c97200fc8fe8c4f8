"""Pearson correlation, and factual correctness by it: does a synthetic image show what its prompt says?

* :func:`pearson` / :func:`pearson_test`: r (and its two-sided p) of two 1-D arrays, NaN pairs
  dropped, NaN when either side is constant. The one Pearson of the project (downstream
  regression and fairness use it too).
* :func:`compute_score_correlation` (the paper's correctness measure): for N prompts, a 14-class
  CXR classifier's scores on the real image and on the synthetic image generated from that
  image's report, flattened over N x 14, then correlated. Columns the classifier does not
  predict (NaN) are left out. Per-class correlations are reported too. (The other view of
  correctness, AUROC of the synthetic scores against the prompts' labels, is
  :func:`chexgen.evaluation.metrics.classification.compute_per_class_auroc`.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from chexgen.data.labels import LABELS

__all__ = ["pearson", "pearson_test", "compute_score_correlation", "ScoreCorrelation"]


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r of two 1-D arrays (NaN pairs dropped; NaN when either side is constant)."""
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {x.shape} vs {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 2:
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt((xc * xc).sum() * (yc * yc).sum())
    if denom == 0:
        return float("nan")
    return float(np.clip((xc * yc).sum() / denom, -1.0, 1.0))


def pearson_test(x: np.ndarray, y: np.ndarray, min_pairs: int = 3) -> tuple[float, float]:
    """``(r, p)``: :func:`pearson` and its two-sided p-value (scipy); both NaN with fewer than
    ``min_pairs`` finite pairs or a constant side."""
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    r = pearson(x, y)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < max(min_pairs, 2) or not np.isfinite(r):
        return float("nan"), float("nan")
    return r, float(stats.pearsonr(x[keep], y[keep]).pvalue)


@dataclass
class ScoreCorrelation:
    pearson: float
    p_value: float
    per_class: dict[str, float] = field(default_factory=dict)
    n_pairs: int = 0


def compute_score_correlation(
    real_scores: np.ndarray, synthetic_scores: np.ndarray, class_names: list[str] | None = None
) -> ScoreCorrelation:
    """Pearson r between paired score matrices [N, C] (row i = real image i and its synthetic twin)."""
    r = np.asarray(real_scores, np.float64)
    s = np.asarray(synthetic_scores, np.float64)
    if r.shape != s.shape or r.ndim != 2:
        raise ValueError(f"expected two [N, C] score arrays of equal shape, got {r.shape} and {s.shape}")
    names = list(class_names or (LABELS if r.shape[1] == len(LABELS) else [str(i) for i in range(r.shape[1])]))
    value = pearson(r, s)
    p = pearson_test(r, s)[1]
    per = {names[c]: pearson(r[:, c], s[:, c]) for c in range(r.shape[1]) if np.isfinite(r[:, c]).any()}
    return ScoreCorrelation(pearson=value, p_value=p, per_class=per, n_pairs=int(r.shape[0]))
