"""The whole evaluation: real manifest vs synthetic manifest -> numbers, figures, report.

Library entry points (the CLI ``chexgen evaluate`` is a thin layer on top):

* :func:`load_set` reads a manifest's images once, extracts features / scores
  and keeps small gray copies for SSIM, diversity, memorisation and figures;
* :func:`evaluate_sets` computes every metric (with bootstrap CIs) and the
  figures from loaded sets;
* :func:`evaluate_manifests` does both and writes ``report.html`` + ``metrics.json``.

Bootstrap cost: per-unit metrics (Pearson, diversity, AUROC, memorisation
rate) resample ``bootstrap`` times; distribution metrics (FID, KID, k-NN
precision / recall) re-run a whole distance computation per draw, so they use
``min(bootstrap, distribution_bootstrap)`` draws (KID: one subset per draw). On 2 CPU
cores with 10k x 1024 features one FID takes ~8 s, so 50 draws already cost minutes.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from chexgen.data.imageio import fit_square, load_gray
from chexgen.data.manifest import Record, read_manifest_lines
from chexgen.data.rejects import RejectLog
from chexgen.errors import ChexgenError
from chexgen.evaluation.control import compute_mask_adherence, decode_rle, segment_images
from chexgen.evaluation.features import FeatureExtractor, FeatureSet, extract_features
from chexgen.evaluation.matching import group_key, label_matrix, match_to_real
from chexgen.evaluation.memorisation import compute_memorisation
from chexgen.evaluation.metrics import (
    boxes_to_mask,
    compute_diversity,
    compute_fid,
    compute_kid,
    compute_per_class_auroc,
    compute_precision_recall,
    compute_score_correlation,
    pearson,
)
from chexgen.evaluation.plots import compute_tsne, finding_of, grid_png, tsne_plot_png
from chexgen.evaluation.report import Figure, write_report
from chexgen.evaluation.stats import bootstrap_ci, bootstrap_two_sample_ci, paired_wilcoxon

log = logging.getLogger(__name__)

__all__ = ["EvaluationConfig", "LoadedSet", "load_set", "set_from_arrays", "evaluate_sets", "evaluate_manifests"]


@dataclass
class EvaluationConfig:
    """Settings of one evaluation run (saved into metrics.json)."""

    max_images: int | None = None  # per manifest; synthetic first, real keeps the matched sources first
    bootstrap: int = 1000  # draws for per-unit metrics
    distribution_bootstrap: int = 50  # cap on draws for FID / KID / precision-recall (each is a full recompute)
    level: float = 0.95
    analysis_size: int = 256  # px of the gray copies used for SSIM / MS-SSIM / memorisation / figures
    batch_size: int = 16
    knn_k: int = 3
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    memorisation_ssim: float = 0.95
    memorisation_feature_ratio: float = 0.1
    tsne: bool = True
    tsne_max: int = 1000  # per set
    grid_images: int = 6  # per row in the per-finding grids
    closest_pairs: int = 8
    reid_threshold: float = 0.5  # score above which the re-identification network calls it the same patient
    seed: int = 0
    progress: bool = True


@dataclass
class LoadedSet:
    """One manifest's records with features, scores and small analysis copies of the images."""

    name: str
    records: list[Record]
    features: FeatureSet
    images: np.ndarray  # [N, S, S] float16 in [0,1]
    shapes: list[tuple[int, int]] = field(default_factory=list)  # original (H, W) per image
    root: Path | None = None


def _order_real(real: list[Record], syn: list[Record], limit: int | None) -> list[Record]:
    if limit is None or len(real) <= limit:
        return real
    matched = [i for i in match_to_real(real, syn) if i is not None]
    first = list(dict.fromkeys(matched))[:limit]
    taken = set(first)
    rest = [i for i in range(len(real)) if i not in taken]
    return [real[i] for i in (first + rest)[:limit]]


