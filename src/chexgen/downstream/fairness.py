"""Subgroup performance: per-group metrics, worst group, best-worst gap, real vs synthetic agreement.

Groups are single attributes (``sex=F``, ``age_band=66+``, ``race=Black``) and, when asked,
their pairwise intersections (``sex=F&age_band=66+``). Each group gets weighted F1 (at a score
threshold) and macro AUROC over the classes defined in that group. Groups smaller than
``min_size`` are listed but left out of worst-group and gap figures, whose noise would
otherwise dominate them.

Bias detection follows the paper: if a model's subgroup metrics on a synthetic test set
correlate with those on the real test set (Pearson r over the groups), synthetic data can
reveal the model's subgroup weaknesses without real test data.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from chexgen.data.manifest import Record
from chexgen.downstream.sampling import group_value
from chexgen.evaluation.metrics import compute_auroc, finite_mean, pearson_test, weighted_f1

__all__ = ["GroupMetric", "subgroup_metrics", "gap_summary", "subgroup_correlation"]


@dataclass
class GroupMetric:
    group: str  # e.g. "sex=F" or "sex=F&age_band=66+"
    attribute: str  # e.g. "sex" or "sex&age_band"
    n: int
    positives: int
    f1_weighted: float
    auroc: float

    def to_dict(self) -> dict:
        return asdict(self)


def _groups(records: Sequence[Record], attributes: Sequence[str], intersections: bool) -> dict[tuple[str, str], list[int]]:
    combos: list[tuple[str, ...]] = [(a,) for a in attributes]
    if intersections:
        combos += list(itertools.combinations(attributes, 2))
    out: dict[tuple[str, str], list[int]] = {}
    for combo in combos:
        for i, r in enumerate(records):
            vals = [group_value(r, a) for a in combo]
            if any(v is None for v in vals):
                continue
            name = "&".join(f"{a}={v}" for a, v in zip(combo, vals))
            out.setdefault(("&".join(combo), name), []).append(i)
    return dict(sorted(out.items()))


def subgroup_metrics(
    records: Sequence[Record],
    targets: np.ndarray,
    scores: np.ndarray,
    attributes: Sequence[str] = ("sex", "age_band", "race"),
    intersections: bool = True,
    threshold: float = 0.5,
) -> list[GroupMetric]:
    """Metrics of every subgroup; ``targets`` / ``scores`` are (N, C) in ``records`` order."""
    targets = np.asarray(targets)
    scores = np.asarray(scores)
    if targets.ndim == 1:
        targets, scores = targets[:, None], scores[:, None]
    out = []
    for (attr, name), idx in _groups(records, attributes, intersections).items():
        t, s = targets[idx], scores[idx]
        out.append(
            GroupMetric(
                group=name,
                attribute=attr,
                n=len(idx),
                positives=int((t > 0.5).sum()),
                f1_weighted=weighted_f1(s, t, threshold),
                auroc=finite_mean(compute_auroc(s, t)),
            )
        )
    return out


def gap_summary(groups: Sequence[GroupMetric], metric: str = "auroc", min_size: int = 10, attribute: str | None = None) -> dict:
    """Worst group, best group and their gap for ``metric`` over groups of at least ``min_size``.

    ``attribute`` restricts to one grouping (e.g. ``"sex"``); ``None`` uses every group listed.
    """
    pool = [g for g in groups if g.n >= min_size and (attribute is None or g.attribute == attribute)]
    pool = [g for g in pool if not math.isnan(getattr(g, metric))]
    if not pool:
        return {"metric": metric, "worst_group": None, "worst": float("nan"), "best_group": None, "best": float("nan"), "gap": float("nan")}
    worst = min(pool, key=lambda g: getattr(g, metric))
    best = max(pool, key=lambda g: getattr(g, metric))
    return {
        "metric": metric,
        "worst_group": worst.group,
        "worst": getattr(worst, metric),
        "best_group": best.group,
        "best": getattr(best, metric),
        "gap": getattr(best, metric) - getattr(worst, metric),
    }


def subgroup_correlation(real: Sequence[GroupMetric], synthetic: Sequence[GroupMetric], metric: str = "f1_weighted", min_size: int = 10) -> dict:
    """Pearson r between real-test and synthetic-test values of ``metric`` over the shared groups."""
    syn = {g.group: g for g in synthetic if g.n >= min_size}
    pairs = [(getattr(g, metric), getattr(syn[g.group], metric)) for g in real if g.n >= min_size and g.group in syn]
    pairs = [(a, b) for a, b in pairs if not (math.isnan(a) or math.isnan(b))]
    r, p = pearson_test(*np.asarray(pairs, dtype=np.float64).reshape(-1, 2).T, min_pairs=3)
    return {"metric": metric, "pearson_r": r, "p": p, "groups": len(pairs)}
