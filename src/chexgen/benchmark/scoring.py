"""Every model scored with the same extractors against the same real images, and compared with each other.

Per model (:func:`score_model`), with percentile bootstrap CIs (:mod:`chexgen.evaluation.stats`):

* per extractor ``e``: FD (FID for CLIP / XRV / Inception features), KID (cubic kernel, unbiased),
  precision / recall / density / coverage (Naeem et al. 2020, k = ``knn_k``);
* MS-SSIM among the images of one prompt (diversity, lower = more diverse);
* with a classifier that gives 14-class scores (XRV preferred, else the first that does): Pearson r of
  scores on each synthetic image and on its real source image (the paper's factual correctness),
  macro AUROC against the prompts' labels;
* memorisation (nearest training image by the first extractor's features and by SSIM) and, with a
  re-identification network, the re-ID score against every training image;
* wall time and denoiser samples ("model calls") per image.

Per prompt, for the paired tests (:func:`compare_models`): MS-SSIM, the classifier score error
``mean |s_syn - s_real|`` and, per extractor, the cosine distance of each synthetic image to its real
source; the best model by mean is compared with every other by a two-sided Wilcoxon signed-rank test
over the prompts both have. Per extractor (:func:`compare_distances`): the Fréchet distance of every model
against the best one's, by a paired bootstrap (the prompts both models have and the real images resampled
once per draw for both), because two FD intervals that overlap say little about the difference of the two
FDs on the same prompts and seeds. Per finding (:func:`finding_breakdown`): FD on the first extractor between
the real and synthetic images of that finding, the mean distance to the source, and AUROC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from chexgen.benchmark.config import BenchmarkConfig, ExtractorEntry
from chexgen.benchmark.sets import ImageSet
from chexgen.evaluation import (
    bootstrap_ci,
    bootstrap_two_sample_ci,
    compute_diversity,
    compute_fid,
    compute_kid,
    compute_memorisation,
    compute_per_class_auroc,
    compute_precision_recall,
    compute_score_correlation,
    paired_wilcoxon,
    pearson,
)
from chexgen.evaluation.matching import label_matrix
from chexgen.evaluation.plots import finding_of
from chexgen.evaluation.stats import ConfidenceInterval

__all__ = ["ModelScores", "score_model", "compare_models", "compare_distances", "finding_breakdown", "metric_label",
           "score_extractor", "PER_PROMPT_BETTER"]

_FID_KINDS = ("clip", "xrv", "inception")
#: per-prompt measures and their direction (all: lower is better)
PER_PROMPT_BETTER = "lower"


@dataclass
class ModelScores:
    """One model's metrics (key -> value, CI, direction, description, label), per-prompt values and details."""

    name: str
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_prompt: dict[str, dict[int, float]] = field(default_factory=dict)
    per_class_auroc: dict[str, float] = field(default_factory=dict)
    memorisation: dict[str, Any] = field(default_factory=dict)
    reid: dict[str, Any] | None = None
    timing: dict[str, float] = field(default_factory=dict)
    n_images: int = 0
    n_matched: int = 0


def metric_label(key: str, entries: Sequence[ExtractorEntry]) -> str:
    """Column label of a metric key (``fd_rad-dino`` -> ``FD-RAD-DINO``, ``fd_clip`` -> ``FID-CLIP``)."""
    fixed = {"ms_ssim": "MS-SSIM", "pearson": "Pearson", "auroc_macro": "AUROC", "memorised_fraction": "memorised",
             "reid_fraction": "re-ID match", "reid_score_mean": "re-ID mean", "seconds_per_image": "s / image",
             "model_calls_per_image": "calls / image"}
    if key in fixed:
        return fixed[key]
    head, _, ext = key.partition("_")
    kinds = {e.name: e.kind for e in entries}
    names = {"fd": "FID" if kinds.get(ext) in _FID_KINDS else "FD", "kid": "KID", "precision": "P", "recall": "R",
             "density": "D", "coverage": "C"}
    return f"{names.get(head, head)}-{ext.upper()}"


def score_extractor(entries: Sequence[ExtractorEntry], real: ImageSet) -> str | None:
    """The extractor whose class scores measure factual correctness: XRV if configured, else the first with scores."""
    with_scores = [e for e in entries if real.features[e.name].scores is not None]
    pick = [e for e in with_scores if e.kind == "xrv"] or with_scores
    return pick[0].name if pick else None


def _entry(ci: ConfidenceInterval | float, better: str, description: str, label: str) -> dict[str, Any]:
    d = ci.as_dict() if isinstance(ci, ConfidenceInterval) else {"value": float(ci), "low": None, "high": None}
    return {**d, "better": better, "description": description, "label": label}