def load_set(
    records: Sequence[Record],
    root: str | os.PathLike,
    extractor: FeatureExtractor,
    cfg: EvaluationConfig,
    name: str,
    rejects: RejectLog | None = None,
    record_lines: dict[str, int] | None = None,
) -> LoadedSet:
    """Load every record's image (``Record.resolve`` against ``root``), extract features, keep small copies.

    Without ``rejects`` the first missing or unreadable image raises; with it, such
    records are listed there (file ``name``, line from ``record_lines``) and left out.
    """
    root = Path(root)
    small, shapes, kept = [], [], []
    lines = record_lines or {}

    def images():
        for rec in records:
            try:
                if rec.image is None:
                    raise ChexgenError(f"{name} manifest: record {rec.id!r} has no image path")
                path = rec.resolve(rec.image, root)
                if not path.is_file():
                    raise ChexgenError(f"{name} manifest: record {rec.id!r}: image not found: {path}")
                img = load_gray(path)
                if not np.isfinite(img).all():
                    raise ChexgenError(f"{path}: image has non-finite pixels")
            except ChexgenError as e:
                if rejects is None:
                    raise
                rejects.add(name, lines.get(rec.id), str(e).removeprefix(f"{name} manifest: "), id=rec.id)
                continue
            kept.append(rec)
            shapes.append(img.shape)
            small.append(fit_square(img, cfg.analysis_size, "crop").astype(np.float16))
            yield fit_square(img, extractor.input_size, "crop")

    try:
        feats = extract_features(extractor, _Sized(images(), len(records)), batch_size=cfg.batch_size,
                                 progress=cfg.progress, desc=f"{name} features")
    except ValueError as e:
        if not kept:
            raise ChexgenError(f"{name}: no readable image ({len(records)} records"
                               f"{', all rejected' if rejects is not None else ''})") from None
        raise ChexgenError(f"{name}: {e}") from None
    return LoadedSet(name=name, records=kept, features=feats, images=np.stack(small), shapes=shapes,
                     root=root)


def set_from_arrays(
    records: Sequence[Record],
    images: Sequence[np.ndarray] | np.ndarray,
    extractor: FeatureExtractor,
    cfg: EvaluationConfig,
    name: str = "in-memory",
) -> LoadedSet:
    """A :class:`LoadedSet` from images already in memory ((H, W) arrays in [0,1], one per record).

    For callers that hold generated images (e.g. the demo) and do not want to round-trip through files.
    """
    if len(records) != len(images):
        raise ValueError(f"{len(records)} records for {len(images)} images")
    arrays = [np.asarray(im, np.float32).reshape(np.shape(im)[-2:]) for im in images]
    feats = extract_features(extractor, [fit_square(a, extractor.input_size, "crop") for a in arrays],
                             batch_size=cfg.batch_size, progress=cfg.progress, desc=f"{name} features")
    small = np.stack([fit_square(a, cfg.analysis_size, "crop").astype(np.float16) for a in arrays])
    return LoadedSet(name=name, records=list(records), features=feats, images=small,
                     shapes=[a.shape for a in arrays])


class _Sized:
    """An iterator with a length, so progress bars know the total."""

    def __init__(self, it, n: int):
        self._it, self._n = it, n

    def __iter__(self):
        return iter(self._it)

    def __len__(self) -> int:
        return self._n


def _entry(ci, better: str, description: str) -> dict:
    d = ci.as_dict() if hasattr(ci, "as_dict") else {"value": ci}
    return {**d, "better": better, "description": description}


def _images_t(s: LoadedSet, idx=None, half: bool = False) -> torch.Tensor:
    arr = s.images if idx is None else s.images[idx]
    return torch.from_numpy(arr if half else arr.astype(np.float32))[:, None]


def _syn_labels(syn: LoadedSet, match: list[int | None], real: LoadedSet) -> np.ndarray:
    own = label_matrix(syn.records)
    src = label_matrix([real.records[m] for m in match if m is not None])
    out = own.copy()
    k = 0
    for i, m in enumerate(match):
        if m is not None:
            if np.isnan(own[i]).all():
                out[i] = src[k]
            k += 1
    return out


