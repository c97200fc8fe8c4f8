"""Task metrics as pure functions on arrays (compared against references in the tests).

- classification: AUROC per class and macro (scikit-learn), weighted F1 at a threshold;
- segmentation: Dice with the SIIM-ACR convention (an empty truth scores 1 when the
  prediction is empty too, else 0), reported overall, over positive images
  (truth non-empty) and over negative images (truth empty);
- detection: mAP and mAR at IoU 0.5 (torchmetrics ``MeanAveragePrecision``, COCO
  101-point interpolation, at most 100 detections per image);
- regression: MAE, MSE and Pearson r.

A metric that is undefined on the given data (AUROC with one class present,
Pearson r of a constant) is ``nan``, never a made-up number.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = [
    "auroc_per_class",
    "classification_metrics",
    "dice_scores",
    "segmentation_metrics",
    "detection_metrics",
    "regression_metrics",
    "weighted_f1",
]


def _finite_mean(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def auroc_per_class(targets: np.ndarray, scores: np.ndarray) -> list[float]:
    """AUROC of each column; ``nan`` where only one class is present."""
    from sklearn.metrics import roc_auc_score

    targets = np.asarray(targets)
    scores = np.asarray(scores, dtype=np.float64)
    if targets.ndim == 1:
        targets, scores = targets[:, None], scores[:, None]
    out = []
    for j in range(targets.shape[1]):
        t = targets[:, j] > 0.5
        out.append(float(roc_auc_score(t, scores[:, j])) if 0 < t.sum() < len(t) else float("nan"))
    return out


def weighted_f1(targets: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> float:
    """Support-weighted F1 over classes (scikit-learn ``average="weighted"``) at a score threshold."""
    from sklearn.metrics import f1_score

    targets = np.asarray(targets) > 0.5
    preds = np.asarray(scores) >= threshold
    if targets.ndim == 1:
        targets, preds = targets[:, None], preds[:, None]
    if targets.sum() == 0:
        return float("nan")
    return float(f1_score(targets, preds, average="weighted", zero_division=0))


def classification_metrics(
    targets: np.ndarray, scores: np.ndarray, classes: Sequence[str], threshold: float = 0.5
) -> dict[str, float]:
    """``auroc/<class>`` per class, ``auroc_macro`` over defined classes, ``f1_weighted``."""
    per = auroc_per_class(targets, scores)
    out = {f"auroc/{c}": v for c, v in zip(classes, per)}
    out["auroc_macro"] = _finite_mean(per)
    out["f1_weighted"] = weighted_f1(targets, scores, threshold)
    return out


def dice_scores(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-image Dice of boolean (N, H, W) masks, SIIM convention for empty truths."""
    truth = np.asarray(truth).astype(bool).reshape(len(truth), -1)
    pred = np.asarray(pred).astype(bool).reshape(len(pred), -1)
    inter = (truth & pred).sum(1).astype(np.float64)
    total = truth.sum(1) + pred.sum(1)
    both_empty = total == 0
    return np.where(both_empty, 1.0, 2.0 * inter / np.maximum(total, 1))


def segmentation_metrics(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """``dice`` over all images, ``dice_pos`` over non-empty truths, ``dice_neg`` over empty truths."""
    d = dice_scores(truth, pred)
    pos = np.asarray(truth).reshape(len(truth), -1).any(1)
    return {
        "dice": float(d.mean()) if len(d) else float("nan"),
        "dice_pos": float(d[pos].mean()) if pos.any() else float("nan"),
        "dice_neg": float(d[~pos].mean()) if (~pos).any() else float("nan"),
    }


def detection_metrics(preds: list[dict], targets: list[dict], classes: Sequence[str] = ()) -> dict[str, float]:
    """mAP50 / mAR50 (and per class when ``classes`` is given) of torchvision-style box dicts.

    ``preds``: per image ``boxes`` (N, 4) xyxy, ``scores`` (N,), ``labels`` (N,);
    ``targets``: per image ``boxes`` and ``labels``. Labels are 1-based class indices.
    """
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_thresholds=[0.5], box_format="xyxy", class_metrics=bool(classes))

    def _t(d: dict, keys: tuple[str, ...]) -> dict:
        out = {}
        for k in keys:
            v = torch.as_tensor(np.asarray(d[k]))
            out[k] = v.reshape(-1, 4).float() if k == "boxes" else (v.float() if k == "scores" else v.long())
        return out

    metric.update([_t(p, ("boxes", "scores", "labels")) for p in preds], [_t(t, ("boxes", "labels")) for t in targets])
    res = metric.compute()

    def _val(x) -> float:
        v = float(x)
        return float("nan") if v < 0 else v  # torchmetrics reports -1 for "no ground truth"

    out = {"map50": _val(res["map_50"]), "mar50": _val(res["mar_100"])}
    if classes:
        ids = [int(i) for i in torch.as_tensor(res["classes"]).reshape(-1)]
        per_map = torch.as_tensor(res["map_per_class"]).reshape(-1)
        per_mar = torch.as_tensor(res["mar_100_per_class"]).reshape(-1)
        for k, cid in enumerate(ids):
            if 1 <= cid <= len(classes):
                out[f"ap50/{classes[cid - 1]}"] = _val(per_map[k])
                out[f"ar50/{classes[cid - 1]}"] = _val(per_mar[k])
    return out


def regression_metrics(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """``mae``, ``mse`` and ``pearson`` (nan when either side is constant)."""
    from scipy.stats import pearsonr

    truth = np.asarray(truth, dtype=np.float64).ravel()
    pred = np.asarray(pred, dtype=np.float64).ravel()
    err = pred - truth
    r = float("nan")
    if len(truth) > 1 and truth.std() > 0 and pred.std() > 0:
        r = float(pearsonr(truth, pred)[0])
    return {"mae": float(np.abs(err).mean()), "mse": float((err**2).mean()), "pearson": r}