def _prdc_cis(rf: np.ndarray, sf: np.ndarray, k: int, n_boot: int, level: float, seed: int) -> dict[str, Any]:
    """Precision / recall / density / coverage with one bootstrap (each draw resamples both sets, recentred)."""
    value = compute_precision_recall(rf, sf, k).as_dict()
    rng = np.random.default_rng(seed)
    draws = {key: [] for key in value}
    for _ in range(max(0, n_boot)):
        ia, ib = rng.integers(0, len(rf), len(rf)), rng.integers(0, len(sf), len(sf))
        for key, v in compute_precision_recall(rf[ia], sf[ib], k).as_dict().items():
            draws[key].append(v)
    alpha = (1 - level) / 2
    out = {}
    for key, v in value.items():
        d = np.asarray(draws[key], np.float64)
        d = d[np.isfinite(d)]
        # recentred on the estimate: duplicated rows in a resample shrink k-NN radii, a bias of the draws
        d = d - d.mean() + v if d.size else d
        if key != "density":  # shares stay within [0, 1]
            d = np.clip(d, 0.0, 1.0)
        lo, hi = (np.quantile(d, [alpha, 1 - alpha]) if d.size else (float("nan"), float("nan")))
        out[key] = ConfidenceInterval(float(v), float(lo), float(hi), level, int(d.size))
    return out


def _kid_ci(rf: np.ndarray, sf: np.ndarray, cfg: BenchmarkConfig) -> tuple[ConfidenceInterval, float]:
    m = min(len(rf), len(sf))
    kid, std = compute_kid(rf, sf, subsets=cfg.kid_subsets, subset_size=m, seed=cfg.seed)
    ci = bootstrap_two_sample_ci(lambda a, b: compute_kid(a, b, subsets=1, subset_size=m, seed=cfg.seed)[0], rf, sf,
                                 n_boot=cfg.distribution_bootstrap, level=cfg.level, seed=cfg.seed, recentre=True)
    return ConfidenceInterval(kid, ci.low + kid - ci.value, ci.high + kid - ci.value, ci.level, ci.n_boot), std


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    an = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    return 1.0 - (an * bn).sum(1)


def _per_prompt(values: np.ndarray, groups: Sequence[int]) -> dict[int, float]:
    acc: dict[int, list[float]] = {}
    for g, v in zip(groups, values):
        if np.isfinite(v):
            acc.setdefault(int(g), []).append(float(v))
    return {g: float(np.mean(v)) for g, v in acc.items()}


def _prompt_groups(s: ImageSet) -> list[int]:
    """The prompt index of each image (the engine's ``prompt_index``; a record without one is its own prompt)."""
    return [int(r.extra.get("prompt_index", i)) for i, r in enumerate(s.records)]


def _images_t(s: ImageSet) -> torch.Tensor:
    return torch.from_numpy(s.images)[:, None]


