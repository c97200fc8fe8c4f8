"""VinDr-CXR (Nguyen et al. 2022) and VinDr-PCXR (Pham et al. 2022): labels and boxes from several readers.

VinDr-CXR, Kaggle "VinBigData" layout (``train.csv``, 67,914 rows, shipped in
torchxrayvision as ``vinbigdata-train.csv.gz``): one row per reader finding:
``image_id``, ``class_name``, ``class_id``, ``rad_id`` (R1..R17) and a box
``x_min, y_min, x_max, y_max`` in pixels of the DICOM (blank for "No
finding"). Each training image was read by three radiologists.

VinDr-PCXR (paediatric; written from the PhysioNet documentation only, no
file of it can be read here): ``image_labels_train.csv`` with ``image_id``,
``rad_ID`` and one 0/1 column per image-level diagnosis, plus
``annotations_train.csv`` in the same box layout as VinDr-CXR.

Several readers -> one label: a class marked by a majority of an image's
readers is present (1), by a minority uncertain (-1), by none absent (0).
Boxes of every reader are kept (``Box.source`` = reader id, ``Box.label`` =
the dataset's class name).

Mapping onto the shared 14 (:data:`VINDR_TO_LABEL`): Aortic enlargement ->
Enlarged Cardiomediastinum; Cardiomegaly; Atelectasis; Consolidation;
Infiltration, Lung Opacity, ILD -> Lung Opacity; Nodule/Mass, Lung tumor ->
Lung Lesion; Pleural effusion; Pleural thickening -> Pleural Other;
Pneumothorax; Pneumonia and its PCXR variants -> Pneumonia; No finding. The
rest (Calcification, Pulmonary fibrosis, Other lesion, Tuberculosis, ...) go
to ``extra.other_findings`` when a majority marks them. Classes a file does
not have stay unknown.
"""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np
import pandas as pd

from chexgen.data.labels import LABELS
from chexgen.data.manifest import Box, Record
from chexgen.data.sources._common import Reject, SourceResult, find_file, read_csv, require_columns

__all__ = ["VINDR_TO_LABEL", "load_vindr_cxr", "load_vindr_pcxr", "reader_vote"]

VINDR_TO_LABEL = {
    "Aortic enlargement": "Enlarged Cardiomediastinum",
    "Cardiomegaly": "Cardiomegaly",
    "Atelectasis": "Atelectasis",
    "Consolidation": "Consolidation",
    "Infiltration": "Lung Opacity",
    "Lung Opacity": "Lung Opacity",
    "ILD": "Lung Opacity",
    "Nodule/Mass": "Lung Lesion",
    "Lung tumor": "Lung Lesion",
    "Pleural effusion": "Pleural Effusion",
    "Pleural thickening": "Pleural Other",
    "Pneumothorax": "Pneumothorax",
    "Pneumonia": "Pneumonia",
    "Brocho-pneumonia": "Pneumonia",
    "Broncho-pneumonia": "Pneumonia",
    "Pleuro-pneumonia": "Pneumonia",
    "No finding": "No Finding",
}
# Classes of the Kaggle VinDr-CXR file (the box classes): these 11 labels are known for every image.
_CXR_KNOWN = ("Enlarged Cardiomediastinum", "Cardiomegaly", "Atelectasis", "Consolidation", "Lung Opacity",
              "Lung Lesion", "Pleural Effusion", "Pleural Other", "Pneumothorax", "No Finding")


def reader_vote(votes: int, readers: int) -> int:
    """1 if a majority of readers marked the class, -1 if a minority did, else 0."""
    if votes <= 0:
        return 0
    return 1 if 2 * votes > readers else -1


def _labels_from_votes(class_votes: dict[str, int], readers: int, known: tuple[str, ...]
                       ) -> tuple[dict[str, int | None], list[str]]:
    labels: dict[str, int | None] = {name: (0 if name in known else None) for name in LABELS}
    other: list[str] = []
    per_label: dict[str, int] = defaultdict(int)
    for cls, v in class_votes.items():
        target = VINDR_TO_LABEL.get(cls)
        if target is None:
            if reader_vote(v, readers) == 1:
                other.append(cls.lower())
            continue
        per_label[target] = max(per_label[target], v)
    for target, v in per_label.items():
        labels[target] = reader_vote(v, readers)
    if any(labels[n] in (1, -1) for n in LABELS if n not in ("No Finding", "Support Devices")) or other:
        labels["No Finding"] = 0
    return labels, other


def _read_boxes(frame: pd.DataFrame) -> dict[str, list[Box]]:
    boxes: dict[str, list[Box]] = defaultdict(list)
    sub = frame.dropna(subset=["x_min", "y_min", "x_max", "y_max"])
    for iid, cls, rad, x0, y0, x1, y1 in sub[["image_id", "class_name", "rad_id", "x_min", "y_min", "x_max",
                                               "y_max"]].itertuples(index=False):
        if x1 > x0 and y1 > y0:
            boxes[str(iid)].append(Box(label=str(cls), x0=float(x0), y0=float(y0), x1=float(x1), y1=float(y1),
                                       source=str(rad)))
    return boxes


