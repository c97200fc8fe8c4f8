"""The spatial-control part of ``chexgen demo``: real SIIM masks and NIH boxes through the bundled adapter.

Conditions come from public annotations that torchxrayvision ships (read at run time, never
copied): SIIM-ACR pneumothorax run-length masks and the NIH ChestX-ray14 box list. Each one is
turned into an impression in the phantom reports' wording (finding, side, zone, from where the
mask or box lies; the patient's right is the image's left on a frontal view), then generated
twice from the same seeds: with the adapter at full strength and with it switched off
(``conditioning_scale=0``, the base model alone). The difference between the two pictures is
what the adapter did; :func:`localisation_ratio` measures how much of it falls inside the
condition (1 = no preference, higher = the change lands where the mask or box says).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from chexgen.data.condition_sources import ConditionInput
from chexgen.data.labels import LABELS
from chexgen.data.manifest import Record
from chexgen.data.vocabulary import severity_at, side_at, zone_at
from chexgen.errors import ChexgenError

__all__ = ["ControlExample", "real_control_examples", "condition_impression", "localisation_ratio", "one_hot_labels"]

log = logging.getLogger(__name__)

SIIM_FILE = "siim-pneumothorax-train-rle.csv.gz"
NIH_BOX_FILE = "BBox_List_2017.csv.gz"


@dataclass
class ControlExample:
    """One real condition, the impression written for it and where it came from."""

    condition: ConditionInput
    label: str  # the CheXpert label the condition marks
    prompt: str
    source: str  # "SIIM-ACR mask" | "NIH box"


def one_hot_labels(label: str) -> dict[str, int]:
    """All 14 labels negative except ``label`` (the record of a single-finding condition)."""
    if label not in LABELS:
        raise ChexgenError(f"{label!r} is not one of the 14 CheXpert labels")
    return {name: int(name == label) for name in LABELS}


def _centroid(cond: ConditionInput) -> tuple[float, float, float]:
    """(x, y, area) of all marked pixels / boxes, as fractions of the frame."""
    w, h = float(cond.width), float(cond.height)
    if cond.masks:
        union = np.zeros_like(cond.masks[0].mask, dtype=bool)
        for m in cond.masks:
            union |= m.mask
        ys, xs = np.nonzero(union)
        if xs.size == 0:
            raise ChexgenError(f"condition {cond.id}: empty mask")
        return float(xs.mean()) / union.shape[1], float(ys.mean()) / union.shape[0], float(union.mean())
    if not cond.boxes:
        raise ChexgenError(f"condition {cond.id}: no mask and no box")
    areas = [max(0.0, (b.x1 - b.x0) * (b.y1 - b.y0)) for b in cond.boxes]
    total = sum(areas) or 1.0
    x = sum(a * (b.x0 + b.x1) / 2 for a, b in zip(areas, cond.boxes)) / total
    y = sum(a * (b.y0 + b.y1) / 2 for a, b in zip(areas, cond.boxes)) / total
    return x / w, y / h, total / (w * h)


def condition_impression(cond: ConditionInput, label: str, seed: int = 0) -> str:
    """An impression for ``label`` at the place ``cond`` marks, in the template writer's words.

    Side from the horizontal centre (frontal view: image left = patient right), zone from the
    vertical centre (upper / mid / lower thirds of the lung fields), severity from the area.
    """
    from chexgen.curation.report_writer import TemplateReportWriter

    labels = one_hot_labels(label)
    x, y, area = _centroid(cond)
    side = side_at(x)
    zone = zone_at(y, edges=(0.42, 0.6))
    severity = severity_at(area, edges=(0.02, 0.08))
    detail = {"label": label, "severity": severity}
    if label in ("Pneumothorax", "Pleural Effusion"):
        detail["side"] = side
    elif label in ("Atelectasis", "Consolidation", "Lung Lesion", "Pneumonia", "Lung Opacity"):
        detail.update(side=side, zone=zone)
    record = Record(id=f"control-{cond.id}", view="PA", labels=labels, extra={"findings": [detail]})
    return TemplateReportWriter(seed=seed).write(record).impression


def real_control_examples(n_masks: int, n_boxes: int, trained: Sequence[str], seed: int = 0,
                          min_area: float = 0.01) -> list[ControlExample]:
    """Up to ``n_masks`` SIIM pneumothorax masks and ``n_boxes`` NIH boxes of findings in ``trained``.

    Only conditions covering at least ``min_area`` of the image (visible at the demo's 128 px)
    and, for NIH, images with a single box are kept; boxes cycle through the trained findings so
    one picture does not show the same finding twice. Returns fewer (with a warning) when
    torchxrayvision's copies are missing.
    """
    from chexgen.data.condition_sources import read_box_csv, read_rle_csv
    from chexgen.data.conditions import resolve_class
    from chexgen.data.sources._common import xrv_data_file

    rng = random.Random(seed)
    out: list[ControlExample] = []
    if n_masks > 0 and "Pneumothorax" in trained:
        try:
            conds = read_rle_csv(xrv_data_file(SIIM_FILE), limit=300)
        except ChexgenError as e:
            log.warning("SIIM masks not available (%s); the demo shows no mask-guided images", e)
            conds = []
        conds = [c for c in conds if _centroid(c)[2] >= min_area]
        for c in rng.sample(conds, min(n_masks, len(conds))):
            prompt = condition_impression(c, "Pneumothorax", seed)
            out.append(ControlExample(c, "Pneumothorax", prompt, "SIIM-ACR mask"))
    if n_boxes > 0:
        try:
            conds = read_box_csv(xrv_data_file(NIH_BOX_FILE))
        except ChexgenError as e:
            log.warning("NIH boxes not available (%s); the demo shows no box-guided images", e)
            conds = []
        by_label: dict[str, list[ConditionInput]] = {}
        for c in conds:
            if len(c.boxes) != 1 or _centroid(c)[2] < min_area:
                continue
            name = resolve_class(c.boxes[0].label).name
            if name in trained:
                by_label.setdefault(name, []).append(c)
        labels = sorted(by_label)
        rng.shuffle(labels)
        for k in range(min(n_boxes, sum(len(v) for v in by_label.values()))):
            label = labels[k % len(labels)]
            pool = by_label[label]
            c = pool.pop(rng.randrange(len(pool)))
            if not pool:
                labels.remove(label)
            out.append(ControlExample(c, label, condition_impression(c, label, seed), "NIH box"))
            if not labels:
                break
    return out


def localisation_ratio(controlled: np.ndarray, uncontrolled: np.ndarray, region: np.ndarray) -> float:
    """Mean |controlled - uncontrolled| inside ``region`` over the mean outside it (same seeds).

    1 means the adapter changed the picture as much outside the condition as inside; higher
    means its effect concentrates where the mask or box is. NaN when the region is empty or
    covers the whole image, or when the two pictures are identical.
    """
    diff = np.abs(np.asarray(controlled, np.float64) - np.asarray(uncontrolled, np.float64))
    region = np.asarray(region, bool)
    if diff.shape != region.shape:
        raise ChexgenError(f"region {region.shape} does not match the images {diff.shape}")
    if not region.any() or region.all():
        return float("nan")
    outside = diff[~region].mean()
    if outside == 0:
        return float("nan")
    return float(diff[region].mean() / outside)
