"""The downstream evaluation sets: VinDr-RibCXR, Object-CXR, ChestX-Det, RALO, MedFMC-ChestDR.

All written from the public documentation only (no file of these sets can be
read here; the tests write tiny files in the documented layouts). Each gives
what its task needs: rib polygons (segmentation), foreign-object boxes and
ChestX-Det boxes/polygons (detection), opacity severity scores (regression),
19 multi-label classes (classification). Labels outside the shared 14 are
kept in ``extra``; labels a set does not annotate stay unknown.

* **VinDr-RibCXR** (``train/`` or ``val/`` ``*.json``): a JSON object with key
  ``img`` (index -> image file name) and one key per rib ``R1``..``R10``,
  ``L1``..``L10`` (index -> list of ``{"x", "y"}`` points, or ``[x, y]``
  pairs). Polygons go to ``extra.polygons``.
* **Object-CXR** (``train.csv`` / ``dev.csv``): ``image_name`` and
  ``annotation``: blank, or ``;``-separated shapes ``T x1 y1 x2 y2 ...`` with
  T = 0 rectangle, 1 ellipse (both two corners), 2 polygon. Every shape
  becomes a ``Box(label="foreign object")`` around it.
* **ChestX-Det** (``ChestX_Det_train.json``): a list of ``{"file_name",
  "syms", "boxes", "polygons"}`` with 13 classes; mapped as NIH (Effusion ->
  Pleural Effusion, Nodule / Mass / Diffuse Nodule -> Lung Lesion, Pleural
  Thickening -> Pleural Other, Fracture, Cardiomegaly, Atelectasis,
  Consolidation, Pneumothorax); Calcification, Emphysema, Fibrosis ->
  ``extra.other_findings``.
* **RALO** (a CSV): an image column (``filename`` / ``FileName`` / ``image``)
  and mean scores whose column names contain ``geographic`` (extent, 0-8)
  and ``opacity`` (density, 0-8). ``severity`` = geographic extent; Lung
  Opacity = 1 when the extent is above 0, else 0.
* **MedFMC-ChestDR** (``chest_train.txt`` style): lines ``<image> <19 0/1 values>``
  in the documented class order :data:`MEDFMC_CLASSES`, or a CSV with an
  ``img_id`` / ``image`` column and one column per class.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd

from chexgen.data.labels import LABELS
from chexgen.data.manifest import Box, Record
from chexgen.data.sources._common import Reject, SourceResult, find_file, read_csv
from chexgen.errors import ChexgenError

__all__ = ["load_vindr_rib", "load_object_cxr", "load_chestx_det", "load_ralo", "load_medfmc", "MEDFMC_CLASSES"]

RIBS = tuple(f"{s}{i}" for s in "RL" for i in range(1, 11))


def _prefix(image_root: str | os.PathLike | None) -> str:
    return str(image_root) + os.sep if image_root is not None else ""


def _missing(check: bool, image_root, prefix: str, rel: str) -> bool:
    return check and image_root is not None and not os.path.exists(prefix + rel)


# -- VinDr-RibCXR ---------------------------------------------------------------------------
def _points(raw) -> list[list[float]]:
    out = []
    for p in raw or []:
        if isinstance(p, dict) and "x" in p and "y" in p:
            out.append([float(p["x"]), float(p["y"])])
        elif isinstance(p, (list, tuple)) and len(p) == 2:
            out.append([float(p[0]), float(p[1])])
        else:
            raise ValueError(f"point {p!r} is neither {{'x', 'y'}} nor [x, y]")
    return out


def load_vindr_rib(root: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                   check_images: bool = False, limit: int | None = None) -> SourceResult:
    """Read a VinDr-RibCXR annotation JSON into records with 20 rib polygons each."""
    path = find_file(root, ["train/VinDr_RibCXR_train.json", "VinDr_RibCXR_train.json", "val/VinDr_RibCXR_val.json",
                            "annotations.json"], "VinDr-RibCXR JSON")
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or "img" not in data:
        raise ChexgenError(f"{path}: expected a JSON object with 'img' and rib keys R1..R10, L1..L10")
    result = SourceResult(source="vindr_rib", files=[str(path)])
    prefix = _prefix(image_root)
    for n, (idx, name) in enumerate(data["img"].items(), start=1):
        if limit is not None and n > limit:
            break
        rel = str(name)
        rid = "vindr_rib/" + Path(rel).stem
        try:
            polygons = {rib: _points((data.get(rib) or {}).get(idx)) for rib in RIBS if (data.get(rib) or {}).get(idx)}
        except (ValueError, TypeError) as e:
            result.rejects.append(Reject("vindr_rib", str(path), n, f"bad polygon: {e}", rid))
            continue
        if not polygons:
            result.rejects.append(Reject("vindr_rib", str(path), n, "no rib polygons", rid))
            continue
        if _missing(check_images, image_root, prefix, rel):
            result.rejects.append(Reject("vindr_rib", str(path), n, f"image {prefix + rel} not found", rid))
            continue
        result.records.append(Record(id=rid, image=prefix + rel, dataset="vindr_rib",
                                     labels={k: None for k in LABELS}, extra={"polygons": polygons}))
    return result


# -- Object-CXR -----------------------------------------------------------------------------
def _object_boxes(annotation: str) -> list[Box]:
    boxes = []
    for shape in filter(None, (s.strip() for s in annotation.split(";"))):
        nums = [float(v) for v in shape.split()]
        kind, coords = int(nums[0]), nums[1:]
        if kind not in (0, 1, 2) or len(coords) < 4 or len(coords) % 2:
            raise ValueError(f"shape {shape!r}: expected 'T x1 y1 x2 y2 ...' with T in 0/1/2")
        xs, ys = coords[0::2], coords[1::2]
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"shape {shape!r} has no area")
        boxes.append(Box(label="foreign object", x0=x0, y0=y0, x1=x1, y1=y1))
    return boxes


def load_object_cxr(root: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                    check_images: bool = False, limit: int | None = None) -> SourceResult:
    """Read an Object-CXR annotation CSV into records with foreign-object boxes."""
    path = find_file(root, ["train.csv", "dev.csv"], "Object-CXR CSV")
    frame = read_csv(path, nrows=limit, dtype=str, keep_default_na=False)
    if "image_name" not in frame.columns or "annotation" not in frame.columns:
        raise ChexgenError(f"{path}: expected columns image_name and annotation, found {list(frame.columns)}")
    result = SourceResult(source="object_cxr", files=[str(path)])
    prefix = _prefix(image_root)
    split = "val" if path.name.startswith("dev") else "train"
    for n, (name, ann) in enumerate(zip(frame["image_name"], frame["annotation"]), start=1):
        rid = "object_cxr/" + Path(name).stem
        try:
            boxes = _object_boxes(ann)
        except ValueError as e:
            result.rejects.append(Reject("object_cxr", str(path), n, str(e), rid))
            continue
        if _missing(check_images, image_root, prefix, name):
            result.rejects.append(Reject("object_cxr", str(path), n, f"image {prefix + name} not found", rid))
            continue
        result.records.append(Record(id=rid, image=prefix + name, dataset="object_cxr", split=split,
                                     labels={k: None for k in LABELS}, boxes=boxes,
                                     extra={"foreign_object": int(bool(boxes))}))
    return result


# -- ChestX-Det -----------------------------------------------------------------------------
CHESTX_DET_TO_LABEL = {"Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Consolidation": "Consolidation",
                       "Effusion": "Pleural Effusion", "Fracture": "Fracture", "Mass": "Lung Lesion",
                       "Nodule": "Lung Lesion", "Diffuse Nodule": "Lung Lesion", "Pleural Thickening": "Pleural Other",
                       "Pneumothorax": "Pneumothorax"}
CHESTX_DET_OTHER = {"Calcification": "calcification", "Emphysema": "emphysema", "Fibrosis": "fibrosis"}


def load_chestx_det(root: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                    check_images: bool = False, limit: int | None = None) -> SourceResult:
    """Read a ChestX-Det JSON into records with boxes (and polygons in ``extra.polygons``)."""
    path = find_file(root, ["ChestX_Det_train.json", "ChestX_Det_test.json"], "ChestX-Det JSON")
    items = json.loads(Path(path).read_text())
    if not isinstance(items, list):
        raise ChexgenError(f"{path}: expected a JSON list of {{file_name, syms, boxes, polygons}}")
    result = SourceResult(source="chestx_det", files=[str(path)])
    prefix = _prefix(image_root)
    known = set(CHESTX_DET_TO_LABEL.values()) | {"No Finding"}
    for n, item in enumerate(items[:limit] if limit else items, start=1):
        name = str(item.get("file_name", ""))
        rid = "chestx_det/" + Path(name).stem
        syms, raw_boxes = item.get("syms") or [], item.get("boxes") or []
        unknown = [s for s in syms if s not in CHESTX_DET_TO_LABEL and s not in CHESTX_DET_OTHER]
        if not name or unknown or len(syms) != len(raw_boxes):
            reason = ("no file_name" if not name else f"unknown class(es) {unknown}" if unknown
                      else f"{len(syms)} classes but {len(raw_boxes)} boxes")
            result.rejects.append(Reject("chestx_det", str(path), n, reason, rid))
            continue
        try:
            boxes = [Box(label=s, x0=float(b[0]), y0=float(b[1]), x1=float(b[2]), y1=float(b[3]))
                     for s, b in zip(syms, raw_boxes)]
        except (TypeError, ValueError, IndexError):
            result.rejects.append(Reject("chestx_det", str(path), n, "boxes must be [x0, y0, x1, y1]", rid))
            continue
        if any(b.x1 <= b.x0 or b.y1 <= b.y0 for b in boxes):
            result.rejects.append(Reject("chestx_det", str(path), n, "a box has x1 <= x0 or y1 <= y0", rid))
            continue
        if _missing(check_images, image_root, prefix, name):
            result.rejects.append(Reject("chestx_det", str(path), n, f"image {prefix + name} not found", rid))
            continue
        labels = {k: (0 if k in known else None) for k in LABELS}
        for s in syms:
            if s in CHESTX_DET_TO_LABEL:
                labels[CHESTX_DET_TO_LABEL[s]] = 1
        other = sorted({CHESTX_DET_OTHER[s] for s in syms if s in CHESTX_DET_OTHER})
        labels["No Finding"] = 0 if syms else 1
        extra: dict = {}
        if other:
            extra["other_findings"] = other
        if item.get("polygons"):
            extra["polygons"] = item["polygons"]
        result.records.append(Record(id=rid, image=prefix + name, dataset="chestx_det", labels=labels,
                                     boxes=boxes, extra=extra))
    return result


# -- RALO -------------------------------------------------------------------------------------
def load_ralo(root: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
              check_images: bool = False, limit: int | None = None) -> SourceResult:
    """Read RALO severity scores into records (``severity`` = geographic extent, 0-8)."""
    path = find_file(root, ["ralo-dataset-metadata.csv", "RALO-Dataset-Metadata.csv", "metadata.csv"], "RALO CSV")
    frame = read_csv(path, nrows=limit)
    image_col = next((c for c in frame.columns if c.lower() in ("filename", "file_name", "image", "image_name")), None)
    geo_col = next((c for c in frame.columns if "geographic" in c.lower()), None)
    opa_col = next((c for c in frame.columns if "opacity" in c.lower()), None)
    if image_col is None or geo_col is None:
        raise ChexgenError(f"{path}: expected an image column (filename) and a geographic extent score column; "
                           f"found {list(frame.columns)}")
    result = SourceResult(source="ralo", files=[str(path)])
    prefix = _prefix(image_root)
    geo = pd.to_numeric(frame[geo_col], errors="coerce")
    opa = pd.to_numeric(frame[opa_col], errors="coerce") if opa_col else None
    for n, name in enumerate(frame[image_col].astype(str), start=1):
        rid = "ralo/" + Path(name).stem
        g = geo.iloc[n - 1]
        if g != g or not 0 <= g <= 8:
            result.rejects.append(Reject("ralo", str(path), n, f"geographic extent {frame[geo_col].iloc[n - 1]!r} "
                                         "is not a score in 0..8", rid))
            continue
        if _missing(check_images, image_root, prefix, name):
            result.rejects.append(Reject("ralo", str(path), n, f"image {prefix + name} not found", rid))
            continue
        labels = {k: None for k in LABELS}
        labels["Lung Opacity"] = 1 if g > 0 else 0
        extra = {"geographic_extent": float(g)}
        if opa is not None and opa.iloc[n - 1] == opa.iloc[n - 1]:
            extra["opacity_score"] = float(opa.iloc[n - 1])
        result.records.append(Record(id=rid, image=prefix + name, dataset="ralo", severity=float(g), labels=labels,
                                     extra=extra))
    return result


# -- MedFMC-ChestDR ----------------------------------------------------------------------------
MEDFMC_CLASSES = ("pleural_effusion", "nodule", "pneumonia", "cardiomegaly", "hilar_enlargement", "fracture_old",
                  "fibrosis", "aortic_calcification", "tortuous_aorta", "thickened_pleura", "TB", "pneumothorax",
                  "emphysema", "atelectasis", "calcification", "pulmonary_edema", "increased_lung_markings",
                  "elevated_diaphragm", "consolidation")
MEDFMC_TO_LABEL = {"pleural_effusion": "Pleural Effusion", "nodule": "Lung Lesion", "pneumonia": "Pneumonia",
                   "cardiomegaly": "Cardiomegaly", "fracture_old": "Fracture", "thickened_pleura": "Pleural Other",
                   "pneumothorax": "Pneumothorax", "atelectasis": "Atelectasis", "pulmonary_edema": "Edema",
                   "consolidation": "Consolidation"}


def load_medfmc(root: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                check_images: bool = False, limit: int | None = None) -> SourceResult:
    """Read MedFMC-ChestDR labels (whitespace list or CSV) into records."""
    path = find_file(root, ["chest_train.txt", "chest_val.txt", "chest_test.txt", "chest_train.csv"],
                     "MedFMC-ChestDR labels")
    rows: list[tuple[str, list[str]]] = []
    if path.suffix == ".csv":
        frame = read_csv(path, nrows=limit, dtype=str)
        img_col = next((c for c in ("img_id", "image", "image_name") if c in frame.columns), None)
        missing = [c for c in MEDFMC_CLASSES if c not in frame.columns]
        if img_col is None or missing:
            raise ChexgenError(f"{path}: missing column(s) {missing + ([] if img_col else ['img_id'])}")
        rows = [(r[img_col], [r[c] for c in MEDFMC_CLASSES]) for r in frame.to_dict(orient="records")]
    else:
        for line in Path(path).read_text().splitlines()[:limit]:
            parts = re.split(r"[\s,]+", line.strip())
            if parts and parts[0]:
                rows.append((parts[0], parts[1:]))
    result = SourceResult(source="medfmc", files=[str(path)])
    prefix = _prefix(image_root)
    known = set(MEDFMC_TO_LABEL.values()) | {"No Finding"}
    for n, (name, vals) in enumerate(rows, start=1):
        rid = "medfmc/" + Path(name).stem
        if len(vals) != len(MEDFMC_CLASSES) or any(v not in ("0", "1") for v in vals):
            result.rejects.append(Reject("medfmc", str(path), n, f"expected {len(MEDFMC_CLASSES)} values of 0/1, "
                                         f"got {vals[:25]}", rid))
            continue
        if _missing(check_images, image_root, prefix, name):
            result.rejects.append(Reject("medfmc", str(path), n, f"image {prefix + name} not found", rid))
            continue
        on = [c for c, v in zip(MEDFMC_CLASSES, vals) if v == "1"]
        labels = {k: (0 if k in known else None) for k in LABELS}
        for c in on:
            if c in MEDFMC_TO_LABEL:
                labels[MEDFMC_TO_LABEL[c]] = 1
        labels["No Finding"] = 0 if on else 1
        other = [c.replace("_", " ").replace("TB", "tuberculosis") for c in on if c not in MEDFMC_TO_LABEL]
        extra: dict = {"medfmc_labels": on}
        if other:
            extra["other_findings"] = other
        result.records.append(Record(id=rid, image=prefix + name, dataset="medfmc", labels=labels, extra=extra))
    return result