def load_vindr_cxr(root: str | os.PathLike | None = None, *, image_root: str | os.PathLike | None = None,
                   check_images: bool = False, limit: int | None = None, image_ext: str = ".dicom"
                   ) -> SourceResult:
    """Read VinDr-CXR reader annotations (Kaggle layout) into one record per image.

    ``limit`` counts annotation rows. Images are ``<image_root>/<image_id><image_ext>``.
    """
    path = find_file(root, ["train.csv", "annotations_train.csv", "vinbigdata-train.csv.gz"], "VinDr-CXR annotations",
                     xrv_fallback="vinbigdata-train.csv.gz")
    frame = read_csv(path, nrows=limit)
    if "rad_ID" in frame.columns and "rad_id" not in frame.columns:
        frame = frame.rename(columns={"rad_ID": "rad_id"})
    require_columns(frame, ["image_id", "class_name", "rad_id", "x_min", "y_min", "x_max", "y_max"], path)
    result = SourceResult(source="vindr_cxr", files=[str(path)])
    boxes = _read_boxes(frame)
    bad_box = frame[["x_min", "x_max"]].notna().all(axis=1) & ~(frame["x_max"] > frame["x_min"])
    for idx in np.flatnonzero(bad_box.to_numpy()):
        result.rejects.append(Reject("vindr_cxr", str(path), int(idx) + 1,
                                     "box has x_max <= x_min (kept the image, dropped the box)",
                                     str(frame["image_id"].iloc[idx])))
    readers = frame.groupby("image_id")["rad_id"].nunique()
    votes = frame.groupby(["image_id", "class_name"])["rad_id"].nunique()
    per_image: dict[str, dict[str, int]] = defaultdict(dict)
    for (iid, cls), v in votes.items():
        per_image[str(iid)][str(cls)] = int(v)
    prefix = str(image_root) + os.sep if image_root is not None else ""
    for row, (iid, n_readers) in enumerate(readers.items(), start=1):
        iid = str(iid)
        rel = iid + image_ext
        if check_images and image_root is not None and not os.path.exists(prefix + rel):
            result.rejects.append(Reject("vindr_cxr", str(path), row, f"image {prefix + rel} not found", iid))
            continue
        labels, other = _labels_from_votes(per_image[iid], int(n_readers), _CXR_KNOWN)
        extra: dict = {"readers": int(n_readers), "reader_votes": per_image[iid]}
        if other:
            extra["other_findings"] = other
        result.records.append(Record(id=f"vindr_cxr/{iid}", image=prefix + rel, dataset="vindr_cxr",
                                     split="train", labels=labels, boxes=boxes.get(iid, []), extra=extra))
    return result


def load_vindr_pcxr(root: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                    check_images: bool = False, split: str = "train", image_ext: str = ".dicom") -> SourceResult:
    """Read VinDr-PCXR ``image_labels_<split>.csv`` (+ ``annotations_<split>.csv`` boxes) from its folder."""
    label_path = find_file(root, [f"image_labels_{split}.csv"], "VinDr-PCXR image labels")
    frame = read_csv(label_path)
    if "rad_ID" in frame.columns:
        frame = frame.rename(columns={"rad_ID": "rad_id"})
    require_columns(frame, ["image_id"], label_path)
    result = SourceResult(source="vindr_pcxr", files=[str(label_path)])
    class_cols = [c for c in frame.columns if c not in ("image_id", "rad_id")]
    unknown_values = ~frame[class_cols].isin([0, 1]).all(axis=1)
    for idx in np.flatnonzero(unknown_values.to_numpy()):
        result.rejects.append(Reject("vindr_pcxr", str(label_path), int(idx) + 1,
                                     "class columns must hold 0 or 1", str(frame["image_id"].iloc[idx])))
    frame = frame[~unknown_values]
    ann_path = label_path.parent / f"annotations_{split}.csv"
    boxes: dict[str, list[Box]] = {}
    if ann_path.is_file():
        ann = read_csv(ann_path).rename(columns={"rad_ID": "rad_id"})
        require_columns(ann, ["image_id", "class_name", "rad_id", "x_min", "y_min", "x_max", "y_max"], ann_path)
        boxes = _read_boxes(ann)
        result.files.append(str(ann_path))
    known = tuple(sorted({VINDR_TO_LABEL[c] for c in class_cols if c in VINDR_TO_LABEL}))
    prefix = str(image_root) + os.sep if image_root is not None else ""
    split_name = "test" if split == "test" else "train"
    for row, (iid, group) in enumerate(frame.groupby("image_id", sort=False), start=1):
        iid = str(iid)
        rel = iid + image_ext
        if check_images and image_root is not None and not os.path.exists(prefix + rel):
            result.rejects.append(Reject("vindr_pcxr", str(label_path), row, f"image {prefix + rel} not found", iid))
            continue
        n_readers = max(1, group["rad_id"].nunique() if "rad_id" in group else len(group))
        class_votes = {c: int(group[c].sum()) for c in class_cols}
        labels, other = _labels_from_votes(class_votes, n_readers, known)
        extra: dict = {"readers": n_readers, "pediatric": True}
        if other:
            extra["other_findings"] = other
        result.records.append(Record(id=f"vindr_pcxr/{iid}", image=prefix + rel, dataset="vindr_pcxr",
                                     split=split_name, labels=labels, boxes=boxes.get(iid, []), extra=extra))
    return result
