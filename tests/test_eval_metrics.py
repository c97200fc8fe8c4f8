"""Evaluation metrics against closed forms and reference implementations (scipy, sklearn, skimage, pytorch-msssim)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy import stats
from skimage.metrics import structural_similarity
from sklearn.metrics import roc_auc_score

from chexgen.evaluation import (
    DiversityMetric,
    FIDMetric,
    best_box_iou,
    bootstrap_ci,
    bootstrap_two_sample_ci,
    boxes_to_mask,
    compute_diversity,
    compute_fid,
    compute_kid,
    compute_mask_adherence,
    compute_memorisation,
    compute_per_class_auroc,
    compute_precision_recall,
    compute_score_correlation,
    decode_rle,
    dice_iou,
    frechet_distance,
    ms_ssim_pairs,
    paired_wilcoxon,
    ssim_pairs,
)


def _random_spd(rng, d, scale=1.0):
    a = rng.normal(size=(d, d))
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


# ------------------------------------------------------------------ FID / KID
def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = ((mu1 - mu2) ** 2).sum() + (v1 + v2 - 2 * np.sqrt(v1 * v2)).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_matches_scipy_sqrtm_on_full_covariances():
    rng = np.random.default_rng(1)
    d = 40
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d, 2.0)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)


def test_fid_of_samples_converges_to_closed_form():
    rng = np.random.default_rng(2)
    d, n = 8, 40000
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d, 0.5)
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    x = rng.multivariate_normal(mu1, s1, size=n)
    y = rng.multivariate_normal(mu2, s2, size=n)
    truth = frechet_distance(mu1, s1, mu2, s2)
    assert compute_fid(x, y) == pytest.approx(truth, rel=0.03)


def test_fid_self_is_zero_and_both_paths_agree():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 128))  # n < d: sample-space path
    y = rng.normal(size=(80, 128)) * 1.5 + 0.2
    assert compute_fid(x, x) == pytest.approx(0.0, abs=1e-8)
    assert compute_fid(x, y, method="sample") == pytest.approx(compute_fid(x, y, method="feature"), rel=1e-7)
    assert compute_fid(x, y) == pytest.approx(compute_fid(y, x), rel=1e-9)
    with pytest.raises(ValueError):
        compute_fid(x, y[:, :10])


def test_fid_accumulator_matches_one_shot():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(300, 16)), rng.normal(size=(250, 16)) + 0.3
    m = FIDMetric()
    for i in range(0, 300, 64):
        m.update(real=torch.from_numpy(x[i : i + 64]))
    for i in range(0, 250, 50):
        m.update(synthetic=y[i : i + 50])
    assert m.aggregate() == pytest.approx(compute_fid(x, y), rel=1e-9)


def test_kid_is_near_zero_for_same_distribution_and_positive_when_shifted():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(400, 32)), rng.normal(size=(400, 32))
    same, _ = compute_kid(x, y, subsets=20, subset_size=200)
    shifted, _ = compute_kid(x, y + 1.0, subsets=20, subset_size=200)
    assert abs(same) < 0.05
    assert shifted > 0.5


# --------------------------------------------------------- precision / recall
def test_precision_recall_identical_and_disjoint_sets():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(100, 8))
    same = compute_precision_recall(x, x.copy(), k=3)
    assert same.precision == 1.0 and same.recall == 1.0 and same.coverage == 1.0
    far = compute_precision_recall(x, x + 100.0, k=3)
    assert far.precision == 0.0 and far.recall == 0.0 and far.density == 0.0
    # a mode-collapsed synthetic set: high precision, low recall
    collapsed = x[:5].repeat(20, 0) + 1e-3 * rng.normal(size=(100, 8))
    pr = compute_precision_recall(x, collapsed, k=3)
    assert pr.precision > 0.9 and pr.recall < 0.3


# ------------------------------------------------------ SSIM / MS-SSIM / diversity
def _smooth_images(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size // 8, size // 8, generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x + 0.05 * torch.rand(n, 1, size, size, generator=g)).clamp(0, 1)


def test_ssim_matches_scikit_image():
    a, b = _smooth_images(3, 64, 0), _smooth_images(3, 64, 1)
    ours = ssim_pairs(a, b)
    for i in range(3):
        ref = structural_similarity(a[i, 0].double().numpy(), b[i, 0].double().numpy(), data_range=1.0,
                                    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert ours[i] == pytest.approx(ref, abs=2e-3)
    assert ssim_pairs(a, a) == pytest.approx(np.ones(3), abs=1e-5)


def test_ms_ssim_matches_pytorch_msssim_and_diversity_groups():
    from pytorch_msssim import ms_ssim

    x = _smooth_images(5, 176, 2)
    groups = ["p1", "p1", "p1", "p2", "p2"]
    div = compute_diversity(x, groups)
    pairs = {"p1": [(0, 1), (0, 2), (1, 2)], "p2": [(3, 4)]}
    for g, pp in pairs.items():
        ref = np.mean([ms_ssim(x[i : i + 1], x[j : j + 1], data_range=1.0).item() for i, j in pp])
        assert div.per_group_ms_ssim[g] == pytest.approx(ref, abs=1e-5)
        ref_s = np.mean(ssim_pairs(x[[i for i, _ in pp]], x[[j for _, j in pp]]))
        assert div.per_group_ssim[g] == pytest.approx(ref_s, abs=1e-6)
    assert div.ms_ssim == pytest.approx(np.mean(list(div.per_group_ms_ssim.values())))
    assert div.n_groups == 2 and div.n_pairs == 4
    acc = DiversityMetric()
    acc.update(x[:2], groups[:2])
    acc.update(x[2:], groups[2:])  # pairs that span batches still count
    assert acc.aggregate().per_group_ssim == pytest.approx(div.per_group_ssim)
    # identical seeds = no diversity
    same = compute_diversity(x[[0, 0]], ["a", "a"])
    assert same.ssim == pytest.approx(1.0, abs=1e-5)
    # small images: MS-SSIM shrinks its window instead of failing
    assert np.isfinite(ms_ssim_pairs(x[:2, :, :64, :64], x[2:4, :, :64, :64])).all()


# ---------------------------------------------------------- factual correctness
def test_pearson_and_auroc_match_scipy_and_sklearn():
    rng = np.random.default_rng(7)
    real = rng.random((30, 14))
    syn = 0.6 * real + 0.4 * rng.random((30, 14))
    syn[:, 3] = np.nan  # a class the classifier does not predict
    res = compute_score_correlation(real, syn)
    keep = np.isfinite(syn.ravel())
    ref = stats.pearsonr(real.ravel()[keep], syn.ravel()[keep])
    assert res.pearson == pytest.approx(ref.statistic, abs=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-6)
    assert res.per_class["No Finding"] == pytest.approx(stats.pearsonr(real[:, 0], syn[:, 0]).statistic)

    labels = (rng.random((30, 14)) > 0.5).astype(float)
    labels[0, 2] = -1  # uncertain counts as negative by default
    labels[1, 2] = np.nan  # unknown is dropped
    labels[:, 5] = 1  # one class only: undefined
    au = compute_per_class_auroc(syn, labels)
    keep2 = np.isfinite(labels[:, 2])
    y2 = np.where(labels[keep2, 2] == -1, 0, labels[keep2, 2])
    assert au["Cardiomegaly"] == pytest.approx(roc_auc_score(y2, syn[keep2, 2]))
    assert np.isnan(au["Edema"]) and np.isnan(au["Lung Opacity"])
    assert au["No Finding"] == pytest.approx(roc_auc_score(labels[:, 0], syn[:, 0]))


# --------------------------------------------------------------- control adherence
def test_dice_iou_and_boxes():
    a = np.zeros((2, 10, 10))
    b = np.zeros((2, 10, 10))
    a[0, :5, :] = 1  # 50 px
    b[0, :, :] = 1  # 100 px, overlap 50
    d, i = dice_iou(a, b)
    assert d[0] == pytest.approx(2 * 50 / 150) and i[0] == pytest.approx(0.5)
    assert d[1] == 1.0 and i[1] == 1.0  # both empty
    m = boxes_to_mask([(2, 3, 6, 5)], 10, 10)
    assert m.sum() == 8 and m[3, 2] and not m[5, 2]
    assert best_box_iou([(0, 0, 10, 10)], [(0, 0, 10, 5), (50, 50, 60, 60)]) == pytest.approx(0.5)
    assert best_box_iou([(0, 0, 1, 1)], []) == 0.0
    res = compute_mask_adherence(torch.from_numpy(a[:, None]), b[:, None])
    assert res.dice == pytest.approx((2 / 3 + 1) / 2)


def test_decode_rle_siim_convention():
    # 3x3 image, column-major: pixels 1,2 then 5 (relative start 2 after the first run ends at 3)
    m = decode_rle("1 2 2 1", width=3, height=3)
    flat = m.T.ravel()
    assert flat.tolist() == [0, 1, 1, 0, 0, 1, 0, 0, 0]
    assert not decode_rle("-1", 4, 4).any()


# ----------------------------------------------------------------- memorisation
def test_planted_copy_is_flagged_as_memorised():
    train = _smooth_images(20, 64, 10)
    syn = _smooth_images(6, 64, 11)
    syn[4] = train[13]  # exact copy
    rng = np.random.default_rng(8)
    train_f = rng.normal(size=(20, 32))
    syn_f = rng.normal(size=(6, 32))
    syn_f[4] = train_f[13]
    res = compute_memorisation(syn_f, train_f, syn, train)
    assert res.flagged == [False, False, False, False, True, False]
    assert res.ssim_nn[4] == 13 and res.ssim[4] == pytest.approx(1.0, abs=1e-5)
    assert res.feature_nn[4] == 13 and res.feature_distance[4] == pytest.approx(0.0, abs=1e-6)
    assert res.closest_pairs(1) == [4]
    # the copy is found by pixels even when the features disagree
    syn_f[4] = rng.normal(size=32)
    res2 = compute_memorisation(syn_f, train_f, syn, train)
    assert res2.flagged[4] and res2.ssim_nn[4] == 13


# ------------------------------------------------------------------- statistics
def test_bootstrap_ci_and_wilcoxon():
    rng = np.random.default_rng(9)
    x = rng.normal(loc=2.0, size=400)
    ci = bootstrap_ci(np.mean, x, n_boot=500, seed=0)
    se = x.std(ddof=1) / np.sqrt(x.size)
    assert ci.low < ci.value < ci.high
    assert ci.high - ci.low == pytest.approx(2 * 1.96 * se, rel=0.2)
    assert bootstrap_ci(np.mean, x, n_boot=100, seed=3) == bootstrap_ci(np.mean, x, n_boot=100, seed=3)

    a, b = rng.normal(size=(120, 4)), rng.normal(size=(120, 4)) + 0.5
    fci = bootstrap_two_sample_ci(compute_fid, a, b, n_boot=50, recentre=True)
    assert fci.low <= fci.value <= fci.high

    u, v = rng.normal(size=25), rng.normal(size=25) + 0.8
    w = paired_wilcoxon(u, v)
    ref = stats.wilcoxon(u, v)
    assert w["p_value"] == pytest.approx(ref.pvalue) and w["statistic"] == pytest.approx(ref.statistic)
    assert w["n"] == 25 and np.isnan(paired_wilcoxon(u, u)["p_value"])


# ------------------------------------------------------------ one metrics layer
def test_auroc_by_hand_with_uncertain_unknown_and_soft_labels():
    from chexgen.evaluation.metrics import compute_auroc

    scores = np.array([0.1, 0.4, 0.35, 0.8])
    # positives {0.35, 0.8} vs negatives {0.1, 0.4}: 3 of 4 pairs ranked right
    assert compute_auroc(scores, [0, 0, 1, 1]).tolist() == [0.75]
    assert compute_auroc(scores, [0, 0, 1, 1]) != compute_auroc([0, 0, 1, 1], scores)  # prediction first
    # -1 counts as negative by default, as positive with uncertain_as=1; NaN rows are left out
    assert compute_auroc(scores, [0, 0, -1, 1]).tolist() == [1.0]  # 0.8 above 0.1, 0.4 and 0.35
    assert compute_auroc(scores, [0, 0, -1, 1], uncertain_as=1.0).tolist() == [0.75]
    assert compute_auroc(scores, [0, np.nan, 1, 1]).tolist() == [1.0]
    assert compute_auroc(scores, [0, 0.5, 1, 1]).tolist() == [0.75]  # a soft 0.5 target is not positive
    both = compute_auroc(np.stack([scores, scores], 1), np.array([[0, 1], [0, 1], [1, 1], [1, 1]]))
    assert both[0] == 0.75 and np.isnan(both[1])  # one class only: undefined


def test_pearson_test_matches_scipy_and_needs_three_pairs():
    from chexgen.evaluation.metrics import pearson_test

    x, y = np.array([1.0, 2.0, 3.0, 4.0, np.nan]), np.array([1.0, 3.0, 2.0, 5.0, 1.0])
    ref = stats.pearsonr(x[:4], y[:4])
    r, p = pearson_test(x, y)
    assert r == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)
    assert all(np.isnan(v) for v in pearson_test([1.0, 2.0], [2.0, 1.0]))
    assert all(np.isnan(v) for v in pearson_test([1.0, 1.0, 1.0], [2.0, 1.0, 3.0]))


def test_metrics_are_one_implementation_used_by_every_caller():
    import chexgen.downstream.metrics as downstream
    import chexgen.evaluation as ev
    import chexgen.evaluation.control as control
    import chexgen.evaluation.metrics as metrics

    assert ev.dice_iou is metrics.dice_iou is control.dice_iou
    assert ev.compute_per_class_auroc is metrics.compute_per_class_auroc
    assert downstream.compute_auroc is metrics.compute_auroc and downstream.compute_dice is metrics.compute_dice
    assert not hasattr(downstream, "auroc_per_class") and not hasattr(downstream, "dice_scores")
