"""chexgen.evaluation: fidelity, diversity, factual correctness, control adherence, memorisation.

Metrics are plain functions on feature arrays / image tensors (plus a few
accumulating classes), all in :mod:`chexgen.evaluation.metrics`; feature
extraction is separate (:mod:`chexgen.evaluation.features`);
:mod:`chexgen.evaluation.suite` runs everything on two manifests and writes the
report.

    from chexgen.evaluation import compute_fid, ClassifierExtractor, extract_features
    fid = compute_fid(real_features, synthetic_features)

Submodules are imported lazily, so ``import chexgen.evaluation`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    # metrics/: every metric (pure functions + accumulators)
    **{name: "metrics" for name in (
        "compute_fid", "compute_kid", "frechet_distance", "feature_stats", "matrix_sqrt_psd", "trace_sqrt_product",
        "FIDMetric", "compute_precision_recall", "PrecisionRecall", "ssim_pairs", "ms_ssim_pairs", "compute_ssim",
        "compute_diversity", "DiversityMetric", "DiversityResult", "pearson", "pearson_test",
        "compute_score_correlation", "compute_auroc", "compute_per_class_auroc", "weighted_f1", "dice_iou",
        "compute_dice", "boxes_to_mask", "box_iou_matrix", "best_box_iou", "compute_map50",
    )},
    # control.py
    "compute_mask_adherence": "control", "segment_images": "control", "decode_rle": "control",
    # memorisation.py
    "compute_memorisation": "memorisation", "nearest_by_feature": "memorisation",
    "MemorisationResult": "memorisation",
    # stats.py
    "bootstrap_ci": "stats", "bootstrap_two_sample_ci": "stats", "paired_wilcoxon": "stats",
    "ConfidenceInterval": "stats",
    # features.py
    "FeatureExtractor": "features", "ExtractorOutput": "features", "FeatureSet": "features",
    "XRVDenseNetExtractor": "features", "OpenClipExtractor": "features", "InceptionV3Extractor": "features",
    "ClassifierExtractor": "features", "build_extractor": "features", "extract_features": "features",
    # plots / report / suite
    "compute_tsne": "plots", "tsne_plot_png": "plots", "grid_png": "plots",
    "Figure": "report", "render_html": "report", "write_report": "report",
    "EvaluationConfig": "suite", "LoadedSet": "suite", "load_set": "suite", "set_from_arrays": "suite", "evaluate_sets": "suite",
    "evaluate_manifests": "suite",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"chexgen.evaluation.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'chexgen.evaluation' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
