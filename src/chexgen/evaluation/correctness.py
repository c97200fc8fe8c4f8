"""Factual correctness: does a synthetic image show what its prompt says?

Two views, both from a 14-class CXR classifier (columns in ``chexgen.data.labels.LABELS``):

* **Pearson** (the paper's measure): for N prompts, the classifier's scores on
  the real image and on the synthetic image generated from that image's
  report, flattened over N x 14, then correlated. Columns the classifier does
  not predict (NaN) are left out. Per-class correlations are reported too.
* **AUROC** of the synthetic images' scores against the prompts' labels, per
  class (1 = positive; 0 and, by default, uncertain -1 = negative; missing
  labels dropped). A class with only one label value has no AUROC (NaN).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score

from chexgen.data.labels import LABELS

__all__ = ["pearson", "compute_score_correlation", "ScoreCorrelation", "compute_per_class_auroc"]


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
    keep = np.isfinite(r.ravel()) & np.isfinite(s.ravel())
    value = pearson(r, s)
    p = float("nan")
    if keep.sum() > 2 and np.isfinite(value):
        p = float(stats.pearsonr(r.ravel()[keep], s.ravel()[keep]).pvalue)
    per = {names[c]: pearson(r[:, c], s[:, c]) for c in range(r.shape[1]) if np.isfinite(r[:, c]).any()}
    return ScoreCorrelation(pearson=value, p_value=p, per_class=per, n_pairs=int(r.shape[0]))


def compute_per_class_auroc(
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: list[str] | None = None,
    uncertain_as: float = 0.0,
) -> dict[str, float]:
    """Per-class AUROC of ``scores`` [N, C] against ``labels`` [N, C] (1/0/-1/NaN); NaN if undefined.

    Adds ``"macro"``: the mean over classes with a defined AUROC.
    """
    sc = np.asarray(scores, np.float64)
    lab = np.asarray(labels, np.float64).copy()
    if sc.shape != lab.shape or sc.ndim != 2:
        raise ValueError(f"expected [N, C] scores and labels of equal shape, got {sc.shape} and {lab.shape}")
    lab[lab == -1] = uncertain_as
    names = list(class_names or (LABELS if sc.shape[1] == len(LABELS) else [str(i) for i in range(sc.shape[1])]))
    out: dict[str, float] = {}
    for c in range(sc.shape[1]):
        keep = np.isfinite(lab[:, c]) & np.isfinite(sc[:, c])
        y = lab[keep, c]
        if keep.sum() < 2 or len(np.unique(y)) < 2:
            out[names[c]] = float("nan")
            continue
        out[names[c]] = float(roc_auc_score(y, sc[keep, c]))
    defined = [v for v in out.values() if np.isfinite(v)]
    out["macro"] = float(np.mean(defined)) if defined else float("nan")
    return out
