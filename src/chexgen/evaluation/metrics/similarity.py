"""Image similarity (SSIM / MS-SSIM) and diversity among images of the same prompt.

SSIM and MS-SSIM come from pytorch-msssim (Gaussian window 11, sigma 1.5,
K = (0.01, 0.03), data range 1 for images in [0, 1]); it is a base dependency (one small
pure-torch module), so the evaluation suite and the demo run on the base install.
:func:`compute_ssim` is the differentiable tensor form (the VAE's training loss uses it). Diversity follows the
paper: for every prompt with k >= 2 generated images (4 seeds there), the mean
over the k(k-1)/2 pairs; lower means more diverse.

MS-SSIM needs the short side larger than (win - 1) * 16 = 160 px; below that
the window is shrunk to the largest odd size that fits (and recorded), rather
than failing on small evaluation images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from pytorch_msssim import ms_ssim, ssim

__all__ = [
    "compute_ssim",
    "as_image_batch",
    "ssim_pairs",
    "ms_ssim_pairs",
    "msssim_window",
    "indexed_pairs",
    "DiversityResult",
    "compute_diversity",
    "DiversityMetric",
]


def as_image_batch(images, keep_half: bool = False) -> torch.Tensor:
    """[B,H,W] / [B,1,H,W] arrays or tensors in [0,1] -> float32 tensor [B,1,H,W].

    ``keep_half=True`` leaves float16 input as it is (big image sets are kept in half precision
    and converted chunk by chunk).
    """
    t = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    t = t.detach().cpu()
    if not (keep_half and t.dtype == torch.float16):
        t = t.to(torch.float32)
    if t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4 or t.shape[1] != 1:
        raise ValueError(f"expected gray images [B,H,W] or [B,1,H,W], got shape {tuple(t.shape)}")
    return t


def compute_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, win_size: int = 11,
                 sigma: float = 1.5, reduction: str = "mean") -> torch.Tensor:
    """SSIM of two [B, C, H, W] batches (Gaussian window, valid filtering), differentiable.

    ``reduction="mean"`` gives one scalar, ``"none"`` one value per image.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    return ssim(x, y, data_range=data_range, win_size=win_size, win_sigma=sigma, size_average=reduction == "mean")


def indexed_pairs(metric: str, images, ia: Sequence[int], ib: Sequence[int], batch: int = 64) -> np.ndarray:
    """``metric`` ("ssim" or "ms_ssim") of pairs (images[ia[k]], images[ib[k]]), materialising ``batch`` pairs at a time."""
    x = as_image_batch(images, keep_half=True)
    fn = ssim_pairs if metric == "ssim" else ms_ssim_pairs
    ia, ib = np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64)
    out = [fn(x[ia[i : i + batch]].float(), x[ib[i : i + batch]].float(), batch=batch)
           for i in range(0, len(ia), batch)]
    return np.concatenate(out) if out else np.zeros(0)


def msssim_window(size: int, levels: int = 5) -> int:
    """Largest odd Gaussian window (<= 11) MS-SSIM can use on images with short side ``size``."""
    win = 11
    while win > 1 and not size > (win - 1) * 2 ** (levels - 1):
        win -= 2
    if win < 3:
        raise ValueError(f"images of {size} px are too small for {levels}-level MS-SSIM")
    return win


