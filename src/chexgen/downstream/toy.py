"""A tiny drawn cohort with exact ground truth for every downstream task.

Shapes at known places stand in for findings, so each task has an easy,
checkable answer: a large central disk is "Cardiomegaly", a bright lower band is
"Pleural Effusion", a bright rectangle with a saved mask is "Pneumothorax"
(mask ``pneumothorax``), a small square with a box is "Lung Lesion", and the
brightness of a central patch encodes ``severity`` (0..4). Sex, age and race are
drawn for fairness experiments; ``weak_groups`` fades the findings for chosen
subgroups to plant a known performance gap.

This is for tests, demos and benchmarks when no phantom cohort
(``chexgen phantom``) is at hand; it says nothing about radiographs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from chexgen.data.imageio import save_png
from chexgen.data.manifest import Box, Mask, Record, write_manifest

__all__ = ["make_toy_cohort", "TOY_CLASSES"]

TOY_CLASSES = ("Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Lung Lesion")
_RACES = ("White", "Black", "Asian")


def _draw(rng: np.random.Generator, size: int, findings: dict[str, bool], severity: float, strength: float):
    s = size
    yy, xx = np.mgrid[0:s, 0:s]
    img = 0.15 + 0.05 * rng.standard_normal((s, s))
    # Upper-right patch whose brightness is the severity.
    img[int(0.05 * s) : int(0.4 * s), int(0.6 * s) : int(0.95 * s)] += 0.12 * severity * strength
    r = (0.26 if findings["Cardiomegaly"] else 0.12) * s
    cx, cy = 0.45 * s, 0.55 * s
    img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r**2] += 0.25 * strength
    if findings["Pleural Effusion"]:
        img[int(0.85 * s) :, :] += 0.4 * strength
    mask = np.zeros((s, s), dtype=bool)
    if findings["Pneumothorax"]:
        h, w = int(rng.integers(s // 6, s // 3)), int(rng.integers(s // 6, s // 3))
        y0, x0 = int(rng.integers(1, s // 2 - h)), int(rng.integers(1, s - w - 1))
        mask[y0 : y0 + h, x0 : x0 + w] = True
        img[mask] += 0.45 * strength
    boxes = []
    if findings["Lung Lesion"]:
        k = max(4, s // 5)
        y0, x0 = int(rng.integers(1, s - k - 1)), int(rng.integers(1, s - k - 1))
        img[y0 : y0 + k, x0 : x0 + k] += 0.6 * strength
        boxes.append(Box("Lung Lesion", float(x0), float(y0), float(x0 + k), float(y0 + k)))
    return np.clip(img, 0, 1), mask, boxes


def make_toy_cohort(
    folder: str | Path,
    n: int,
    size: int = 32,
    seed: int = 0,
    splits: tuple[float, float, float] = (0.6, 0.2, 0.2),
    prevalence: Mapping[str, float] | None = None,
    synthetic: bool = False,
    weak_groups: Mapping[str, float] | None = None,
    id_prefix: str = "toy",
) -> Path:
    """Draw ``n`` cases into ``folder`` (PNGs, masks, ``manifest.jsonl``); returns the manifest path.

    ``weak_groups`` maps ``"sex=F"`` / ``"race=Black"`` / ``"age_band=66+"`` to a signal strength
    (1 = normal, 0 = findings invisible) for the cases in that group.
    """
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    prev = {"Cardiomegaly": 0.4, "Pleural Effusion": 0.3, "Pneumothorax": 0.4, "Lung Lesion": 0.5}
    prev.update(prevalence or {})
    weak = dict(weak_groups or {})
    records = []
    n_train, n_val = int(round(splits[0] * n)), int(round(splits[1] * n))
    for i in range(n):
        findings = {c: bool(rng.random() < prev[c]) for c in TOY_CLASSES}
        severity = float(rng.integers(0, 5))
        sex = "M" if rng.random() < 0.5 else "F"
        age = float(rng.integers(19, 90))
        race = str(rng.choice(_RACES))
        band = "19-40" if age <= 40 else ("41-65" if age <= 65 else "66+")
        strength = 1.0
        for key, val in (("sex", sex), ("race", race), ("age_band", band)):
            strength = min(strength, weak.get(f"{key}={val}", 1.0))
        img, mask, boxes = _draw(rng, size, findings, severity, strength)
        rid = f"{id_prefix}{i:05d}"
        save_png(folder / "images" / f"{rid}.png", img)
        masks = []
        if findings["Pneumothorax"]:
            save_png(folder / "images" / f"{rid}_ptx.png", mask.astype(np.float32))
            masks.append(Mask("pneumothorax", path=f"images/{rid}_ptx.png"))
        labels = {c: int(v) for c, v in findings.items()}
        labels["No Finding"] = int(not any(findings.values()))
        split = "train" if i < n_train else ("val" if i < n_train + n_val else "test")
        records.append(
            Record(
                id=rid, image=f"images/{rid}.png", dataset="toy", split=split, view="PA", sex=sex, age=age,
                race=race, width=size, height=size, labels=labels, masks=masks, boxes=boxes,
                severity=severity, synthetic=synthetic,
                provenance={"model": "toy"} if synthetic else None,
            )
        )
    path = folder / "manifest.jsonl"
    write_manifest(path, records)
    return path
