"""Downstream task scores: the metric dictionaries the experiments report, per task.

Every number comes from :mod:`chexgen.evaluation.metrics` (the one metrics layer); this module
only names them per task. Prediction first, truth second, like the metrics layer.

- classification: ``auroc/<class>`` per class, ``auroc_macro`` over defined classes,
  ``f1_weighted`` at a threshold;
- segmentation: Dice with the SIIM-ACR convention (an empty truth scores 1 when the
  prediction is empty too, else 0), reported overall (``dice``), over positive images
  (``dice_pos``, truth non-empty) and over negative images (``dice_neg``, truth empty);
- detection: ``map50`` / ``mar50`` (torchmetrics, COCO 101-point interpolation);
- regression: ``mae``, ``mse`` and ``pearson``.

A metric that is undefined on the given data (AUROC with one class present,
Pearson r of a constant) is ``nan``, never a made-up number.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from chexgen.evaluation.metrics import compute_auroc, compute_dice, compute_map50, finite_mean, pearson, weighted_f1

__all__ = [
    "classification_metrics",
    "segmentation_metrics",
    "detection_metrics",
    "regression_metrics",
]


def classification_metrics(
    scores: np.ndarray, targets: np.ndarray, classes: Sequence[str], threshold: float = 0.5
) -> dict[str, float]:
    """``auroc/<class>`` per class, ``auroc_macro`` over defined classes, ``f1_weighted``."""
    per = compute_auroc(scores, targets)
    out = {f"auroc/{c}": float(v) for c, v in zip(classes, per)}
    out["auroc_macro"] = finite_mean(per)
    out["f1_weighted"] = weighted_f1(scores, targets, threshold)
    return out


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """``dice`` over all images, ``dice_pos`` over non-empty truths, ``dice_neg`` over empty truths."""
    d = compute_dice(pred, truth)
    pos = (np.asarray(truth) > 0.5).reshape(len(truth), -1).any(1)
    return {
        "dice": float(d.mean()) if len(d) else float("nan"),
        "dice_pos": float(d[pos].mean()) if pos.any() else float("nan"),
        "dice_neg": float(d[~pos].mean()) if (~pos).any() else float("nan"),
    }


def detection_metrics(preds: list[dict], targets: list[dict], classes: Sequence[str] = ()) -> dict[str, float]:
    """``map50`` / ``mar50`` (and per class when ``classes`` is given); see
    :func:`chexgen.evaluation.metrics.compute_map50` for the box dicts."""
    return compute_map50(preds, targets, classes)


def regression_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """``mae``, ``mse`` and ``pearson`` (nan when either side is constant)."""
    truth = np.asarray(truth, dtype=np.float64).ravel()
    pred = np.asarray(pred, dtype=np.float64).ravel()
    err = pred - truth
    return {"mae": float(np.abs(err).mean()), "mse": float((err**2).mean()), "pearson": pearson(truth, pred)}