def ssim_pairs(a, b, batch: int = 64) -> np.ndarray:
    """SSIM of each pair (a[i], b[i]); images in [0, 1]."""
    x, y = as_image_batch(a), as_image_batch(b)
    if x.shape != y.shape:
        raise ValueError(f"pair shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    out = [compute_ssim(x[i : i + batch], y[i : i + batch], reduction="none") for i in range(0, x.shape[0], batch)]
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def ms_ssim_pairs(a, b, batch: int = 64) -> np.ndarray:
    """MS-SSIM of each pair (a[i], b[i]); images in [0, 1]; window shrunk for small images."""
    x, y = as_image_batch(a), as_image_batch(b)
    if x.shape != y.shape:
        raise ValueError(f"pair shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    win = msssim_window(min(x.shape[-2:]))
    out = [
        ms_ssim(x[i : i + batch], y[i : i + batch], data_range=1.0, size_average=False, win_size=win)
        for i in range(0, x.shape[0], batch)
    ]
    return torch.cat(out).double().numpy() if out else np.zeros(0)


@dataclass
class DiversityResult:
    """Per-group mean pairwise similarity; ``ssim`` / ``ms_ssim`` are the means over groups."""

    ssim: float
    ms_ssim: float
    per_group_ssim: dict[Hashable, float] = field(default_factory=dict)
    per_group_ms_ssim: dict[Hashable, float] = field(default_factory=dict)
    n_groups: int = 0
    n_pairs: int = 0


def compute_diversity(images, groups: Sequence[Hashable], use_ms_ssim: bool = True) -> DiversityResult:
    """Mean pairwise SSIM / MS-SSIM among images sharing a group (prompt); lower = more diverse.

    ``images``: [N,1,H,W] in [0,1]; ``groups``: one key per image. Groups with a
    single image are skipped. The overall value is the mean of the group means,
    so every prompt weighs the same however many seeds it has.
    """
    x = as_image_batch(images, keep_half=True)
    if len(groups) != x.shape[0]:
        raise ValueError(f"{len(groups)} group keys for {x.shape[0]} images")
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    pairs_i, pairs_j, pair_group = [], [], []
    for g, idx in members.items():
        for i, j in combinations(idx, 2):
            pairs_i.append(i)
            pairs_j.append(j)
            pair_group.append(g)
    if not pairs_i:
        return DiversityResult(ssim=float("nan"), ms_ssim=float("nan"))
    s = indexed_pairs("ssim", x, pairs_i, pairs_j)
    m = indexed_pairs("ms_ssim", x, pairs_i, pairs_j) if use_ms_ssim else np.full(len(pairs_i), np.nan)
    per_s: dict[Hashable, list[float]] = {}
    per_m: dict[Hashable, list[float]] = {}
    for g, vs, vm in zip(pair_group, s, m):
        per_s.setdefault(g, []).append(float(vs))
        per_m.setdefault(g, []).append(float(vm))
    gs = {g: float(np.mean(v)) for g, v in per_s.items()}
    gm = {g: float(np.mean(v)) for g, v in per_m.items()}
    return DiversityResult(
        ssim=float(np.mean(list(gs.values()))),
        ms_ssim=float(np.mean(list(gm.values()))),
        per_group_ssim=gs,
        per_group_ms_ssim=gm,
        n_groups=len(gs),
        n_pairs=len(pairs_i),
    )


class DiversityMetric:
    """Accumulating diversity: ``update(images, groups)`` as batches arrive, ``aggregate()`` at the end.

    Stores the images (small evaluation copies) because pairs can span batches.
    """

    def __init__(self, use_ms_ssim: bool = True) -> None:
        self.use_ms_ssim = use_ms_ssim
        self.reset()

    def reset(self) -> None:
        self._images: list[torch.Tensor] = []
        self._groups: list[Hashable] = []

    def update(self, images, groups: Sequence[Hashable]) -> None:
        x = as_image_batch(images)
        if len(groups) != x.shape[0]:
            raise ValueError(f"{len(groups)} group keys for {x.shape[0]} images")
        self._images.append(x)
        self._groups.extend(groups)

    def aggregate(self) -> DiversityResult:
        if not self._images:
            return DiversityResult(ssim=float("nan"), ms_ssim=float("nan"))
        return compute_diversity(torch.cat(self._images), self._groups, self.use_ms_ssim)


def group_means(values: Mapping[Hashable, float], keys: Sequence[Hashable]) -> np.ndarray:
    """Values of ``keys`` in order (NaN where missing): to pair two runs' per-prompt results."""
    return np.array([values.get(k, np.nan) for k in keys], dtype=np.float64)