def _set_metrics(real: LoadedSet, syn: LoadedSet, cfg: EvaluationConfig, warnings: list[str]) -> dict:
    """Metrics of one synthetic set against the real set, plus per-prompt values for paired tests."""
    rf, sf = real.features.features, syn.features.features
    n_dist = min(cfg.bootstrap, cfg.distribution_bootstrap)
    metrics: dict[str, dict] = {}
    per_class: dict[str, dict] = {}
    per_prompt: dict[str, dict] = {}

    metrics["fid"] = _entry(
        bootstrap_two_sample_ci(compute_fid, rf, sf, n_boot=n_dist, level=cfg.level, seed=cfg.seed,
                                recentre=True),
        "lower", "Fréchet distance between real and synthetic feature Gaussians")
    m = min(cfg.kid_subset_size, len(rf), len(sf))
    kid, kid_std = compute_kid(rf, sf, subsets=cfg.kid_subsets, subset_size=m, seed=cfg.seed)
    kid_ci = bootstrap_two_sample_ci(
        lambda a, b: compute_kid(a, b, subsets=1, subset_size=m, seed=cfg.seed)[0],
        rf, sf, n_boot=n_dist, level=cfg.level, seed=cfg.seed, recentre=True)
    kid_ci.low += kid - kid_ci.value
    kid_ci.high += kid - kid_ci.value
    kid_ci.value = kid
    metrics["kid"] = {**_entry(kid_ci, "lower", "kernel (cubic polynomial) MMD^2, unbiased"), "std": kid_std}
    k = cfg.knn_k
    if min(len(rf), len(sf)) > k:
        for key, better, desc in (
            ("precision", "higher", f"share of synthetic inside the real k-NN manifold (k={k})"),
            ("recall", "higher", f"share of real inside the synthetic k-NN manifold (k={k})"),
            ("density", "higher", "mean real k-NN balls containing a synthetic sample / k"),
            ("coverage", "higher", "share of real samples whose k-NN ball holds a synthetic sample"),
        ):
            metrics[key] = _entry(bootstrap_two_sample_ci(
                lambda a, b, key=key: getattr(compute_precision_recall(a, b, k), key), rf, sf,
                n_boot=n_dist, level=cfg.level, seed=cfg.seed), better, desc)
    else:
        warnings.append(f"k-NN precision/recall skipped: need more than k={k} images per set")

    # images of one prompt share a key; with a known real source, the key is that record, so two
    # synthetic sets made from the same reports pair up however each names its origin
    match = match_to_real(real.records, syn.records)
    groups = [f"real:{real.records[j].id}" if j is not None else group_key(r) for r, j in zip(syn.records, match)]
    div = compute_diversity(_images_t(syn, half=True), groups, use_ms_ssim=cfg.analysis_size >= 48)
    if div.n_groups:
        keys = list(div.per_group_ssim)
        gs = np.array([div.per_group_ssim[g] for g in keys])
        gm = np.array([div.per_group_ms_ssim[g] for g in keys])
        metrics["diversity_ssim"] = _entry(bootstrap_ci(np.mean, gs, n_boot=cfg.bootstrap, level=cfg.level,
                                                        seed=cfg.seed), "lower",
                                           f"mean pairwise SSIM among images of one prompt ({div.n_groups} prompts)")
        metrics["diversity_ms_ssim"] = _entry(bootstrap_ci(np.mean, gm, n_boot=cfg.bootstrap, level=cfg.level,
                                                           seed=cfg.seed), "lower",
                                              "mean pairwise MS-SSIM among images of one prompt")
        per_prompt["diversity_ssim"] = dict(div.per_group_ssim)
    else:
        warnings.append(f"{syn.name}: no prompt has two or more images; diversity not computed")

    # factual correctness
    pairs = [(i, j) for i, j in enumerate(match) if j is not None]
    rs, ss = real.features.scores, syn.features.scores
    if rs is not None and ss is not None and len(pairs) >= 3:
        si = np.array([p[0] for p in pairs])
        ri = np.array([p[1] for p in pairs])
        corr = compute_score_correlation(rs[ri], ss[si])
        metrics["pearson"] = _entry(
            bootstrap_ci(lambda a, b: pearson(a, b), rs[ri], ss[si], n_boot=cfg.bootstrap, level=cfg.level,
                         seed=cfg.seed),
            "higher", f"Pearson r of classifier scores, real vs synthetic, over {len(pairs)} pairs x 14")
        metrics["pearson"]["p_value"] = corr.p_value
        per_class["pearson"] = corr.per_class
        err: dict[str, list[float]] = {}
        dist: dict[str, list[float]] = {}
        rfn = rf / np.linalg.norm(rf, axis=1, keepdims=True).clip(1e-12)
        sfn = sf / np.linalg.norm(sf, axis=1, keepdims=True).clip(1e-12)
        for a, b in pairs:
            g = groups[a]
            err.setdefault(g, []).append(float(np.nanmean(np.abs(ss[a] - rs[b]))))
            dist.setdefault(g, []).append(float(1.0 - rfn[b] @ sfn[a]))
        per_prompt["score_abs_error"] = {g: float(np.mean(v)) for g, v in err.items()}
        per_prompt["feature_cosine_distance"] = {g: float(np.mean(v)) for g, v in dist.items()}
    elif rs is None or ss is None:
        warnings.append("the feature extractor gives no class scores: Pearson / AUROC not computed")
    else:
        warnings.append(f"only {len(pairs)} synthetic images matched a real source: Pearson not computed")
    if ss is not None:
        labels = _syn_labels(syn, match, real)
        if np.isfinite(labels).any():
            au = compute_per_class_auroc(ss, labels)
            per_class["auroc"] = au

            def macro(sc, lab):
                return compute_per_class_auroc(sc, lab)["macro"]

            metrics["auroc_macro"] = _entry(
                bootstrap_ci(macro, ss, labels, n_boot=min(cfg.bootstrap, 200), level=cfg.level, seed=cfg.seed),
                "higher", "classifier AUROC on synthetic images against the prompts' labels (macro)")
    return {"metrics": metrics, "per_class": per_class, "per_prompt": per_prompt, "match": match,
            "groups": groups, "diversity": asdict(div)}


