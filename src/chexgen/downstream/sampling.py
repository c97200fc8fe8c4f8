"""Choosing which records train a model: fractions, k-shot sets, synthetic mixing, subgroup parity.

Every draw is stratified by a *label key* (the set of positive task classes, mask present or
not, box labels present, or the rounded severity), so a 10 % subset or a real + 2x synthetic
mix keeps the label distribution of the real training set. Draws take an explicit
``numpy.random.Generator`` so a seed reproduces them exactly.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

import numpy as np

from chexgen.data.labels import LABEL_INDEX, labels_to_vector
from chexgen.data.manifest import Record

__all__ = [
    "label_key_fn",
    "age_band",
    "group_value",
    "subsample_fraction",
    "k_shot",
    "MixPlan",
    "mix_synthetic",
    "parity_additions",
]

log = logging.getLogger(__name__)

KeyFn = Callable[[Record], Hashable]
AGE_BANDS = ("19-40", "41-65", "66+")


def label_key_fn(task: str, classes: Sequence[str] = (), mask_name: str | None = None, uncertain_as: float = 1.0) -> KeyFn:
    """The stratum of a record for ``task`` (what "keeping the label distribution" keeps)."""
    if task == "classification":
        idx = [LABEL_INDEX[c] for c in classes]

        def key(r: Record) -> Hashable:
            vec = labels_to_vector(r.labels, uncertain_as=uncertain_as, missing_as=0.0)
            return tuple(c for c, i in zip(classes, idx) if vec[i] > 0.5)

        return key
    if task == "segmentation":
        from chexgen.downstream.data import matching_masks

        return lambda r: bool(matching_masks(r, mask_name))
    if task == "detection":
        return lambda r: tuple(sorted({b.label for b in r.boxes if b.label in classes}))
    if task == "regression":
        return lambda r: None if r.severity is None else int(round(r.severity))
    raise ValueError(f"unknown task {task!r}")


def age_band(age: float | None) -> str | None:
    """The paper's age bands: 19-40, 41-65, 66+ (younger patients: ``<19``)."""
    if age is None:
        return None
    if age < 19:
        return "<19"
    if age <= 40:
        return "19-40"
    if age <= 65:
        return "41-65"
    return "66+"


def group_value(r: Record, attribute: str) -> str | None:
    """A demographic attribute of a record: ``sex``, ``race``, ``age_band`` (or any ``extra`` key)."""
    if attribute == "age_band":
        return age_band(r.age)
    if attribute in ("sex", "race", "view", "dataset"):
        return getattr(r, attribute)
    v = r.extra.get(attribute)
    return None if v is None else str(v)


