"""Downstream experiments on real + synthetic manifests: the paper's claims, rerunnable.

Modules, bottom up: ``data`` (manifest datasets, joint image/mask/box transforms),
``models`` (DenseNet121, UNet-ResNet34, Faster R-CNN R50-FPN, ResNet50 regression; offline
ImageNet init), ``metrics``, ``trainer`` (one loop for the four tasks), ``sampling``
(fractions, k-shot, label-preserving synthetic mixing, subgroup parity), ``fairness``,
``stats`` (mean +- sd, Wilcoxon), ``report`` (tables, plots), ``gradcam``, ``config`` and
``experiments`` (augment / pretrain / fairness, resumable per seed). ``toy`` draws a tiny
cohort with exact answers for tests and demos.
"""

from chexgen.downstream.classifier import FeatureClassifier, load_classifier, save_classifier, train_classifier
from chexgen.downstream.config import ExperimentConfig, load_config
from chexgen.downstream.experiments import run_augment, run_experiment, run_fairness, run_pretrain

__all__ = [
    "FeatureClassifier",
    "load_classifier",
    "save_classifier",
    "train_classifier",
    "ExperimentConfig", "load_config", "run_experiment", "run_augment", "run_pretrain", "run_fairness"]