def _figures(real: LoadedSet, syn: LoadedSet, match, cfg: EvaluationConfig, mem, train: LoadedSet) -> list[Figure]:
    figs: list[Figure] = []
    real_find = [finding_of(r.labels) for r in real.records]
    syn_lab = _syn_labels(syn, match, real)
    from chexgen.data.labels import LABELS

    syn_find = []
    for row in syn_lab:
        d = {name: (None if np.isnan(v) else int(v)) for name, v in zip(LABELS, row)}
        syn_find.append(finding_of(d))
    if cfg.tsne:
        ri = np.arange(len(real.records))[: cfg.tsne_max]
        si = np.arange(len(syn.records))[: cfg.tsne_max]
        feats = np.concatenate([real.features.features[ri], syn.features.features[si]])
        if feats.shape[0] >= 5:
            emb = compute_tsne(feats, seed=cfg.seed)
            flags = [False] * len(ri) + [True] * len(si)
            finds = [real_find[i] for i in ri] + [syn_find[i] for i in si]
            figs.append(Figure("t-SNE of features", tsne_plot_png(emb, flags, finds),
                               "o = real, x = synthetic; colour = finding", section="Feature space"))
    counts: dict[str, int] = {}
    for f in syn_find:
        counts[f] = counts.get(f, 0) + 1
    for finding in sorted(counts, key=lambda f: -counts[f])[:8]:
        r_idx = [i for i, f in enumerate(real_find) if f == finding][: cfg.grid_images]
        s_idx = [i for i, f in enumerate(syn_find) if f == finding][: cfg.grid_images]
        rows = [[real.images[i] for i in r_idx], [syn.images[i] for i in s_idx]]
        rows = [r for r in rows if r]
        if rows:
            figs.append(Figure(finding, grid_png(rows), f"top row: real ({len(r_idx)}); bottom row: synthetic "
                               f"({len(s_idx)})" if r_idx else f"synthetic only ({len(s_idx)})",
                               section="Real vs synthetic by finding", alt=f"grid {finding}"))
    by_source: dict[int, list[int]] = {}
    for i, j in enumerate(match):
        if j is not None:
            by_source.setdefault(j, []).append(i)
    shown = list(by_source.items())[:6]
    if shown:
        rows = [[real.images[j]] + [syn.images[i] for i in idx[:4]] for j, idx in shown]
        cap = "; ".join(f"{real.records[j].id}: {', '.join(syn.records[i].id for i in idx[:4])}" for j, idx in shown)
        figs.append(Figure("Real source and its synthetic images", grid_png(rows),
                           "each row: the real image whose report was the prompt, then images generated from it. "
                           + cap, section="Matched prompts", alt="matched prompts"))
    if mem is not None:
        top = mem.closest_pairs(cfg.closest_pairs, by="ssim")
        if top:
            rows = [[syn.images[i], train.images[mem.ssim_nn[i]]] for i in top]
            cap = "; ".join(f"{syn.records[i].id} ~ {train.records[mem.ssim_nn[i]].id}: SSIM {mem.ssim[i]:.3f}"
                            for i in top)
            figs.append(Figure("Closest synthetic / training pairs", grid_png(rows),
                               "left: synthetic, right: nearest training image by SSIM. " + cap,
                               section="Memorisation", alt="closest pairs"))
    return figs


