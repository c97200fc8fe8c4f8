"""Datasets over manifests for the downstream tasks, with one shared geometric transform.

A sample is a dict with fixed keys: ``image`` (1, S, S) float in [0, 1] and the
task target: ``labels`` (C,) for classification, ``mask`` (1, S, S) for
segmentation, ``boxes`` (N, 4) xyxy + ``box_labels`` (N,) for detection,
``severity`` () for regression. Images are letterboxed to S x S (longer side
scaled to S, the rest zero-padded) so boxes and masks keep their geometry; in
training a small random affine is drawn once per sample and applied to the
image, its mask and its boxes together (torchvision ``transforms.v2`` with
``tv_tensors``), so targets never drift from the pixels they describe.

Horizontal flips are off by default: they swap laterality (heart side) in chest
radiographs.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from chexgen.data.conditions import decode_rle
from chexgen.data.imageio import load_gray
from chexgen.data.labels import LABEL_INDEX, labels_to_vector
from chexgen.data.manifest import Record
from chexgen.errors import ChexgenError

__all__ = [
    "TASKS",
    "SampleSpec",
    "ManifestDataset",
    "decode_rle",
    "matching_masks",
    "collate_samples",
]

log = logging.getLogger(__name__)

TASKS = ("classification", "segmentation", "detection", "regression")


@dataclass
class SampleSpec:
    """What a dataset extracts from each record.

    task: one of :data:`TASKS`.
    image_size: side S of the square network input.
    classes: label names (classification) or box labels (detection, background excluded).
    mask_name: which :class:`~chexgen.data.manifest.Mask` to read (segmentation): a name or a
        glob (matches are united); a record without a match is a negative (empty mask).
    uncertain_as: value for uncertain (-1) labels; missing labels count as 0.
    augment: random affine on (image, mask, boxes) together; for training only.
    """

    task: str
    image_size: int = 224
    classes: tuple[str, ...] = ()
    mask_name: str | None = None
    uncertain_as: float = 1.0
    augment: bool = False
    max_rotation: float = 5.0
    max_translate: float = 0.05
    scale_range: tuple[float, float] = (0.9, 1.1)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ChexgenError(f"unknown downstream task {self.task!r}; expected one of {TASKS}")
        if self.task in ("classification", "detection") and not self.classes:
            raise ChexgenError(f"task {self.task!r} needs a non-empty list of classes")
        if self.task == "segmentation" and not self.mask_name:
            raise ChexgenError("task 'segmentation' needs a mask name (config key 'mask')")


def matching_masks(rec: Record, pattern: str | None) -> list:
    """Masks of ``rec`` whose name equals ``pattern`` or matches it as a glob.

    Globs let one target cover indexed names, e.g. ``finding_*_pneumothorax`` in the phantom
    cohort or ``rib_*`` for all ribs; several matches are united into one mask.
    """
    if not pattern:
        return []
    return [m for m in rec.masks if m.name == pattern or fnmatch.fnmatchcase(m.name, pattern)]


class ManifestDataset(Dataset):
    """Records of one manifest (or a mix of several) as task samples.

    ``roots`` gives, per record, the folder its relative paths resolve against
    (records of a real and a synthetic manifest can be mixed this way).
    Letterboxed base tensors are cached in memory after the first read when
    ``cache`` is true (the downstream sets are small; this spares the decoder).
    """

    def __init__(
        self,
        records: Sequence[Record],
        roots: Sequence[str | Path | None] | str | Path | None,
        spec: SampleSpec,
        cache: bool = True,
    ) -> None:
        self.records = list(records)
        if roots is None or isinstance(roots, (str, Path)):
            self.roots = [roots] * len(self.records)
        else:
            self.roots = list(roots)
        if len(self.roots) != len(self.records):
            raise ValueError("roots must match records one to one")
        self.spec = spec
        self.cache = cache
        self._cache: dict[int, dict[str, Any]] = {}
        size = spec.image_size
        self._base = v2.Compose([v2.Resize(size=None, max_size=size, antialias=True), v2.CenterCrop(size)])
        self._augment = v2.RandomAffine(
            degrees=spec.max_rotation,
            translate=(spec.max_translate, spec.max_translate),
            scale=spec.scale_range,
        )

    def __len__(self) -> int:
        return len(self.records)

    # -- targets ---------------------------------------------------------------
    def label_vector(self, rec: Record) -> np.ndarray:
        full = labels_to_vector(rec.labels, uncertain_as=self.spec.uncertain_as, missing_as=0.0)
        return np.asarray([full[LABEL_INDEX[c]] for c in self.spec.classes], dtype=np.float32)

    def _load_mask(self, rec: Record, root: Any, shape: tuple[int, int]) -> np.ndarray:
        out = np.zeros(shape, dtype=bool)
        for m in matching_masks(rec, self.spec.mask_name):
            if m.rle is not None:
                mask = decode_rle(m.rle, int(m.width), int(m.height))
            else:
                mask = load_gray(rec.resolve(m.path, root)) > 0.5
            if mask.shape != shape:
                raise ChexgenError(
                    f"record {rec.id!r}: mask {m.name!r} is {mask.shape[1]}x{mask.shape[0]} but the image is "
                    f"{shape[1]}x{shape[0]}"
                )
            out |= mask
        return out

    def _read(self, idx: int) -> dict[str, Any]:
        rec, root = self.records[idx], self.roots[idx]
        if rec.image is None:
            raise ChexgenError(f"record {rec.id!r} has no image path")
        img = load_gray(rec.resolve(rec.image, root))
        h, w = img.shape
        sample: dict[str, Any] = {"image": tv_tensors.Image(torch.from_numpy(img)[None])}
        task = self.spec.task
        if task == "segmentation":
            sample["mask"] = tv_tensors.Mask(torch.from_numpy(self._load_mask(rec, root, (h, w)))[None].to(torch.uint8))
        elif task == "detection":
            keep = [b for b in rec.boxes if b.label in self.spec.classes]
            coords = torch.tensor([[b.x0, b.y0, b.x1, b.y1] for b in keep], dtype=torch.float32).reshape(-1, 4)
            sample["boxes"] = tv_tensors.BoundingBoxes(coords, format="XYXY", canvas_size=(h, w))
            sample["box_labels"] = torch.tensor([self.spec.classes.index(b.label) + 1 for b in keep], dtype=torch.int64)
        elif task == "classification":
            sample["labels"] = torch.from_numpy(self.label_vector(rec))
        elif task == "regression":
            if rec.severity is None:
                raise ChexgenError(f"record {rec.id!r}: regression needs a 'severity' value")
            sample["severity"] = torch.tensor(float(rec.severity), dtype=torch.float32)
        return self._base(sample)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        if self.cache and idx in self._cache:
            sample = dict(self._cache[idx])
        else:
            sample = self._read(idx)
            if self.cache:
                self._cache[idx] = dict(sample)
        if self.spec.augment:
            sample = self._augment(sample)
        out: dict[str, Any] = {"index": idx, "image": sample["image"].as_subclass(torch.Tensor).float()}
        if "mask" in sample:
            out["mask"] = (sample["mask"].as_subclass(torch.Tensor) > 0).float()
        if "boxes" in sample:
            boxes = sample["boxes"].as_subclass(torch.Tensor).clone()
            size = self.spec.image_size
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, size)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, size)
            # A box pushed (almost) out of the frame by the affine is dropped with its label.
            ok = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
            out["boxes"] = boxes[ok]
            out["box_labels"] = sample["box_labels"][ok]
        for key in ("labels", "severity"):
            if key in sample:
                out[key] = sample[key]
        return out


def collate_samples(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack fixed-size fields; keep per-image box lists as lists (detection)."""
    out: dict[str, Any] = {"index": torch.tensor([b["index"] for b in batch])}
    out["image"] = torch.stack([b["image"] for b in batch])
    for key in ("labels", "mask", "severity"):
        if key in batch[0]:
            out[key] = torch.stack([b[key] for b in batch])
    if "boxes" in batch[0]:
        out["boxes"] = [b["boxes"] for b in batch]
        out["box_labels"] = [b["box_labels"] for b in batch]
    return out
