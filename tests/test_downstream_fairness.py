"""The fairness report recovers a gap planted in a hand-built biased predictor."""

from __future__ import annotations

import numpy as np
import pytest

from chexgen.data.manifest import Record
from chexgen.downstream.fairness import gap_summary, subgroup_correlation, subgroup_metrics


def _cohort(n: int, seed: int):
    rng = np.random.default_rng(seed)
    records, targets = [], []
    for i in range(n):
        sex = "F" if i % 2 else "M"
        age = float(rng.choice([30, 50, 75]))
        race = str(rng.choice(["White", "Black"]))
        records.append(Record(id=str(i), sex=sex, age=age, race=race))
        targets.append(rng.integers(0, 2, size=2))
    return records, np.asarray(targets)


def _biased_scores(records, targets, rng, noisy_group):
    """Perfect scores except in ``noisy_group`` (a record predicate), where scores are coin flips."""
    scores = np.where(targets == 1, 0.9, 0.1).astype(float)
    for i, r in enumerate(records):
        if noisy_group(r):
            scores[i] = rng.random(targets.shape[1])
    return scores


def test_planted_gap_is_recovered():
    records, targets = _cohort(600, seed=0)
    rng = np.random.default_rng(1)
    scores = _biased_scores(records, targets, rng, lambda r: r.sex == "F" and r.age > 65)
    groups = {g.group: g for g in subgroup_metrics(records, targets, scores, ["sex", "age_band", "race"], intersections=True)}

    # Single attributes: women and the 66+ band are worse than men and the other bands.
    assert groups["sex=M"].auroc == 1.0 and groups["sex=M"].f1_weighted == 1.0
    assert groups["sex=F"].auroc < 0.95
    assert groups["age_band=66+"].auroc < groups["age_band=19-40"].auroc == 1.0
    # The intersection isolates the planted group at chance level.
    planted = groups["sex=F&age_band=66+"]
    assert planted.auroc == pytest.approx(0.5, abs=0.1)
    assert groups["sex=M&age_band=66+"].auroc == 1.0
    # Race was not involved: no gap there.
    assert abs(groups["race=White"].auroc - groups["race=Black"].auroc) < 0.06

    summary = gap_summary(list(groups.values()), "auroc", min_size=10)
    assert summary["worst_group"] == "sex=F&age_band=66+"
    assert summary["best"] == 1.0
    assert summary["gap"] == pytest.approx(1.0 - planted.auroc)
    by_sex = gap_summary(list(groups.values()), "auroc", min_size=10, attribute="sex")
    assert by_sex["worst_group"] == "sex=F" and by_sex["best_group"] == "sex=M"


def test_small_groups_are_left_out_of_the_gap():
    records, targets = _cohort(200, seed=2)
    records[0].race = "Other"  # a group of one
    scores = np.where(targets == 1, 0.9, 0.1).astype(float)
    scores[0] = 1 - scores[0]
    groups = subgroup_metrics(records, targets, scores, ["race"], intersections=False)
    assert any(g.group == "race=Other" and g.n == 1 for g in groups)
    assert gap_summary(groups, "f1_weighted", min_size=10)["gap"] == 0.0


def test_real_and_synthetic_subgroup_metrics_correlate_when_the_bias_is_shared():
    records, targets = _cohort(900, seed=3)
    srecords, stargets = _cohort(900, seed=4)
    rng = np.random.default_rng(5)
    # Same predictor weakness on both sets: noisier the older the patient.
    def weak(r):
        return r.age > 65 and rng.random() < 0.8 or (40 < r.age <= 65 and rng.random() < 0.35)

    real = subgroup_metrics(records, targets, _biased_scores(records, targets, rng, weak), ["sex", "age_band", "race"])
    syn = subgroup_metrics(srecords, stargets, _biased_scores(srecords, stargets, rng, weak), ["sex", "age_band", "race"])
    res = subgroup_correlation(real, syn, "auroc", min_size=10)
    assert res["groups"] >= 15 and res["pearson_r"] > 0.8
    # A synthetic set without the weakness gives no such agreement signal.
    flat = subgroup_metrics(srecords, stargets, np.where(stargets == 1, 0.9, 0.1).astype(float), ["sex", "age_band", "race"])
    assert np.isnan(subgroup_correlation(real, flat, "auroc")["pearson_r"])