def _control(syn: LoadedSet, segmenter: Callable, cfg: EvaluationConfig, warnings: list[str]) -> dict | None:
    idx, conds = [], []
    s = cfg.analysis_size
    for i, rec in enumerate(syn.records):
        h, w = syn.shapes[i]
        mask = None
        for m in rec.masks:
            if m.rle is not None:
                arr = decode_rle(m.rle, int(m.width), int(m.height)).astype(np.float32)
            else:
                arr = load_gray(rec.resolve(m.path, syn.root))
            arr = fit_square((arr > 0.5).astype(np.float32), s, "crop") > 0.5
            mask = arr if mask is None else (mask | arr)
        if rec.boxes:
            bm = boxes_to_mask([(b.x0, b.y0, b.x1, b.y1) for b in rec.boxes], h, w).astype(np.float32)
            bm = fit_square(bm, s, "crop") > 0.5
            mask = bm if mask is None else (mask | bm)
        if mask is not None:
            idx.append(i)
            conds.append(mask)
    if not idx:
        warnings.append("a segmenter was given but no synthetic record carries masks or boxes")
        return None
    pred = segment_images(segmenter, _images_t(syn, idx), batch_size=cfg.batch_size)
    if pred.shape[-2:] != (s, s):  # a segmenter working at its own resolution
        pred = torch.nn.functional.interpolate(torch.from_numpy(pred)[:, None], size=(s, s), mode="bilinear",
                                               align_corners=False)[:, 0].numpy()
    res = compute_mask_adherence(pred, np.stack(conds))
    d = np.array(res.per_image_dice)
    iou = np.array(res.per_image_iou)
    return {
        "dice": _entry(bootstrap_ci(np.mean, d, n_boot=cfg.bootstrap, level=cfg.level, seed=cfg.seed), "higher",
                       f"Dice between condition and segmented masks ({len(idx)} images)"),
        "iou": _entry(bootstrap_ci(np.mean, iou, n_boot=cfg.bootstrap, level=cfg.level, seed=cfg.seed), "higher",
                      "IoU between condition and segmented masks"),
        "per_image": {syn.records[i].id: {"dice": float(a), "iou": float(b)} for i, a, b in zip(idx, d, iou)},
    }