def _strata(records: Sequence[Record], key: KeyFn) -> dict[Hashable, list[int]]:
    out: dict[Hashable, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        out[key(r)].append(i)
    return dict(sorted(out.items(), key=lambda kv: str(kv[0])))


def subsample_fraction(records: Sequence[Record], fraction: float, key: KeyFn, rng: np.random.Generator) -> list[Record]:
    """A stratified ``fraction`` of ``records`` (at least one per non-empty stratum)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return list(records)
    chosen: list[int] = []
    for idx in _strata(records, key).values():
        n = max(1, int(round(fraction * len(idx))))
        chosen.extend(rng.choice(idx, size=n, replace=False).tolist())
    return [records[i] for i in sorted(chosen)]


def k_shot(records: Sequence[Record], k: int, positives: Callable[[Record], set[str]], classes: Sequence[str], rng: np.random.Generator) -> list[Record]:
    """``k`` records positive for each class plus ``k`` with no positive class (negatives).

    Multi-label records count for every class they are positive for, so a record picked for
    one class may also serve another; the set is drawn greedily in class order.
    """
    order = rng.permutation(len(records)).tolist()
    chosen: list[int] = []
    count = {c: 0 for c in classes}
    negatives = 0
    for i in order:
        pos = positives(records[i]) & set(classes)
        if pos and any(count[c] < k for c in pos):
            chosen.append(i)
            for c in pos:
                count[c] += 1
        elif not pos and negatives < k:
            chosen.append(i)
            negatives += 1
    short = {c: n for c, n in count.items() if n < k}
    if short:
        log.warning("k-shot: fewer than %d positives for %s", k, short)
    return [records[i] for i in sorted(chosen)]


@dataclass
class MixPlan:
    """Which synthetic records join a real set, and where the pool fell short."""

    synthetic: list[Record]
    wanted: dict[str, int] = field(default_factory=dict)
    drawn: dict[str, int] = field(default_factory=dict)
    reused: int = 0  # draws that had to repeat a synthetic record

    @property
    def shortfall(self) -> dict[str, int]:
        return {s: self.wanted[s] - self.drawn.get(s, 0) for s in self.wanted if self.drawn.get(s, 0) < self.wanted[s]}


def mix_synthetic(real: Sequence[Record], pool: Sequence[Record], multiplier: float, key: KeyFn, rng: np.random.Generator, allow_reuse: bool = True) -> MixPlan:
    """Draw ``multiplier`` x len(real) synthetic records with the real set's label distribution.

    Each stratum of the real set with ``c`` records gets ``round(multiplier * c)`` synthetic
    records of the same stratum. A stratum the pool lacks stays short (reported in
    :attr:`MixPlan.shortfall`) rather than being filled with other labels, which would shift
    the distribution; a stratum with too few distinct records repeats them when
    ``allow_reuse`` (counted in :attr:`MixPlan.reused`).
    """
    real_strata = _strata(real, key)
    pool_strata = _strata(pool, key)
    plan = MixPlan(synthetic=[])
    for s, idx in real_strata.items():
        want = int(round(multiplier * len(idx)))
        if want == 0:
            continue
        plan.wanted[str(s)] = want
        have = pool_strata.get(s, [])
        if not have:
            continue
        if want <= len(have):
            pick = rng.choice(have, size=want, replace=False)
        elif allow_reuse:
            pick = np.concatenate([rng.permutation(have), rng.choice(have, size=want - len(have), replace=True)])
            plan.reused += want - len(have)
        else:
            pick = rng.permutation(have)
        plan.drawn[str(s)] = len(pick)
        plan.synthetic.extend(pool[int(i)] for i in pick)
    if plan.shortfall:
        log.warning("synthetic pool short for label strata %s", plan.shortfall)
    return plan


def parity_additions(real: Sequence[Record], pool: Sequence[Record], attributes: Sequence[str], rng: np.random.Generator) -> MixPlan:
    """Synthetic records that lift every subgroup (joint ``attributes``) to the largest group's size.

    Groups are the combinations seen in ``real`` (records missing an attribute are left out);
    additions come from pool records of the same combination, repeating them if needed.
    """
    def gkey(r: Record):
        vals = tuple(group_value(r, a) for a in attributes)
        return None if any(v is None for v in vals) else vals

    real_groups = {g: idx for g, idx in _strata(real, gkey).items() if g is not None}
    if not real_groups:
        return MixPlan(synthetic=[])
    target = max(len(v) for v in real_groups.values())
    pool_groups = _strata(pool, gkey)
    plan = MixPlan(synthetic=[])
    for g, idx in real_groups.items():
        want = target - len(idx)
        name = "&".join(f"{a}={v}" for a, v in zip(attributes, g))
        if want <= 0:
            continue
        plan.wanted[name] = want
        have = pool_groups.get(g, [])
        if not have:
            continue
        pick = rng.choice(have, size=want, replace=want > len(have))
        plan.reused += max(0, want - len(have))
        plan.drawn[name] = want
        plan.synthetic.extend(pool[int(i)] for i in pick)
    if plan.shortfall:
        log.warning("synthetic pool lacks subgroups %s for parity", plan.shortfall)
    return plan
