"""A trained classifier as a reusable artefact: train once, save, load as a feature extractor.

The evaluation suite scores generated images with a classifier (per-class
AUROC against the prompts' labels, FID on its penultimate features). For real
radiographs that is TorchXRayVision's DenseNet; for the phantom cohort (whose
findings no public model has seen) chexgen trains its own with
:func:`train_classifier` and ships it with the demo model.

A saved classifier is a folder: ``config.json`` (architecture, classes, input
size, test metrics, how it was trained) and ``model.safetensors``.
:func:`load_classifier` rebuilds it as a :class:`FeatureClassifier`, a module
that takes ``[B, 1, S, S]`` images in [0, 1] and returns
``{"features": penultimate activations, "scores": sigmoid probabilities}`` -
the shape :class:`chexgen.evaluation.features.ClassifierExtractor` reads, and
what ``chexgen evaluate --features DIR`` loads.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from chexgen.data.labels import LABELS, normalize_label_name
from chexgen.data.manifest import read_manifest
from chexgen.downstream.data import ManifestDataset, SampleSpec
from chexgen.downstream.models import ModelSpec, build_model
from chexgen.downstream.trainer import TrainConfig, fit
from chexgen.errors import ChexgenError

__all__ = ["FeatureClassifier", "train_classifier", "save_classifier", "load_classifier"]

log = logging.getLogger(__name__)

_CONFIG = "config.json"
_WEIGHTS = "model.safetensors"


def _head(net: nn.Module) -> nn.Linear:
    for name in ("fc", "classifier"):
        head = getattr(net, name, None)
        if isinstance(head, nn.Linear):
            return head
    raise ChexgenError(f"{type(net).__name__}: no final Linear layer ('fc' or 'classifier') to take features before")


class FeatureClassifier(nn.Module):
    """A downstream classifier returning penultimate features and class probabilities."""

    def __init__(self, model: nn.Module, class_names: Sequence[str], input_size: int) -> None:
        super().__init__()
        self.model = model
        self.class_names = list(class_names)
        self.input_size = int(input_size)
        self._head = _head(model.net)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        captured: list[torch.Tensor] = []
        hook = self._head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
        try:
            logits = self.model(x)
        finally:
            hook.remove()
        return {"features": captured[0].flatten(1), "scores": torch.sigmoid(logits)}


def save_classifier(model: nn.Module, spec: ModelSpec, classes: Sequence[str], directory: str | os.PathLike,
                    info: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` into ``directory`` (atomically: temp folder + rename)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / _WEIGHTS))
        config = {"task": "classification", "arch": spec.arch_name, "image_size": spec.image_size,
                  "classes": list(classes), **(info or {})}
        (tmp / _CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return directory


def load_classifier(path: str | os.PathLike) -> FeatureClassifier:
    """Load a folder written by :func:`save_classifier` as a :class:`FeatureClassifier` (eval mode, CPU)."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg_path, weights = path / _CONFIG, path / _WEIGHTS
    if not cfg_path.is_file() or not weights.is_file():
        raise ChexgenError(f"{path}: not a chexgen classifier folder (expected {_CONFIG} and {_WEIGHTS})")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    for key in ("arch", "image_size", "classes"):
        if key not in cfg:
            raise ChexgenError(f"{cfg_path}: missing key {key!r}")
    spec = ModelSpec(task="classification", num_outputs=len(cfg["classes"]), image_size=int(cfg["image_size"]),
                     arch=cfg["arch"], init="scratch")
    model, _ = build_model(spec)
    missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
    if missing or unexpected:
        raise ChexgenError(f"{weights}: weights do not fit {cfg['arch']} (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})")
    return FeatureClassifier(model, cfg["classes"], spec.image_size).eval()


def train_classifier(
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    classes: Sequence[str] | None = None,
    arch: str = "resnet18",
    image_size: int = 128,
    init: str = "auto",
    train_config: TrainConfig | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Train a multi-label classifier on a manifest's train split (val picks the epoch), test it, save it.

    ``classes`` defaults to every label with a positive in the train split. Returns the saved config
    (with test metrics).
    """
    manifest = Path(manifest)
    records = read_manifest(manifest)
    by_split = {s: [r for r in records if r.split == s] for s in ("train", "val", "test")}
    if not by_split["train"] or not by_split["test"]:
        raise ChexgenError(f"{manifest}: needs records with split 'train' and 'test' "
                           f"(found {', '.join(f'{k}={len(v)}' for k, v in by_split.items())})")
    if classes is None:
        classes = [c for c in LABELS if any(r.labels.get(c) == 1 for r in by_split["train"])]
    else:
        classes = [normalize_label_name(c) for c in classes]
    if not classes:
        raise ChexgenError(f"{manifest}: no positive labels in the train split")
    root = manifest.parent

    def dataset(split: str, augment: bool) -> ManifestDataset:
        spec = SampleSpec(task="classification", image_size=image_size, classes=tuple(classes), augment=augment)
        return ManifestDataset(by_split[split], root, spec)

    cfg = train_config or TrainConfig()
    spec = ModelSpec(task="classification", num_outputs=len(classes), image_size=image_size, arch=arch, init=init)
    result = fit(spec, dataset("train", True), dataset("test", False), cfg, seed,
                 val_set=dataset("val", False) if by_split["val"] else None, keep_model=True)
    info = {
        "init": result.init,
        "best_epoch": result.best_epoch,
        "seed": seed,
        "train_manifest": str(manifest),
        "n_train": len(by_split["train"]),
        "n_test": len(by_split["test"]),
        "test_metrics": result.metrics,
        "train_config": {k: getattr(cfg, k) for k in ("epochs", "batch_size", "lr", "weight_decay")},
        "seconds": round(result.seconds, 1),
    }
    save_classifier(result.model, spec, classes, out_dir, info)
    log.info("classifier saved to %s (test macro AUROC %.3f)", out_dir, result.metrics.get("auroc_macro", float("nan")))
    return json.loads((Path(out_dir) / _CONFIG).read_text(encoding="utf-8"))
