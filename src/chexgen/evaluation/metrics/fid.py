"""Fréchet distance (FID) and kernel distance (KID) on feature arrays.

Both work on features only; extraction lives in :mod:`chexgen.evaluation.features`.
All arithmetic is float64.

Why a custom matrix square root: ``scipy.linalg.sqrtm(s1 @ s2)`` works on a
non-symmetric product, can return complex values from rounding and is slow at
1024-d. Here the trace term ``tr sqrt(S1 S2)`` is computed one of two exact,
symmetric ways:

* feature space (``n > d``): ``tr sqrt(S1^1/2 S2 S1^1/2)``, two symmetric
  eigendecompositions with negative round-off eigenvalues clipped to zero;
* sample space (both ``n <= d``, common with a few hundred images and 1024-d
  features): with ``S = A^T A`` (A the centred features / sqrt(n-1)) the
  non-zero eigenvalues of ``S1 S2`` are the squared singular values of
  ``A1 A2^T``, so the trace is the nuclear norm of an ``n1 x n2`` matrix.
  That is much cheaper and makes bootstrapping FID affordable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "FeatureStats",
    "feature_stats",
    "matrix_sqrt_psd",
    "trace_sqrt_product",
    "frechet_distance",
    "compute_fid",
    "compute_kid",
    "FIDMetric",
]


def _as_features(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (n_samples, n_features), got shape {a.shape}")
    if a.shape[0] < 2:
        raise ValueError(f"{name}: need at least 2 samples, got {a.shape[0]}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return a


@dataclass
class FeatureStats:
    """Mean and covariance of a feature set (what FID compares)."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int


def feature_stats(features: np.ndarray) -> FeatureStats:
    """Mean and unbiased covariance (n - 1) of ``features`` [n, d]."""
    f = _as_features(features, "features")
    return FeatureStats(mu=f.mean(0), sigma=np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1]), n=f.shape[0])


def matrix_sqrt_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigh, negatives clipped)."""
    a = np.asarray(a, dtype=np.float64)
    a = 0.5 * (a + a.T)
    w, v = np.linalg.eigh(a)
    w = np.clip(w, 0.0, None)
    return (v * np.sqrt(w)) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr sqrt(sigma1 @ sigma2)`` for PSD matrices, via the symmetric form ``S1^1/2 S2 S1^1/2``."""
    r = matrix_sqrt_psd(sigma1)
    m = r @ np.asarray(sigma2, dtype=np.float64) @ r
    w = np.linalg.eigvalsh(0.5 * (m + m.T))
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)``; clipped at 0 (round-off).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2)
    return float(max(value, 0.0))


def _fid_sample_space(f1: np.ndarray, f2: np.ndarray) -> float:
    a1 = (f1 - f1.mean(0)) / np.sqrt(f1.shape[0] - 1)
    a2 = (f2 - f2.mean(0)) / np.sqrt(f2.shape[0] - 1)
    diff = f1.mean(0) - f2.mean(0)
    tr1 = float((a1 * a1).sum())
    tr2 = float((a2 * a2).sum())
    nuclear = float(np.linalg.svd(a1 @ a2.T, compute_uv=False).sum())
    return float(max(diff @ diff + tr1 + tr2 - 2.0 * nuclear, 0.0))


def compute_fid(features1: np.ndarray, features2: np.ndarray, method: str = "auto") -> float:
    """FID between two feature sets [n1, d] and [n2, d] (real first by convention; it is symmetric).

    ``method``: ``"auto"`` (sample space when max(n1, n2) <= d, else feature space),
    ``"feature"`` or ``"sample"``; all give the same value up to round-off.
    """
    f1 = _as_features(features1, "features1")
    f2 = _as_features(features2, "features2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimension mismatch: {f1.shape[1]} vs {f2.shape[1]}")
    if method not in ("auto", "feature", "sample"):
        raise ValueError(f"method must be 'auto', 'feature' or 'sample', got {method!r}")
    if method == "sample" or (method == "auto" and max(f1.shape[0], f2.shape[0]) <= f1.shape[1]):
        return _fid_sample_space(f1, f2)
    s1, s2 = feature_stats(f1), feature_stats(f2)
    return frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma)


def _poly_kernel(x: np.ndarray, y: np.ndarray, degree: int, gamma: float | None, coef0: float) -> np.ndarray:
    g = 1.0 / x.shape[1] if gamma is None else gamma
    return (g * (x @ y.T) + coef0) ** degree


def compute_kid(
    features1: np.ndarray,
    features2: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2 with a cubic polynomial kernel, over random subsets.

    Returns (mean, std) over ``subsets`` draws of ``min(subset_size, n1, n2)`` samples per set.
    Unlike FID it is unbiased in n, so small sets compare fairly; it can be slightly negative.
    """
    f1 = _as_features(features1, "features1")
    f2 = _as_features(features2, "features2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimension mismatch: {f1.shape[1]} vs {f2.shape[1]}")
    m = min(subset_size, f1.shape[0], f2.shape[0])
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x = f1[rng.choice(f1.shape[0], m, replace=False)]
        y = f2[rng.choice(f2.shape[0], m, replace=False)]
        kxx = _poly_kernel(x, x, degree, gamma, coef0)
        kyy = _poly_kernel(y, y, degree, gamma, coef0)
        kxy = _poly_kernel(x, y, degree, gamma, coef0)
        values[i] = (
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2.0 * kxy.mean()
        )
    return float(values.mean()), float(values.std())


class FIDMetric:
    """Accumulating FID (MONAI style): ``update(real, synthetic)`` batch by batch, then ``aggregate()``.

    Keeps running sums (not the features), so memory is O(d^2) whatever the set size.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, list] = {"real": [0, None, None], "synthetic": [0, None, None]}

    def _add(self, key: str, feats) -> None:
        f = np.asarray(feats.detach().cpu().numpy() if hasattr(feats, "detach") else feats, np.float64)
        if f.ndim != 2:
            raise ValueError(f"{key}: expected [batch, d] features, got shape {f.shape}")
        acc = self._sums[key]
        if acc[1] is None:
            acc[1] = np.zeros(f.shape[1])
            acc[2] = np.zeros((f.shape[1], f.shape[1]))
        acc[0] += f.shape[0]
        acc[1] += f.sum(0)
        acc[2] += f.T @ f

    def update(self, real=None, synthetic=None) -> None:
        if real is not None:
            self._add("real", real)
        if synthetic is not None:
            self._add("synthetic", synthetic)

    def _stats(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        n, s, ss = self._sums[key]
        if n < 2:
            raise ValueError(f"FIDMetric: need at least 2 {key} samples, got {n}")
        mu = s / n
        sigma = (ss - n * np.outer(mu, mu)) / (n - 1)
        return mu, sigma

    def aggregate(self) -> float:
        mu1, s1 = self._stats("real")
        mu2, s2 = self._stats("synthetic")
        return frechet_distance(mu1, s1, mu2, s2)
