"""Summaries across seeds: mean +- sd and the two-sided Wilcoxon signed-rank test.

Runs are paired by seed (same seed, same real subset), which is what makes a paired
signed-rank test the right one. With n paired runs the smallest attainable two-sided p is
2 / 2**n (0.0625 for the paper's 5 seeds), so "p < 0.05" needs at least 6 seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from chexgen.evaluation.stats import paired_wilcoxon

__all__ = ["Summary", "summarize", "wilcoxon_p", "format_mean_sd"]


@dataclass
class Summary:
    mean: float
    sd: float
    n: int

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "sd": self.sd, "n": self.n}


def summarize(values: Sequence[float]) -> Summary:
    """Mean and sample standard deviation (ddof=1; 0 for a single run) of the finite values."""
    vals = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if len(vals) == 0:
        return Summary(float("nan"), float("nan"), 0)
    return Summary(float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0, int(len(vals)))


def wilcoxon_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p of paired runs ``a`` vs ``b`` (nan if fewer than 2 pairs).

    Pairs with a nan (or None) on either side are dropped; identical runs (all differences zero)
    give p = 1 here, where :func:`chexgen.evaluation.stats.paired_wilcoxon` (the test itself)
    leaves it undefined: a seed table reads "no difference" rather than "n/a".
    """
    pairs = np.asarray([(np.nan if u is None else u, np.nan if v is None else v) for u, v in zip(a, b)],
                       dtype=np.float64).reshape(-1, 2)
    x, y = pairs[:, 0], pairs[:, 1]
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 2:
        return float("nan")
    if np.allclose(x[keep] - y[keep], 0):
        return 1.0
    return paired_wilcoxon(x[keep], y[keep])["p_value"]


def format_mean_sd(s: Summary, digits: int = 3) -> str:
    if s.n == 0:
        return "n/a"
    return f"{s.mean:.{digits}f} ± {s.sd:.{digits}f}"