def _reid(net: torch.nn.Module, syn: LoadedSet, train: LoadedSet, cfg: EvaluationConfig, results: dict) -> dict:
    """Re-identification metrics of ``syn`` against ``train``; the details go to ``results["reid"]``."""
    from chexgen.evaluation.reid import compute_reid, source_rows

    res = compute_reid(net, _images_t(syn), _images_t(train), threshold=cfg.reid_threshold,
                       source_index=source_rows(train.records, syn.records), batch_size=cfg.batch_size)
    order = np.argsort(-np.asarray(res.best_score))[: cfg.closest_pairs]
    results["reid"] = {**res.summary(), "histogram": res.histogram, "closest": [
        {"synthetic_id": syn.records[i].id, "train_id": train.records[res.best_index[i]].id,
         "score": res.best_score[i]} for i in order]}
    thr = cfg.reid_threshold
    return {
        "reid_fraction": _entry(bootstrap_ci(np.mean, np.asarray(res.flagged, np.float64), n_boot=cfg.bootstrap,
                                             level=cfg.level, seed=cfg.seed), "lower",
                                f"share of synthetic images the re-identification network matches to a training "
                                f"patient (best score > {thr:g})"),
        "reid_score_mean": _entry(bootstrap_ci(np.mean, np.asarray(res.best_score), n_boot=cfg.bootstrap,
                                               level=cfg.level, seed=cfg.seed), "lower",
                                  "mean over synthetic images of the best same-patient score against training images"),
    }


def evaluate_sets(
    real: LoadedSet,
    syn: LoadedSet,
    cfg: EvaluationConfig,
    train: LoadedSet | None = None,
    compare: LoadedSet | None = None,
    segmenter: Callable | None = None,
    extractor_info: dict | None = None,
    reid_net: torch.nn.Module | None = None,
) -> tuple[dict, list[Figure]]:
    """Every metric of ``syn`` against ``real`` (memorisation and re-identification against ``train``,
    default ``real``; re-identification only with ``reid_net``, see :mod:`chexgen.evaluation.reid`)."""
    from chexgen import __version__

    warnings: list[str] = []
    train = train or real
    a = _set_metrics(real, syn, cfg, warnings)
    n_matched = sum(m is not None for m in a["match"])
    results: dict = {
        "chexgen_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": {
            "real": real.name, "synthetic": syn.name, "n_real": len(real.records), "n_synthetic": len(syn.records),
            "n_matched": n_matched, "n_prompts": len(set(a["groups"])), "memorisation_reference": train.name,
            "features": extractor_info or {}, "feature_dim": int(real.features.features.shape[1]),
        },
        "config": asdict(cfg),
        "metrics": a["metrics"],
        "per_class": a["per_class"],
        "per_prompt": a["per_prompt"],
        "diversity": {k: a["diversity"][k] for k in ("ssim", "ms_ssim", "n_groups", "n_pairs")},
    }
    mem = compute_memorisation(
        syn.features.features, train.features.features, _images_t(syn, half=True), _images_t(train, half=True),
        ssim_threshold=cfg.memorisation_ssim, feature_ratio=cfg.memorisation_feature_ratio)
    flags = np.asarray(mem.flagged, np.float64)
    results["metrics"]["memorised_fraction"] = _entry(
        bootstrap_ci(np.mean, flags, n_boot=cfg.bootstrap, level=cfg.level, seed=cfg.seed), "lower",
        "share of synthetic images flagged as near copies of a training image")
    results["metrics"]["nearest_train_ssim"] = _entry(
        bootstrap_ci(np.mean, np.asarray(mem.ssim), n_boot=cfg.bootstrap, level=cfg.level, seed=cfg.seed), "lower",
        "mean SSIM of each synthetic image to its most similar training image")
    order = mem.closest_pairs(len(mem.ssim), by="ssim")
    results["memorisation"] = {
        "n_synthetic": len(mem.flagged), "n_flagged": int(sum(mem.flagged)), "thresholds": mem.thresholds,
        "train_median_nn_distance": mem.train_median_nn_distance,
        "flagged_ids": [syn.records[i].id for i, f in enumerate(mem.flagged) if f],
        "closest": [{
            "synthetic_id": syn.records[i].id, "ssim_train_id": train.records[mem.ssim_nn[i]].id,
            "ssim": mem.ssim[i], "feature_train_id": train.records[mem.feature_nn[i]].id,
            "feature_distance": mem.feature_distance[i], "flagged": mem.flagged[i]} for i in order],
    }
    if reid_net is not None:
        results["metrics"].update(_reid(reid_net, syn, train, cfg, results))
    if segmenter is not None:
        ctrl = _control(syn, segmenter, cfg, warnings)
        if ctrl is not None:
            results["metrics"]["control_dice"] = ctrl["dice"]
            results["metrics"]["control_iou"] = ctrl["iou"]
            results["control"] = ctrl["per_image"]
    if compare is not None:
        b = _set_metrics(real, compare, cfg, warnings)
        tests = {}
        for key in sorted(set(a["per_prompt"]) & set(b["per_prompt"])):
            common = sorted(set(a["per_prompt"][key]) & set(b["per_prompt"][key]))
            if common:
                tests[key] = paired_wilcoxon([a["per_prompt"][key][g] for g in common],
                                             [b["per_prompt"][key][g] for g in common])
        if not tests:
            warnings.append("--compare: the two synthetic sets share no prompts; no paired test")
        results["comparison"] = {"name": compare.name, "n_synthetic": len(compare.records),
                                 "metrics": b["metrics"], "per_class": b["per_class"], "tests": tests}
    figures = _figures(real, syn, a["match"], cfg, mem, train)
    results["warnings"] = warnings
    return results, figures