def score_model(name: str, real: ImageSet, syn: ImageSet, train: ImageSet, cfg: BenchmarkConfig,
                entries: Sequence[ExtractorEntry], timing: dict[str, float], reid_net=None) -> ModelScores:
    """Every metric of one model's images (see the module docstring)."""
    res = ModelScores(name=name, timing=dict(timing), n_images=len(syn.records))
    real_row = {r.id: i for i, r in enumerate(real.records)}
    src = [real_row.get(str(r.extra.get("source_id"))) for r in syn.records]
    groups = _prompt_groups(syn)
    pairs = [(i, j) for i, j in enumerate(src) if j is not None]
    res.n_matched = len(pairs)
    si = np.array([p[0] for p in pairs], int)
    ri = np.array([p[1] for p in pairs], int)
    nb, nd = cfg.bootstrap, cfg.distribution_bootstrap

    def put(key: str, ci, better: str, description: str) -> None:
        res.metrics[key] = _entry(ci, better, description, metric_label(key, entries))

    for e in entries:
        rf, sf = real.features[e.name].features, syn.features[e.name].features
        put(f"fd_{e.name}", bootstrap_two_sample_ci(compute_fid, rf, sf, n_boot=nd, level=cfg.level, seed=cfg.seed,
                                                     recentre=True),
            "lower", f"Fréchet distance on {e.name} features")
        kid, std = _kid_ci(rf, sf, cfg)
        put(f"kid_{e.name}", kid, "lower", f"kernel distance (cubic, unbiased) on {e.name} features")
        res.metrics[f"kid_{e.name}"]["std"] = std
        if min(len(rf), len(sf)) > cfg.knn_k:
            for key, ci in _prdc_cis(rf, sf, cfg.knn_k, nd, cfg.level, cfg.seed).items():
                put(f"{key}_{e.name}", ci, "higher", f"{key} (k={cfg.knn_k}) on {e.name} features")
        if len(pairs):
            dist = np.full(len(syn.records), np.nan)
            dist[si] = _cosine_rows(sf[si], rf[ri])
            res.per_prompt[f"feature_distance_{e.name}"] = _per_prompt(dist, groups)

    div = compute_diversity(_images_t(syn), groups, use_ms_ssim=cfg.analysis_size >= 48)
    if div.n_groups:
        per_group = div.per_group_ms_ssim if cfg.analysis_size >= 48 else div.per_group_ssim
        gm = np.array(list(per_group.values()))
        put("ms_ssim", bootstrap_ci(np.mean, gm, n_boot=nb, level=cfg.level, seed=cfg.seed), "lower",
            f"mean pairwise {'MS-' if cfg.analysis_size >= 48 else ''}SSIM among the images of one prompt "
            f"({div.n_groups} prompts; lower = more diverse)")
        res.per_prompt["ms_ssim"] = {int(g): float(v) for g, v in per_group.items()}

    sname = score_extractor(entries, real)
    if sname is not None and syn.features[sname].scores is not None:
        rs, ss = real.features[sname].scores, syn.features[sname].scores
        if len(pairs) >= 3:
            corr = compute_score_correlation(rs[ri], ss[si])
            put("pearson", bootstrap_ci(lambda a, b: pearson(a, b), rs[ri], ss[si], n_boot=nb, level=cfg.level,
                                        seed=cfg.seed), "higher",
                f"Pearson r of {sname} scores on synthetic images and their real sources ({len(pairs)} pairs)")
            res.metrics["pearson"]["p_value"] = corr.p_value
            err = np.full(len(syn.records), np.nan)
            err[si] = np.nanmean(np.abs(ss[si] - rs[ri]), axis=1)
            res.per_prompt["score_abs_error"] = _per_prompt(err, groups)
        labels = label_matrix(syn.records)
        if np.isfinite(labels).any():
            au = compute_per_class_auroc(ss, labels)
            res.per_class_auroc = {k: float(v) for k, v in au.items()}
            put("auroc_macro", au["macro"], "higher", f"{sname} AUROC on synthetic images against the prompts' labels")

    first = entries[0].name
    mem = compute_memorisation(syn.features[first].features, train.features[first].features, _images_t(syn),
                               _images_t(train))
    flags = np.asarray(mem.flagged, np.float64)
    put("memorised_fraction", bootstrap_ci(np.mean, flags, n_boot=nb, level=cfg.level, seed=cfg.seed), "lower",
        "share of synthetic images flagged as near copies of a training image (SSIM / feature distance)")
    res.memorisation = {"n_flagged": int(flags.sum()), "thresholds": mem.thresholds,
                        "max_ssim": float(np.max(mem.ssim)) if mem.ssim else float("nan")}
    if reid_net is not None:
        from chexgen.evaluation.reid import compute_reid, source_rows

        rr = compute_reid(reid_net, _images_t(syn), _images_t(train), threshold=cfg.reid.threshold,
                          source_index=source_rows(train.records, syn.records))
        put("reid_fraction", bootstrap_ci(np.mean, np.asarray(rr.flagged, np.float64), n_boot=nb, level=cfg.level,
                                          seed=cfg.seed), "lower",
            f"share of synthetic images matched to a training patient (re-ID score > {rr.threshold:g})")
        put("reid_score_mean", bootstrap_ci(np.mean, np.asarray(rr.best_score), n_boot=nb, level=cfg.level,
                                            seed=cfg.seed), "lower", "mean best re-ID score against training images")
        res.reid = {**rr.summary(), "histogram": rr.histogram}
    put("seconds_per_image", timing.get("seconds_per_image", float("nan")), "lower",
        "wall seconds inside the generator per image (per process)")
    put("model_calls_per_image", timing.get("model_calls_per_image", float("nan")), "lower",
        "denoiser samples per image (a guided step counts 2)")
    return res


