"""Bootstrap confidence intervals and the paired Wilcoxon test.

Bootstrap: percentile intervals from resampling the *units* a metric is built
from: images for FID / KID / precision-recall (each set resampled on its own),
matched pairs for Pearson, prompts for diversity, synthetic images for the
memorisation rate. Every draw uses one seeded generator, so reports are
reproducible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import stats

__all__ = ["ConfidenceInterval", "bootstrap_ci", "bootstrap_two_sample_ci", "paired_wilcoxon"]


@dataclass
class ConfidenceInterval:
    value: float
    low: float
    high: float
    level: float
    n_boot: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _percentiles(
    draws: np.ndarray, value: float, level: float, n_boot: int, recentre: bool = False
) -> ConfidenceInterval:
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return ConfidenceInterval(value, float("nan"), float("nan"), level, n_boot)
    if recentre:
        draws = draws - draws.mean() + value
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(draws, [alpha, 1.0 - alpha])
    return ConfidenceInterval(float(value), float(lo), float(hi), level, n_boot)


def bootstrap_ci(
    statistic: Callable[..., float],
    *arrays: np.ndarray,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> ConfidenceInterval:
    """Percentile CI of ``statistic(*arrays)`` resampling rows jointly (arrays are paired by row)."""
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError("paired bootstrap needs arrays with the same number of rows")
    value = float(statistic(*arrays))
    if n < 2 or n_boot <= 0:
        return ConfidenceInterval(value, float("nan"), float("nan"), level, 0)
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        draws[b] = statistic(*[np.asarray(a)[idx] for a in arrays])
    return _percentiles(draws, value, level, n_boot)


def bootstrap_two_sample_ci(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    a: np.ndarray,
    b: np.ndarray,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    recentre: bool = False,
) -> ConfidenceInterval:
    """Percentile CI of ``statistic(a, b)`` resampling the rows of ``a`` and ``b`` independently (e.g. FID).

    ``recentre=True`` shifts the bootstrap distribution to have mean ``statistic(a, b)`` before taking
    percentiles. Use it for plug-in distances such as FID: a resample with duplicated rows has a
    smaller effective size, so its FID is biased upwards and plain percentiles can miss the estimate.
    """
    value = float(statistic(a, b))
    if n_boot <= 0:
        return ConfidenceInterval(value, float("nan"), float("nan"), level, 0)
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for i in range(n_boot):
        ia = rng.integers(0, len(a), len(a))
        ib = rng.integers(0, len(b), len(b))
        draws[i] = statistic(a[ia], b[ib])
    return _percentiles(draws, value, level, n_boot, recentre=recentre)


def paired_wilcoxon(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Two-sided Wilcoxon signed-rank test on paired values (NaN pairs dropped).

    Returns statistic, p_value, n (pairs used) and the median difference x - y.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired test needs equal lengths, got {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    out = {"n": int(x.size), "median_difference": float(np.median(x - y)) if x.size else float("nan")}
    if x.size < 2 or np.all(x == y):
        out.update(statistic=float("nan"), p_value=float("nan"))
        return out
    res = stats.wilcoxon(x, y, alternative="two-sided")
    out.update(statistic=float(res.statistic), p_value=float(res.pvalue))
    return out
