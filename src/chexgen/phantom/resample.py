"""Resampling of projected maps, shared by the renderer and the finding insertion.

Kept in its own module so :mod:`.insertion` and :mod:`.render` do not import each other.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["resize_map"]


def resize_map(arr: np.ndarray, size: int) -> np.ndarray:
    """Area-average (or bilinear when not an integer factor) a (..., S, S) map to ``size``."""
    s = arr.shape[-1]
    if s == size:
        return arr
    if s % size == 0:
        f = s // size
        return arr.reshape(*arr.shape[:-2], size, f, size, f).mean(axis=(-3, -1))
    flat = arr.reshape(-1, s, s)
    out = np.stack([np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize((size, size), Image.Resampling.BILINEAR if size > s else Image.Resampling.BOX)) for a in flat])
    return out.reshape(*arr.shape[:-2], size, size)
