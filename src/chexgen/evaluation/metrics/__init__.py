"""chexgen.evaluation.metrics: every metric of the project, in one place (MONAI style).

Pure ``compute_*`` functions on arrays / tensors, plus accumulating classes (``reset`` /
``update`` / ``aggregate``) where a metric is gathered batch by batch. Prediction first, truth
second. Feature extraction is elsewhere (:mod:`chexgen.evaluation.features`): FID, KID and
precision / recall work on features. Used by the evaluation suite, control adherence, the
downstream tasks, the VAE's training loss and the demo.

* :mod:`.fid`: Fréchet distance, FID, KID, :class:`FIDMetric`;
* :mod:`.precision_recall`: k-NN precision / recall, density / coverage;
* :mod:`.similarity`: SSIM, MS-SSIM, diversity among images of one prompt, :class:`DiversityMetric`;
* :mod:`.correlation`: Pearson r (and p), factual correctness by score correlation;
* :mod:`.classification`: AUROC per class, weighted F1;
* :mod:`.overlap`: Dice / IoU of masks, box IoU, box rasterising;
* :mod:`.detection`: mAP50 / mAR50 (needs the ``downstream`` extra).
"""

from chexgen.evaluation.metrics.classification import compute_auroc, compute_per_class_auroc, finite_mean, weighted_f1
from chexgen.evaluation.metrics.correlation import ScoreCorrelation, compute_score_correlation, pearson, pearson_test
from chexgen.evaluation.metrics.detection import compute_map50
from chexgen.evaluation.metrics.fid import (
    FeatureStats,
    FIDMetric,
    compute_fid,
    compute_kid,
    feature_stats,
    frechet_distance,
    matrix_sqrt_psd,
    trace_sqrt_product,
)
from chexgen.evaluation.metrics.overlap import best_box_iou, box_iou_matrix, boxes_to_mask, compute_dice, dice_iou
from chexgen.evaluation.metrics.precision_recall import PrecisionRecall, compute_precision_recall, knn_radii
from chexgen.evaluation.metrics.similarity import (
    DiversityMetric,
    DiversityResult,
    as_image_batch,
    compute_diversity,
    compute_ssim,
    ms_ssim_pairs,
    ssim_pairs,
)

__all__ = [
    "DiversityMetric",
    "DiversityResult",
    "FIDMetric",
    "FeatureStats",
    "PrecisionRecall",
    "ScoreCorrelation",
    "as_image_batch",
    "best_box_iou",
    "box_iou_matrix",
    "boxes_to_mask",
    "compute_auroc",
    "compute_dice",
    "compute_diversity",
    "compute_fid",
    "compute_kid",
    "compute_map50",
    "compute_per_class_auroc",
    "compute_precision_recall",
    "compute_score_correlation",
    "compute_ssim",
    "dice_iou",
    "feature_stats",
    "finite_mean",
    "frechet_distance",
    "knn_radii",
    "matrix_sqrt_psd",
    "ms_ssim_pairs",
    "pearson",
    "pearson_test",
    "ssim_pairs",
    "trace_sqrt_product",
    "weighted_f1",
]