def evaluate_manifests(
    real_manifest: str | os.PathLike,
    synthetic_manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    extractor: FeatureExtractor,
    cfg: EvaluationConfig | None = None,
    compare_manifest: str | os.PathLike | None = None,
    train_manifest: str | os.PathLike | None = None,
    segmenter: Callable | None = None,
    data_root: str | os.PathLike | None = None,
    reid_net: torch.nn.Module | None = None,
) -> dict:
    """Load the manifests, evaluate, write ``report.html`` + ``metrics.json`` into ``out_dir``; return results.

    Bad records (invalid lines, duplicate ids, missing or unreadable images, paths
    outside ``data_root``) are left out and listed in ``out_dir/rejects.jsonl``;
    ``results["rejects"]`` counts them and names the file.
    """
    cfg = cfg or EvaluationConfig()
    rejects = RejectLog()

    def read(path: Path, limit: int | None) -> list[tuple[int, Record]]:
        return read_manifest_lines(path, rejects=rejects, data_root=data_root)[:limit]

    def load(pairs: list[tuple[int, Record]], path: Path) -> LoadedSet:
        return load_set([r for _, r in pairs], path.parent, extractor, cfg, str(path), rejects=rejects,
                        record_lines={r.id: line for line, r in pairs})

    real_p, syn_p = Path(real_manifest), Path(synthetic_manifest)
    syn_pairs = read(syn_p, cfg.max_images)
    real_all = read(real_p, None)
    by_id = {r.id: line for line, r in real_all}
    real_recs = _order_real([r for _, r in real_all], [r for _, r in syn_pairs], cfg.max_images)
    real_pairs = [(by_id[r.id], r) for r in real_recs]
    if len(real_pairs) < 2 or len(syn_pairs) < 2:
        raise ChexgenError(f"need at least 2 images per manifest, got {len(real_pairs)} real and {len(syn_pairs)} "
                           "synthetic")
    real = load(real_pairs, real_p)
    syn = load(syn_pairs, syn_p)
    if len(real.records) < 2 or len(syn.records) < 2:
        raise ChexgenError(f"need at least 2 readable images per manifest, got {len(real.records)} real and "
                           f"{len(syn.records)} synthetic ({len(rejects)} rejected)")
    compare = None
    if compare_manifest is not None:
        cp = Path(compare_manifest)
        compare = load(read(cp, cfg.max_images), cp)
    train = None
    if train_manifest is not None:
        tp = Path(train_manifest)
        train = load(read(tp, cfg.max_images), tp)
    results, figures = evaluate_sets(real, syn, cfg, train=train, compare=compare, segmenter=segmenter,
                                     extractor_info=extractor.describe(), reid_net=reid_net)
    rejects_path = rejects.write(Path(out_dir) / "rejects.jsonl")
    results["rejects"] = {"count": len(rejects), "file": str(rejects_path)}
    if rejects:
        results.setdefault("warnings", []).append(f"{len(rejects)} records rejected (listed in {rejects_path})")
    json_path, html_path = write_report(out_dir, results, figures)
    results["outputs"] = {"metrics_json": str(json_path), "report_html": str(html_path),
                          "rejects": str(rejects_path)}
    return results
