"""Memorisation: is a synthetic image a near copy of a training image?

For every synthetic image the nearest training image is found two ways:

* by **feature** distance (Euclidean on L2-normalised features, i.e. cosine),
  over the whole training set;
* by **SSIM** on small gray copies. An exhaustive N x M SSIM is too slow on a
  CPU, so SSIM is computed against a shortlist: the ``shortlist`` nearest
  training images by feature and the ``shortlist`` nearest by pixel L2 at
  ``pixel_size`` px. An exact or near-exact copy is always the pixel nearest
  neighbour, so it cannot escape the shortlist.

A synthetic image is flagged as a near duplicate when its best SSIM reaches
``ssim_threshold`` or its feature distance is below ``feature_ratio`` times the
median nearest-neighbour distance *among training images themselves*; the
second rule is scale-free, so it means the same for any extractor (a random
network puts all images close together in absolute terms).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from chexgen.evaluation.metrics.similarity import as_image_batch, ssim_pairs

__all__ = ["MemorisationResult", "nearest_by_feature", "compute_memorisation"]


def _l2n(x) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return F.normalize(t.detach().to(torch.float64).cpu(), dim=1)


def nearest_by_feature(query, reference, k: int = 1, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Indices [n, k] and distances [n, k] of the k nearest ``reference`` rows (cosine geometry)."""
    q, r = _l2n(query), _l2n(reference)
    k = min(k, r.shape[0])
    idx, dist = [], []
    for i in range(0, q.shape[0], chunk):
        d = torch.cdist(q[i : i + chunk], r)
        v, j = d.topk(k, dim=1, largest=False)
        idx.append(j)
        dist.append(v)
    return torch.cat(idx).numpy(), torch.cat(dist).numpy()


def _pooled(images: torch.Tensor, size: int, chunk: int = 256) -> torch.Tensor:
    """Area-averaged ``size`` px copies, flattened, float64 (chunked: inputs may be large half tensors)."""
    return torch.cat([
        F.adaptive_avg_pool2d(images[i : i + chunk].float(), size).flatten(1).double()
        for i in range(0, images.shape[0], chunk)
    ])


def _median_train_nn(reference: torch.Tensor, max_n: int = 2000, seed: int = 0) -> float:
    r = reference
    if r.shape[0] > max_n:
        g = torch.Generator().manual_seed(seed)
        r = r[torch.randperm(r.shape[0], generator=g)[:max_n]]
    if r.shape[0] < 2:
        return float("nan")
    d = torch.cdist(r, r)
    d.fill_diagonal_(float("inf"))
    return float(d.min(1).values.median())


@dataclass
class MemorisationResult:
    """Per synthetic image: nearest training index / distance by feature and by SSIM, and the flag."""

    feature_nn: list[int]
    feature_distance: list[float]
    ssim_nn: list[int]
    ssim: list[float]
    flagged: list[bool]
    train_median_nn_distance: float
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def flagged_fraction(self) -> float:
        return float(np.mean(self.flagged)) if self.flagged else float("nan")

    def closest_pairs(self, n: int = 8, by: str = "ssim") -> list[int]:
        """Indices of the ``n`` synthetic images closest to a training image (highest SSIM or lowest distance)."""
        if by == "ssim":
            order = np.argsort(-np.asarray(self.ssim))
        else:
            order = np.argsort(np.asarray(self.feature_distance))
        return [int(i) for i in order[:n]]


def compute_memorisation(
    synthetic_features,
    train_features,
    synthetic_images,
    train_images,
    shortlist: int = 8,
    pixel_size: int = 32,
    ssim_threshold: float = 0.95,
    feature_ratio: float = 0.1,
) -> MemorisationResult:
    """Nearest training neighbours of every synthetic image and near-duplicate flags (see module doc).

    Images: [N,1,H,W] in [0,1] at one common size (SSIM is computed at that size).
    """
    sf, tf = _l2n(synthetic_features), _l2n(train_features)
    si, ti = as_image_batch(synthetic_images, keep_half=True), as_image_batch(train_images, keep_half=True)
    if sf.shape[0] != si.shape[0] or tf.shape[0] != ti.shape[0]:
        raise ValueError("features and images must have the same number of rows per set")
    if si.shape[-2:] != ti.shape[-2:]:
        raise ValueError(f"synthetic and training images differ in size: {tuple(si.shape)} vs {tuple(ti.shape)}")
    f_idx, f_dist = nearest_by_feature(sf, tf, k=shortlist)
    small_s = _pooled(si, pixel_size)
    small_t = _pooled(ti, pixel_size)
    _, p_idx = torch.cdist(small_s, small_t).topk(min(shortlist, ti.shape[0]), dim=1, largest=False)
    p_idx = p_idx.numpy()

    # one batched SSIM call over every (synthetic, candidate) pair
    cand = [np.unique(np.concatenate([f_idx[n], p_idx[n]])) for n in range(si.shape[0])]
    owner = np.concatenate([np.full(len(c), n) for n, c in enumerate(cand)])
    flat = np.concatenate(cand)
    s_all = np.concatenate([
        ssim_pairs(si[owner[i : i + 256]].float(), ti[flat[i : i + 256]].float())
        for i in range(0, len(owner), 256)
    ])
    best_j, best_s = [], []
    start = 0
    for c in cand:
        s = s_all[start : start + len(c)]
        k = int(np.argmax(s))
        best_j.append(int(c[k]))
        best_s.append(float(s[k]))
        start += len(c)
    med = _median_train_nn(tf)
    feat_thr = feature_ratio * med if np.isfinite(med) else 0.0
    flagged = [
        bool(s >= ssim_threshold or d <= feat_thr) for s, d in zip(best_s, f_dist[:, 0].tolist())
    ]
    return MemorisationResult(
        feature_nn=f_idx[:, 0].astype(int).tolist(),
        feature_distance=f_dist[:, 0].tolist(),
        ssim_nn=best_j,
        ssim=best_s,
        flagged=flagged,
        train_median_nn_distance=med,
        thresholds={"ssim": ssim_threshold, "feature_distance": feat_thr, "feature_ratio": feature_ratio},
    )
