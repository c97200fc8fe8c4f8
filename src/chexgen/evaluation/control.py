"""Control adherence: do generated images respect the masks / boxes they were conditioned on?

A segmenter (or detector) is run on each generated image; its output is
compared with the condition. Masks: Dice and IoU of binary masks. Boxes: the
boxes are rasterised to masks of the image size and compared the same way, and
each condition box is also matched to its best-overlapping detected box (box
IoU). Empty-vs-empty counts as perfect agreement (Dice = IoU = 1), the usual
convention for "no pneumothorax" cases. The overlap measures themselves live in
:mod:`chexgen.evaluation.metrics.overlap`; this module runs the segmenter and gathers them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from chexgen.data.conditions import decode_rle  # noqa: F401 - re-exported for the suite (one RLE decoder)
from chexgen.evaluation.metrics.overlap import dice_iou
from chexgen.evaluation.metrics.similarity import as_image_batch

__all__ = [
    "ControlAdherence",
    "compute_mask_adherence",
    "segment_images",
    "decode_rle",
]


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