def compare_models(scores: Sequence[ModelScores]) -> dict[str, dict[str, Any]]:
    """Per per-prompt measure: the best model (lowest mean) and a two-sided Wilcoxon of every other against it."""
    out: dict[str, dict[str, Any]] = {}
    keys = sorted({k for s in scores for k in s.per_prompt})
    for key in keys:
        have = [s for s in scores if s.per_prompt.get(key)]
        if len(have) < 2:
            continue
        means = {s.name: float(np.mean(list(s.per_prompt[key].values()))) for s in have}
        best = min(means, key=means.get)
        best_vals = next(s for s in have if s.name == best).per_prompt[key]
        tests = {}
        for s in have:
            if s.name == best:
                continue
            common = sorted(set(best_vals) & set(s.per_prompt[key]))
            tests[s.name] = paired_wilcoxon([s.per_prompt[key][g] for g in common], [best_vals[g] for g in common])
        out[key] = {"better": PER_PROMPT_BETTER, "best": best, "means": means, "tests": tests}
    return out


def _prompt_rows(s: ImageSet) -> dict[int, list[int]]:
    """Prompt index -> the rows of that prompt's images."""
    rows: dict[int, list[int]] = {}
    for i, g in enumerate(_prompt_groups(s)):
        rows.setdefault(g, []).append(i)
    return rows


def compare_distances(real: ImageSet, models: dict[str, ImageSet], entries: Sequence[ExtractorEntry],
                      n_boot: int, level: float = 0.95, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per extractor: the model with the lowest FD, and every other model's FD minus the best one's.

    Each of ``n_boot`` draws resamples the real images and the prompts the two models share (all images of a
    drawn prompt come along), the same draw for both models, so the interval of the difference reflects
    that both were scored on the same prompts, seeds and real set. ``p_value`` is the two-sided bootstrap
    p of a zero difference (the share of draws on the other side of 0, doubled, with the +1 correction).
    """
    out: dict[str, dict[str, Any]] = {}
    if len(models) < 2 or n_boot <= 0:
        return out
    prompt_rows = {name: _prompt_rows(s) for name, s in models.items()}
    for e in entries:
        rf = real.features[e.name].features
        values = {name: float(compute_fid(rf, s.features[e.name].features)) for name, s in models.items()}
        best = min(values, key=values.get)
        tests = {}
        for name, syn in models.items():
            if name == best:
                continue
            common = sorted(set(prompt_rows[name]) & set(prompt_rows[best]))
            if len(common) < 2:
                continue
            fa, fb = syn.features[e.name].features, models[best].features[e.name].features
            rng = np.random.default_rng(seed)
            draws = np.empty(n_boot)
            for k in range(n_boot):
                ir = rng.integers(0, len(rf), len(rf))
                picked = [common[j] for j in rng.integers(0, len(common), len(common))]
                ia = [i for g in picked for i in prompt_rows[name][g]]
                ib = [i for g in picked for i in prompt_rows[best][g]]
                draws[k] = compute_fid(rf[ir], fa[ia]) - compute_fid(rf[ir], fb[ib])
            side = min(int((draws <= 0).sum()), int((draws >= 0).sum()))
            tail = (1 - level) / 2
            tests[name] = {"n_prompts": len(common), "difference": values[name] - values[best],
                           "low": float(np.quantile(draws, tail)), "high": float(np.quantile(draws, 1 - tail)),
                           "p_value": min(1.0, 2 * (side + 1) / (n_boot + 1)), "n_boot": int(n_boot)}
        out[f"fd_{e.name}"] = {"better": "lower", "best": best, "values": values, "tests": tests}
    return out


def finding_breakdown(real: ImageSet, models: dict[str, ImageSet], scores: dict[str, ModelScores],
                      entries: Sequence[ExtractorEntry], min_images: int) -> list[dict[str, Any]]:
    """Rows (finding, model, n_real, n_synthetic, FD, mean distance to source, AUROC) for common findings."""
    first = entries[0].name
    real_find = [finding_of(r.labels) for r in real.records]
    real_row = {r.id: i for i, r in enumerate(real.records)}
    rows = []
    for finding in sorted(set(real_find), key=lambda f: (-real_find.count(f), f)):
        r_idx = [i for i, f in enumerate(real_find) if f == finding]
        if len(r_idx) < max(2, min_images):
            continue
        for name, syn in models.items():
            src = [real_row.get(str(r.extra.get("source_id"))) for r in syn.records]
            s_idx = [i for i, j in enumerate(src) if j is not None and real_find[j] == finding]
            if len(s_idx) < max(2, min_images):
                continue
            rf, sf = real.features[first].features, syn.features[first].features
            dist = _cosine_rows(sf[s_idx], rf[[src[i] for i in s_idx]])
            rows.append({"finding": finding, "model": name, "n_real": len(r_idx), "n_synthetic": len(s_idx),
                         "fd": compute_fid(rf[r_idx], sf[s_idx]), "distance_to_source": float(np.mean(dist)),
                         "auroc": scores[name].per_class_auroc.get(finding)})
    return rows
