"""One readable training loop for the four downstream tasks.

:func:`fit` builds the task network, trains it on a training set (AdamW, class-balanced
weighted sampling for classification), keeps the weights of the best validation epoch when a
validation set is given, and scores the test set. Task differences live in three small
functions: :func:`task_loss`, :func:`predict` and :func:`score`.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, WeightedRandomSampler
from tqdm.auto import tqdm

from chexgen.downstream.data import ManifestDataset, collate_samples
from chexgen.downstream.metrics import (
    classification_metrics,
    detection_metrics,
    regression_metrics,
    segmentation_metrics,
)
from chexgen.downstream.models import ModelSpec, build_model

__all__ = ["TrainConfig", "FitResult", "fit", "predict", "predict_dataset", "score", "seed_everything", "PRIMARY_METRIC", "class_balanced_weights"]

log = logging.getLogger(__name__)

# The one number each task is compared on (higher is better except for MAE).
PRIMARY_METRIC = {
    "classification": "auroc_macro",
    "segmentation": "dice",
    "detection": "map50",
    "regression": "mae",
}


@dataclass
class TrainConfig:
    """Optimisation settings shared by every task."""

    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 1e-4
    balanced_sampling: bool = True  # classification: inverse-frequency sample weights
    threshold: float = 0.5  # classification F1 / segmentation mask threshold
    num_workers: int = 0
    device: str = "auto"
    num_threads: int = 0  # torch CPU threads; 0 = torch's default (1 is often fastest on a busy small machine)
    progress: bool = False


@dataclass
class FitResult:
    """What one training run produced."""

    metrics: dict[str, float]
    val_metrics: dict[str, float]
    init: str
    best_epoch: int
    seconds: float
    outputs: dict[str, Any] = field(repr=False, default_factory=dict)  # test predictions
    model: torch.nn.Module | None = field(repr=False, default=None)
    state_dict: dict[str, torch.Tensor] | None = field(repr=False, default=None)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def class_balanced_weights(targets: np.ndarray) -> np.ndarray:
    """Per-sample weights so rare classes are drawn about as often as common ones.

    A sample's weight is the mean inverse frequency of its positive classes; samples with no
    positive class get the inverse frequency of the "no positive" group.
    """
    targets = np.asarray(targets) > 0.5
    n = len(targets)
    freq = targets.sum(0) / max(n, 1)
    none = ~targets.any(1)
    freq_none = none.mean() if n else 1.0
    w = np.empty(n, dtype=np.float64)
    for i in range(n):
        pos = np.flatnonzero(targets[i])
        w[i] = np.mean(1.0 / freq[pos]) if len(pos) else 1.0 / max(freq_none, 1e-12)
    return w / w.sum()


def task_loss(task: str, model: torch.nn.Module, batch: dict, device: torch.device, norm: tuple[float, float]) -> torch.Tensor:
    x = batch["image"].to(device)
    if task == "classification":
        return F.binary_cross_entropy_with_logits(model(x), batch["labels"].to(device))
    if task == "regression":
        mu, sd = norm
        return F.mse_loss(model(x).squeeze(1), (batch["severity"].to(device) - mu) / sd)
    if task == "segmentation":
        logits = model(x)
        y = batch["mask"].to(device)
        prob = torch.sigmoid(logits)
        inter = (prob * y).sum((1, 2, 3))
        soft_dice = 1 - (2 * inter + 1) / (prob.sum((1, 2, 3)) + y.sum((1, 2, 3)) + 1)
        return F.binary_cross_entropy_with_logits(logits, y) + soft_dice.mean()
    if task == "detection":
        targets = [{"boxes": b.to(device), "labels": lab.to(device)} for b, lab in zip(batch["boxes"], batch["box_labels"])]
        losses = model(x, targets)
        return sum(losses.values())
    raise ValueError(task)


@torch.no_grad()
def predict(task: str, model: torch.nn.Module, loader: DataLoader, device: torch.device, norm: tuple[float, float], threshold: float = 0.5) -> dict[str, Any]:
    """Run the model over ``loader``; returns arrays in dataset order."""
    model.eval()
    idx: list[int] = []
    scores, targets, dets, truths = [], [], [], []
    for batch in loader:
        idx.extend(batch["index"].tolist())
        x = batch["image"].to(device)
        if task == "classification":
            scores.append(torch.sigmoid(model(x)).cpu().numpy())
            targets.append(batch["labels"].numpy())
        elif task == "regression":
            mu, sd = norm
            scores.append((model(x).squeeze(1) * sd + mu).cpu().numpy())
            targets.append(batch["severity"].numpy())
        elif task == "segmentation":
            scores.append((torch.sigmoid(model(x)) >= threshold).squeeze(1).cpu().numpy())
            targets.append(batch["mask"].squeeze(1).numpy() > 0.5)
        elif task == "detection":
            for out, b, lab in zip(model(x), batch["boxes"], batch["box_labels"]):
                dets.append({k: v.cpu().numpy() for k, v in out.items()})
                truths.append({"boxes": b.numpy(), "labels": lab.numpy()})
    if task == "detection":
        return {"index": np.asarray(idx), "preds": dets, "targets": truths}
    return {"index": np.asarray(idx), "scores": np.concatenate(scores), "targets": np.concatenate(targets)}


def score(task: str, outputs: dict[str, Any], classes: tuple[str, ...], threshold: float = 0.5) -> dict[str, float]:
    if task == "classification":
        return classification_metrics(outputs["scores"], outputs["targets"], classes, threshold)
    if task == "regression":
        return regression_metrics(outputs["scores"], outputs["targets"])
    if task == "segmentation":
        return segmentation_metrics(outputs["scores"], outputs["targets"])
    return detection_metrics(outputs["preds"], outputs["targets"], classes)


def _better(task: str, new: float, old: float | None) -> bool:
    if new != new:  # nan never wins
        return old is None
    if old is None or old != old:
        return True
    return new < old if task == "regression" else new > old


def _loader(ds: ManifestDataset, cfg: TrainConfig, shuffle: bool, gen: torch.Generator | None, weights: np.ndarray | None = None) -> DataLoader:
    sampler = None
    if weights is not None:
        sampler = WeightedRandomSampler(torch.as_tensor(weights), num_samples=len(ds), replacement=True, generator=gen)
        shuffle = False
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=shuffle, sampler=sampler, generator=gen if shuffle else None,
                      num_workers=cfg.num_workers, collate_fn=collate_samples, drop_last=False)


def predict_dataset(task: str, model: torch.nn.Module, ds: ManifestDataset, cfg: TrainConfig) -> dict[str, Any]:
    """Predictions of a trained model on another set (e.g. a synthetic test set), in dataset order."""
    device = _device(cfg.device)
    model.to(device)
    try:
        return predict(task, model, _loader(ds, cfg, False, None), device, (0.0, 1.0), cfg.threshold)
    finally:
        model.cpu()


def fit(
    model_spec: ModelSpec,
    train_set: ManifestDataset,
    test_set: ManifestDataset,
    cfg: TrainConfig,
    seed: int,
    val_set: ManifestDataset | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
    keep_model: bool = False,
) -> FitResult:
    """Train on ``train_set`` and score ``test_set``; ``init_state`` starts from earlier weights (pretraining)."""
    task = model_spec.task
    classes = train_set.spec.classes
    t0 = time.perf_counter()
    gen = seed_everything(seed)
    device = _device(cfg.device)
    if device.type == "cpu":
        # Small-weight CPU training produces denormal floats, which x86 handles ~100x slower.
        torch.set_flush_denormal(True)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
    model, init = build_model(model_spec)
    if init_state is not None:
        model.load_state_dict(init_state)
        init = "pretrained"
    model.to(device)

    norm = (0.0, 1.0)
    weights = None
    if task == "regression":
        sev = np.asarray([r.severity for r in train_set.records], dtype=np.float64)
        norm = (float(sev.mean()), float(sev.std() or 1.0))
    if task == "classification" and cfg.balanced_sampling:
        targets = np.stack([train_set.label_vector(r) for r in train_set.records])
        if targets.any():
            weights = class_balanced_weights(targets)
    loader = _loader(train_set, cfg, shuffle=True, gen=gen, weights=weights)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * len(loader)))

    best: float | None = None
    best_state, best_epoch, val_metrics = None, cfg.epochs, {}
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        bar = tqdm(loader, desc=f"{task} epoch {epoch}/{cfg.epochs}", leave=False, disable=not cfg.progress)
        for batch in bar:
            loss = task_loss(task, model, batch, device, norm)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if val_set is not None and len(val_set):
            vm = score(task, predict(task, model, _loader(val_set, cfg, False, None), device, norm, cfg.threshold), classes, cfg.threshold)
            key = PRIMARY_METRIC[task]
            if _better(task, vm[key], best):
                best, best_epoch, val_metrics = vm[key], epoch, vm
                best_state = copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)

    outputs = predict(task, model, _loader(test_set, cfg, False, None), device, norm, cfg.threshold)
    metrics = score(task, outputs, classes, cfg.threshold)
    model.cpu()
    return FitResult(
        metrics=metrics,
        val_metrics=val_metrics,
        init=init,
        best_epoch=best_epoch,
        seconds=time.perf_counter() - t0,
        outputs=outputs,
        model=model if keep_model else None,
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()} if keep_model else None,
    )
