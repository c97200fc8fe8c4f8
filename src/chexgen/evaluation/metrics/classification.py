"""Classification metrics: AUROC per class (one implementation for everyone) and weighted F1.

Labels follow the manifest's convention: 1 positive, 0 negative, -1 uncertain (counted as
``uncertain_as``, negative by default), NaN unknown (the row is left out of that class). Any label
above 0.5 is positive, so soft targets (an uncertain label trained as 0.5) count as negative, as
they did in the downstream trainer. A class with only one label value left has no AUROC: NaN,
never a made-up number. Scores and labels are ``[N, C]`` (or ``[N]`` for one class), scores first,
like every metric of :mod:`chexgen.evaluation.metrics` (prediction first, truth second).
"""

from __future__ import annotations

import numpy as np

from chexgen.data.labels import LABELS

__all__ = ["compute_auroc", "compute_per_class_auroc", "weighted_f1", "finite_mean"]


def finite_mean(values) -> float:
    """Mean of the finite values (NaN when there are none): the macro over defined classes."""
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def _columns(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    sc = np.asarray(scores, np.float64)
    lab = np.asarray(labels, np.float64)
    if sc.ndim == 1 and lab.ndim == 1:
        sc, lab = sc[:, None], lab[:, None]
    if sc.shape != lab.shape or sc.ndim != 2:
        raise ValueError(f"expected [N, C] scores and labels of equal shape, got {sc.shape} and {lab.shape}")
    return sc, lab


def compute_auroc(scores, labels, uncertain_as: float = 0.0) -> np.ndarray:
    """AUROC of each column of ``scores`` against ``labels`` (see module doc); NaN where undefined."""
    from sklearn.metrics import roc_auc_score

    sc, lab = _columns(scores, labels)
    lab = np.where(lab == -1, uncertain_as, lab)
    out = np.full(sc.shape[1], np.nan)
    for c in range(sc.shape[1]):
        keep = np.isfinite(lab[:, c]) & np.isfinite(sc[:, c])
        positive = lab[keep, c] > 0.5
        if 0 < positive.sum() < positive.size:
            out[c] = float(roc_auc_score(positive, sc[keep, c]))
    return out


def compute_per_class_auroc(
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: list[str] | None = None,
    uncertain_as: float = 0.0,
) -> dict[str, float]:
    """Per-class AUROC of ``scores`` [N, C] against ``labels`` [N, C] by name, plus ``"macro"``.

    ``"macro"`` is the mean over classes with a defined AUROC. Names default to the 14 labels
    when there are 14 columns, else the column numbers.
    """
    sc, _ = _columns(scores, labels)
    values = compute_auroc(scores, labels, uncertain_as)
    names = list(class_names or (LABELS if sc.shape[1] == len(LABELS) else [str(i) for i in range(sc.shape[1])]))
    out = {name: float(v) for name, v in zip(names, values)}
    out["macro"] = finite_mean(values)
    return out


def weighted_f1(scores: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> float:
    """Support-weighted F1 over classes (scikit-learn ``average="weighted"``) at a score threshold.

    Labels above 0.5 are positive; NaN when no label is positive.
    """
    from sklearn.metrics import f1_score

    targets = np.asarray(labels) > 0.5
    preds = np.asarray(scores) >= threshold
    if targets.ndim == 1:
        targets, preds = targets[:, None], preds[:, None]
    if targets.sum() == 0:
        return float("nan")
    return float(f1_score(targets, preds, average="weighted", zero_division=0))
