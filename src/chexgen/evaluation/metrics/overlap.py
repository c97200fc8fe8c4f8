"""Overlap of masks and boxes: Dice / IoU per image (one implementation), box IoU, box rasterising.

Convention for empty masks (SIIM-ACR's, and the usual one for "no pneumothorax" cases): when
prediction and truth are both empty the image scores Dice = IoU = 1; when only one is empty it
scores 0. Masks are [B, H, W] or [B, 1, H, W] arrays or tensors; values above ``threshold`` are
foreground, so boolean masks and probabilities both work.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["dice_iou", "compute_dice", "boxes_to_mask", "box_iou_matrix", "best_box_iou"]


def _as_bool(x, threshold: float) -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
    return a > threshold


def dice_iou(pred, target, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU per image of masks ``pred`` and ``target`` (see module doc for shapes and empties)."""
    p, t = _as_bool(pred, threshold), _as_bool(target, threshold)
    if p.shape != t.shape:
        raise ValueError(f"mask shapes differ: {p.shape} vs {t.shape}")
    if p.ndim == 2:
        p, t = p[None], t[None]
    p = p.reshape(p.shape[0], -1)
    t = t.reshape(t.shape[0], -1)
    inter = (p & t).sum(1).astype(np.float64)
    ps, ts = p.sum(1).astype(np.float64), t.sum(1).astype(np.float64)
    union = ps + ts - inter
    empty = (ps + ts) == 0
    dice = np.where(empty, 1.0, 2 * inter / np.maximum(ps + ts, 1))
    iou = np.where(empty, 1.0, inter / np.maximum(union, 1))
    return dice, iou


def compute_dice(pred, target, threshold: float = 0.5) -> np.ndarray:
    """Dice per image (the first half of :func:`dice_iou`)."""
    return dice_iou(pred, target, threshold)[0]


def boxes_to_mask(boxes: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterise (x0, y0, x1, y1) pixel boxes (x1, y1 exclusive) into one boolean mask."""
    m = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        c0, r0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        c1, r1 = min(int(np.ceil(x1)), width), min(int(np.ceil(y1)), height)
        if c1 > c0 and r1 > r0:
            m[r0:r1, c0:c1] = True
    return m


def box_iou_matrix(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> np.ndarray:
    """IoU of every box in ``a`` with every box in ``b`` ([len(a), len(b)])."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def best_box_iou(condition: Sequence[Sequence[float]], detected: Sequence[Sequence[float]]) -> float:
    """Mean over condition boxes of the IoU with the best-matching detected box (0 if none detected)."""
    if len(condition) == 0:
        return 1.0 if len(detected) == 0 else 0.0
    if len(detected) == 0:
        return 0.0
    return float(box_iou_matrix(condition, detected).max(1).mean())
