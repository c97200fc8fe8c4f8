"""Downstream metrics against hand-computed references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chexgen.downstream.data import decode_rle
from chexgen.downstream.metrics import (
    classification_metrics,
    detection_metrics,
    regression_metrics,
    segmentation_metrics,
)
from chexgen.downstream.stats import summarize, wilcoxon_p
from chexgen.evaluation.metrics import compute_auroc, compute_dice, weighted_f1


def _pairwise_auc(t: np.ndarray, s: np.ndarray) -> float:
    """AUROC as the probability a positive outranks a negative (ties count half)."""
    pos, neg = s[t == 1], s[t == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_matches_pairwise_definition_and_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    t = rng.integers(0, 2, size=(40, 3))
    s = rng.random((40, 3)) + 0.3 * t
    s[:5, 0] = s[5:10, 0]  # some ties
    per = compute_auroc(s, t)
    for j in range(3):
        assert per[j] == pytest.approx(_pairwise_auc(t[:, j], s[:, j]))
        assert per[j] == pytest.approx(roc_auc_score(t[:, j], s[:, j]))
    m = classification_metrics(s, t, ["a", "b", "c"])
    assert m["auroc_macro"] == pytest.approx(np.mean(per))


def test_auroc_undefined_class_is_nan_and_left_out_of_macro():
    t = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    s = np.array([[0.9, 0.1], [0.1, 0.2], [0.8, 0.3], [0.3, 0.4]])
    m = classification_metrics(s, t, ["x", "y"])
    assert m["auroc/x"] == 1.0 and math.isnan(m["auroc/y"])
    assert m["auroc_macro"] == 1.0


def test_weighted_f1_by_hand():
    # class 0: support 3, tp 2, fp 1, fn 1 -> F1 = 2/3; class 1: support 1, tp 1 -> F1 = 1.
    t = np.array([[1, 0], [1, 0], [1, 1], [0, 0]])
    s = np.array([[0.9, 0.1], [0.2, 0.1], [0.7, 0.8], [0.6, 0.2]])
    assert weighted_f1(s, t) == pytest.approx((3 * (2 / 3) + 1 * 1.0) / 4)


def test_dice_on_hand_made_masks_with_siim_convention():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    a[0, :2, :2] = True  # 4 px
    b[0, :2, :1] = True  # 2 px inside -> dice 2*2/(4+2)
    a[1, 0, 0] = True  # truth positive, prediction empty -> 0
    b[2, 3, 3] = True  # truth empty, prediction not -> 0
    # image 3: both empty -> 1
    d = compute_dice(b, a)
    assert d.tolist() == pytest.approx([4 / 6, 0.0, 0.0, 1.0])
    m = segmentation_metrics(b, a)
    assert m["dice"] == pytest.approx((4 / 6 + 1) / 4)
    assert m["dice_pos"] == pytest.approx((4 / 6) / 2)
    assert m["dice_neg"] == pytest.approx(0.5)


def test_map50_on_hand_made_boxes():
    # Two images, one truth each. Detections by score: TP (0.9), FP (0.8), TP (0.7).
    # Precision/recall: (1, .5), (.5, .5), (.667, 1). COCO 101-point interpolated AP:
    # recall 0..0.5 -> precision 1 (51 points), 0.51..1 -> 2/3 (50 points).
    targets = [
        {"boxes": [[10, 10, 20, 20]], "labels": [1]},
        {"boxes": [[30, 30, 40, 40]], "labels": [1]},
    ]
    preds = [
        {"boxes": [[10, 10, 20, 21], [50, 50, 60, 60]], "scores": [0.9, 0.8], "labels": [1, 1]},
        {"boxes": [[31, 30, 40, 40]], "scores": [0.7], "labels": [1]},
    ]
    m = detection_metrics(preds, targets, classes=["Lung Lesion"])
    assert m["map50"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-4)
    assert m["mar50"] == pytest.approx(1.0)
    assert m["ap50/Lung Lesion"] == pytest.approx(m["map50"], abs=1e-6)
    # A box overlapping below IoU 0.5 is a miss.
    miss = [{"boxes": [[15, 15, 25, 25]], "scores": [0.9], "labels": [1]}, {"boxes": [[0, 0, 1, 1]], "scores": [0.1], "labels": [1]}]
    assert detection_metrics(miss, targets)["map50"] == pytest.approx(0.0)


def test_regression_metrics_by_hand():
    m = regression_metrics([0.5, 1, 2, 4], [0, 1, 2, 3])
    assert m["mae"] == pytest.approx((0.5 + 0 + 0 + 1) / 4)
    assert m["mse"] == pytest.approx((0.25 + 1) / 4)
    assert m["pearson"] == pytest.approx(np.corrcoef([0, 1, 2, 3], [0.5, 1, 2, 4])[0, 1])
    assert math.isnan(regression_metrics([0, 1, 2], [1, 1, 1])["pearson"])


def test_rle_decode_siim_convention():
    # 3 wide x 2 high; column-major flat indices: (y0,x0)=0,(y1,x0)=1,(y0,x1)=2,...
    m = decode_rle("1 2 2 1", width=3, height=2)  # pixels 1,2 then 5
    expected = np.zeros((2, 3), bool)
    expected[1, 0] = expected[0, 1] = expected[1, 2] = True
    assert (m == expected).all()
    assert not decode_rle("-1", 3, 2).any()


def test_seed_statistics():
    s = summarize([1.0, 2.0, 3.0, float("nan")])
    assert (s.mean, s.n) == (2.0, 3) and s.sd == pytest.approx(1.0)
    # All five paired differences positive: exact two-sided p = 2 / 2**5.
    assert wilcoxon_p([2, 3, 4, 5, 6], [1, 1, 1, 1, 1]) == pytest.approx(0.0625)
    assert wilcoxon_p([1, 2], [1, 2]) == 1.0
    assert math.isnan(wilcoxon_p([1], [0]))
