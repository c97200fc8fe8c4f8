"""Stratified subsets, synthetic mixing that keeps the label distribution, k-shot and parity."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from chexgen.data.manifest import Record
from chexgen.downstream.sampling import (
    age_band,
    k_shot,
    label_key_fn,
    mix_synthetic,
    parity_additions,
    subsample_fraction,
)

CLASSES = ("Cardiomegaly", "Edema")


def _records(n: int, prefix: str, p_cardio: float, p_edema: float, seed: int, synthetic: bool = False) -> list[Record]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        labels = {"Cardiomegaly": int(rng.random() < p_cardio), "Edema": int(rng.random() < p_edema)}
        out.append(Record(id=f"{prefix}{i}", image=f"{prefix}{i}.png", labels=labels, synthetic=synthetic,
                          sex="F" if rng.random() < 0.3 else "M", age=float(rng.integers(20, 90))))
    return out


def _prevalence(records: list[Record]) -> np.ndarray:
    return np.array([[r.labels.get(c, 0) for c in CLASSES] for r in records]).mean(0)


def test_mixing_keeps_label_distribution_of_the_real_set():
    real = _records(60, "r", 0.3, 0.15, seed=0)
    # The pool has a very different label distribution; the mix must not inherit it.
    pool = _records(600, "s", 0.7, 0.6, seed=1, synthetic=True)
    key = label_key_fn("classification", CLASSES)
    for k in (1, 2):
        plan = mix_synthetic(real, pool, k, key, np.random.default_rng(0))
        assert len(plan.synthetic) == k * len(real)
        assert not plan.shortfall and plan.reused == 0
        assert Counter(key(r) for r in plan.synthetic) == Counter({s: k * c for s, c in Counter(key(r) for r in real).items()})
        np.testing.assert_allclose(_prevalence(real + plan.synthetic), _prevalence(real))
        assert all(r.synthetic for r in plan.synthetic)
    # Reproducible by seed.
    a = mix_synthetic(real, pool, 1, key, np.random.default_rng(5)).synthetic
    b = mix_synthetic(real, pool, 1, key, np.random.default_rng(5)).synthetic
    assert [r.id for r in a] == [r.id for r in b]


def test_mixing_reports_missing_strata_instead_of_shifting_labels():
    real = _records(40, "r", 0.5, 0.0, seed=2)
    pool = [r for r in _records(200, "s", 0.5, 0.0, seed=3) if r.labels["Cardiomegaly"] == 0]
    plan = mix_synthetic(real, pool, 1, label_key_fn("classification", CLASSES), np.random.default_rng(0))
    n_pos = sum(r.labels["Cardiomegaly"] for r in real)
    assert plan.shortfall == {str(("Cardiomegaly",)): n_pos}
    assert all(r.labels["Cardiomegaly"] == 0 for r in plan.synthetic)


def test_fraction_is_stratified_and_k_shot_has_k_per_class():
    real = _records(200, "r", 0.3, 0.2, seed=4)
    key = label_key_fn("classification", CLASSES)
    sub = subsample_fraction(real, 0.25, key, np.random.default_rng(0))
    assert 40 <= len(sub) <= 60
    np.testing.assert_allclose(_prevalence(sub), _prevalence(real), atol=0.03)
    shots = k_shot(real, 3, lambda r: set(key(r)), CLASSES, np.random.default_rng(0))
    for c in CLASSES:
        assert sum(r.labels[c] for r in shots) >= 3
    assert sum(1 for r in shots if not key(r)) == 3


def test_parity_lifts_every_group_to_the_largest():
    real = _records(100, "r", 0.3, 0.2, seed=5)
    pool = _records(400, "s", 0.3, 0.2, seed=6, synthetic=True)
    plan = parity_additions(real, pool, ["sex"], np.random.default_rng(0))
    counts = Counter(r.sex for r in real + plan.synthetic)
    assert counts["F"] == counts["M"]
    assert {r.sex for r in plan.synthetic} == {"F"}


@pytest.mark.parametrize("age,band", [(18, "<19"), (19, "19-40"), (40, "19-40"), (40.5, "41-65"), (65, "41-65"), (66, "66+"), (None, None)])
def test_age_bands(age, band):
    assert age_band(age) == band


def test_unlabelled_synthetic_records_get_labels_from_their_prompts():
    from chexgen.downstream.config import label_from_prompts

    recs = [
        Record(id="a", synthetic=True, provenance={"prompt": "sex:Male, age:71.0, race:Black. Moderate cardiomegaly."}),
        Record(id="b", synthetic=True, impression="Small right pleural effusion. No pneumothorax."),
        Record(id="c", synthetic=True, labels={"Edema": 1}, impression="Cardiomegaly."),
    ]
    out = label_from_prompts(recs, "missing")
    assert out[0].labels["Cardiomegaly"] == 1
    assert out[1].labels["Pleural Effusion"] == 1 and out[1].labels["Pneumothorax"] == 0
    assert out[2].labels == {"Edema": 1}  # already labelled: kept
