"""Control adherence: do generated images respect the masks / boxes they were conditioned on?

A segmenter (or detector) is run on each generated image; its output is
compared with the condition. Masks: Dice and IoU of binary masks. Boxes: the
boxes are rasterised to masks of the image size and compared the same way, and
each condition box is also matched to its best-overlapping detected box (box
IoU). Empty-vs-empty counts as perfect agreement (Dice = IoU = 1), the usual
convention for "no pneumothorax" cases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from chexgen.data.conditions import decode_rle  # noqa: F401 - re-exported for the suite (one RLE decoder)

__all__ = [
    "dice_iou",
    "boxes_to_mask",
    "box_iou_matrix",
    "best_box_iou",
    "ControlAdherence",
    "compute_mask_adherence",
    "segment_images",
    "decode_rle",
]


def dice_iou(pred, target, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU per image of binary masks [B,H,W] (or [B,1,H,W]); values > ``threshold`` are foreground."""
    p = np.asarray(pred.detach().cpu().numpy() if hasattr(pred, "detach") else pred) > threshold
    t = np.asarray(target.detach().cpu().numpy() if hasattr(target, "detach") else target) > threshold
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


@dataclass
class ControlAdherence:
    dice: float
    iou: float
    per_image_dice: list[float] = field(default_factory=list)
    per_image_iou: list[float] = field(default_factory=list)
    box_iou: float | None = None


def compute_mask_adherence(predicted, condition, threshold: float = 0.5) -> ControlAdherence:
    """Dice / IoU between predicted masks and condition masks (both [B,H,W] or [B,1,H,W])."""
    d, i = dice_iou(predicted, condition, threshold)
    return ControlAdherence(
        dice=float(d.mean()) if d.size else float("nan"),
        iou=float(i.mean()) if i.size else float("nan"),
        per_image_dice=d.tolist(),
        per_image_iou=i.tolist(),
    )


@torch.no_grad()
def segment_images(
    segmenter: Callable[[torch.Tensor], torch.Tensor], images, batch_size: int = 16, apply_sigmoid: bool | None = None
) -> np.ndarray:
    """Run a segmenter (callable [B,1,H,W] in [0,1] -> [B,1,H,W] logits or probabilities) -> probs [B,H,W].

    ``apply_sigmoid=None`` guesses: outputs outside [0, 1] are treated as logits.
    """
    from chexgen.evaluation.similarity import as_image_batch

    x = as_image_batch(images)
    outs = []
    for i in range(0, x.shape[0], batch_size):
        y = segmenter(x[i : i + batch_size])
        if isinstance(y, dict):
            y = y.get("masks", y.get("out"))
        y = torch.as_tensor(y).float().cpu()
        outs.append(y[:, 0] if y.ndim == 4 else y)
    if not outs:
        return np.zeros((0,) + tuple(x.shape[-2:]))
    y = torch.cat(outs)
    sig = apply_sigmoid if apply_sigmoid is not None else bool(y.min() < 0 or y.max() > 1)
    return (torch.sigmoid(y) if sig else y).numpy()
