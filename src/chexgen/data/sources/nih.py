"""NIH ChestX-ray14 (Wang et al. 2017): ``Data_Entry_2017_v2020.csv`` and ``BBox_List_2017.csv``.

Files: the Data_Entry CSV (one row per image: ``Image Index``, ``Finding
Labels`` joined by ``|``, ``Patient ID``, ``Patient Age``, ``Patient
Gender``, ``View Position``, original width/height, pixel spacing) and the
optional BBox list (984 boxes over 880 images, ``Bbox [x,y,w,h]`` in pixels of
the released 1024x1024 PNGs). Both ship inside torchxrayvision and are read
from there when no path is given. Access: public (NIH Clinical Center).

Label mapping onto the shared 14 (NIH labels were text-mined from reports, so
a class that is not listed is absent: 0):

    Atelectasis -> Atelectasis        Cardiomegaly -> Cardiomegaly
    Effusion -> Pleural Effusion      Infiltration -> Lung Opacity
    Mass, Nodule -> Lung Lesion       Pneumonia -> Pneumonia
    Pneumothorax -> Pneumothorax      Consolidation -> Consolidation
    Edema -> Edema                    Pleural_Thickening -> Pleural Other
    No Finding -> No Finding
    Emphysema, Fibrosis, Hernia -> extra.other_findings (outside the 14)
    Enlarged Cardiomediastinum, Fracture, Support Devices -> unknown (None)

Boxes keep NIH's own class names. A box also gives the writer a side and a
zone (``extra.findings``): patient right is image left on PA and AP views.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from chexgen.data.manifest import Box, Record
from chexgen.data.sources._common import (
    Reject,
    SourceResult,
    empty_labels,
    find_file,
    parse_age,
    read_csv,
    require_columns,
)
from chexgen.data.vocabulary import side_at, zone_at
from chexgen.errors import ChexgenError

__all__ = ["NIH_TO_LABEL", "load_nih", "box_finding"]

NIH_TO_LABEL = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Effusion": "Pleural Effusion",
    "Infiltration": "Lung Opacity",
    "Infiltrate": "Lung Opacity",
    "Mass": "Lung Lesion",
    "Nodule": "Lung Lesion",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Pleural_Thickening": "Pleural Other",
    "No Finding": "No Finding",
}
NIH_OTHER = {"Emphysema": "emphysema", "Fibrosis": "fibrosis", "Hernia": "hiatal hernia"}
_KNOWN = sorted(set(NIH_TO_LABEL.values()))
_COLUMNS = ["Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender", "View Position"]


def box_finding(label: str, box: Box, width: float, height: float, view: str | None) -> dict | None:
    """Side and zone of a box, for the report writer (``None`` if the label is not one of the 14)."""
    target = NIH_TO_LABEL.get(box.label, label)
    cx, cy = (box.x0 + box.x1) / 2 / width, (box.y0 + box.y1) / 2 / height
    side = None
    if view in ("PA", "AP", None) and target not in ("Cardiomegaly",):
        span = (box.x1 - box.x0) / width
        side = "bilateral" if span > 0.6 else side_at(cx)
    zone = None
    if target not in ("Cardiomegaly",):
        zone = zone_at(cy, edges=(0.4, 0.6))
    kind = {"Mass": "mass", "Nodule": "nodule"}.get(box.label)
    return {"label": target, "side": side, "zone": zone, "severity": None, "kind": kind}


#: Labels that occur in the BBox list (NIH spells infiltration "Infiltrate" there).
BOX_LABELS = frozenset(NIH_TO_LABEL) | frozenset(NIH_OTHER)
FRAME = 1024  # the released PNGs are all 1024 x 1024; boxes are in their pixels


def _box_problem(label: object, coords: tuple) -> str | None:
    """Why a BBox row cannot be used, or None."""
    if not isinstance(label, str) or not label.strip():
        return "missing 'Finding Label'"
    if label.strip() not in BOX_LABELS:
        return f"unknown box label {label!r}; expected one of {sorted(BOX_LABELS)}"
    names = ("x", "y", "w", "h")
    values = []
    for name, v in zip(names, coords):
        if v is None:
            return f"box {name} is missing (a short row?)"
        try:
            f = float(v)
        except (TypeError, ValueError):
            return f"box {name} {v!r} is not a number"
        if not np.isfinite(f):
            return f"box {name} {v!r} is not a finite number"
        values.append(f)
    x, y, w, h = values
    if w <= 0 or h <= 0:
        return f"zero-size box (w {w:g}, h {h:g})"
    if x < 0 or y < 0 or x + w > FRAME or y + h > FRAME:
        return (f"box x {x:g}..{x + w:g}, y {y:g}..{y + h:g} is outside the {FRAME} x {FRAME} image")
    return None


def _read_boxes(path: Path, rejects: list[Reject]) -> dict[str, list[Box]]:
    """Boxes per image file name; bad rows (unknown label, bad numbers, zero size, outside the image) -> rejects."""
    frame = read_csv(path, dtype=str, keep_default_na=False)
    if len(frame.columns) < 6:
        raise ChexgenError(f"{path}: expected 6 columns (Image Index, Finding Label, Bbox [x,y,w,h]), "
                           f"found {list(frame.columns)}")
    frame = frame.rename(columns={frame.columns[2]: "x", frame.columns[3]: "y",
                                  frame.columns[4]: "w", frame.columns[5]: "h"})
    require_columns(frame, ["Image Index", "Finding Label", "x", "y", "w", "h"], path)
    out: dict[str, list[Box]] = defaultdict(list)
    for row, (name, label, x, y, w, h) in enumerate(frame[["Image Index", "Finding Label", "x", "y", "w", "h"]]
                                                    .itertuples(index=False), start=1):
        rid = "nih/" + name.rsplit(".", 1)[0] if name else None
        coords = tuple(None if v == "" else v for v in (x, y, w, h))
        problem = "missing 'Image Index'" if not name else _box_problem(label, coords)
        if problem is not None:
            rejects.append(Reject("nih", str(path), row, problem, rid))
            continue
        x, y, w, h = (float(v) for v in coords)
        out[name].append(Box(label=label.strip(), x0=x, y0=y, x1=x + w, y1=y + h, source="nih-bbox"))
    return out


def _index_images(image_root: Path) -> dict[str, str]:
    """File name -> path relative to ``image_root`` (NIH spreads PNGs over images_001..012 folders)."""
    index = {}
    for folder, _, files in os.walk(image_root):
        for f in files:
            if f.lower().endswith(".png"):
                index.setdefault(f, str(Path(folder, f).relative_to(image_root)))
    return index


def load_nih(root: str | os.PathLike | None = None, *, bbox: str | os.PathLike | None = None,
             image_root: str | os.PathLike | None = None, check_images: bool = False,
             limit: int | None = None) -> SourceResult:
    """Read ChestX-ray14 metadata into records.

    Args:
        root: the Data_Entry CSV or its folder; default: the copy shipped in torchxrayvision.
        bbox: the BBox list CSV; default: the shipped copy when ``root`` is not given, else
            ``BBox_List_2017.csv(.gz)`` next to the Data_Entry file if present.
        image_root: folder holding the PNGs (searched recursively); paths are stored under it.
        check_images: reject rows whose image is not under ``image_root``.
        limit: read only the first ``limit`` rows (tests, quick looks).
    """
    path = find_file(root, ["Data_Entry_2017_v2020.csv", "Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017.csv",
                            "Data_Entry_2017.csv.gz"], "NIH Data_Entry", xrv_fallback="Data_Entry_2017_v2020.csv.gz")
    frame = read_csv(path, nrows=limit, dtype={"Patient Age": str})
    require_columns(frame, _COLUMNS, path)
    result = SourceResult(source="nih", files=[str(path)])
    # a short row (fewer fields than the header) leaves missing values: that row is a reject
    missing = frame[["Image Index", "Finding Labels", "Patient ID", "Patient Gender", "View Position"]].isna()
    short = missing.any(axis=1).to_numpy()

    if bbox is None and root is None:
        bbox_path: Path | None = find_file(None, [], "NIH BBox", xrv_fallback="BBox_List_2017.csv.gz")
    elif bbox is None:
        bbox_path = next((p for p in (path.parent / "BBox_List_2017.csv", path.parent / "BBox_List_2017.csv.gz")
                          if p.is_file()), None)
    else:
        bbox_path = find_file(bbox, ["BBox_List_2017.csv", "BBox_List_2017.csv.gz"], "NIH BBox")
    boxes = _read_boxes(bbox_path, result.rejects) if bbox_path is not None else {}
    if bbox_path is not None:
        result.files.append(str(bbox_path))

    images = _index_images(Path(image_root)) if (image_root is not None and check_images) else None
    has_size = "OriginalImage[Width" in frame.columns and "Height]" in frame.columns
    widths = frame["OriginalImage[Width"].to_numpy() if has_size else np.zeros(len(frame))
    heights = frame["Height]"].to_numpy() if has_size else np.zeros(len(frame))
    base_labels = empty_labels(_KNOWN)

    columns = [frame[c].astype(str).tolist() for c in _COLUMNS]
    # Ages: plain numbers in bulk; anything else ("058Y", junk) through the careful parser.
    ages_num = pd.to_numeric(frame["Patient Age"], errors="coerce").to_numpy(dtype=float)
    root_prefix = str(image_root) + os.sep if image_root is not None else ""
    for i, (name, findings, pid, age_s, sex, view_s) in enumerate(zip(*columns)):
        row = i + 1
        rid = "nih/" + name.rsplit(".", 1)[0]
        if short[i]:
            gone = [c for c in missing.columns if missing[c].iat[i]]
            result.rejects.append(Reject("nih", str(path), row, f"missing value(s) in {gone} (a short row?)",
                                         None if "Image Index" in gone else rid))
            continue
        if sex not in ("M", "F"):
            result.rejects.append(Reject("nih", str(path), row, f"Patient Gender {sex!r} is not M or F", rid))
            continue
        view = view_s.strip().upper()
        if view not in ("PA", "AP"):
            result.rejects.append(Reject("nih", str(path), row, f"View Position {view_s!r} is not PA or AP", rid))
            continue
        age = ages_num[i]
        if age != age or not 0 <= age <= 120:
            try:
                age = parse_age(age_s)
            except ValueError as e:
                result.rejects.append(Reject("nih", str(path), row, str(e), rid))
                continue
        else:
            age = float(age)
        labels = dict(base_labels)
        other: list[str] = []
        unknown = []
        for tok in findings.split("|"):
            tok = tok.strip()
            if tok in NIH_TO_LABEL:
                labels[NIH_TO_LABEL[tok]] = 1
            elif tok in NIH_OTHER:
                other.append(NIH_OTHER[tok])
            elif tok:
                unknown.append(tok)
        if unknown:
            result.rejects.append(Reject("nih", str(path), row, f"unknown finding label(s) {unknown}", rid))
            continue
        if labels["No Finding"] != 1:
            labels["No Finding"] = 0
        rel = name
        if images is not None:
            if name not in images:
                result.rejects.append(Reject("nih", str(path), row, f"image {name} not found under {image_root}",
                                             rid))
                continue
            rel = images[name]
        extra: dict = {"source_labels": findings}
        if widths[i] > 0 and heights[i] > 0:
            extra["original_size"] = [int(widths[i]), int(heights[i])]
        if other:
            extra["other_findings"] = other
        rec_boxes = boxes.get(name, [])
        if rec_boxes:
            # Boxes are in pixels of the released 1024 x 1024 PNGs.
            extra["findings"] = [d for b in rec_boxes if (d := box_finding(b.label, b, 1024, 1024, view))
                                 and labels.get(d["label"]) == 1]
        result.records.append(Record(
            id=rid,
            image=root_prefix + rel,
            dataset="nih",
            view=view,
            sex=sex,
            age=age,
            patient_id=pid,
            width=1024,  # the released PNGs are all 1024 x 1024; the original size is kept in extra
            height=1024,
            labels=labels,
            boxes=rec_boxes,
            extra=extra,
        ))
    return result
