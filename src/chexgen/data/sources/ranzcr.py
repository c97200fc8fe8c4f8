"""RANZCR CLiP (Kaggle 2021): catheter and line position labels.

Written from the competition's public data description only (no file can be
read here; tests write tiny files in the documented layout).

* ``train.csv``: ``StudyInstanceUID``, eleven 0/1 columns ``ETT - Abnormal``,
  ``ETT - Borderline``, ``ETT - Normal``, ``NGT - Abnormal``, ``NGT -
  Borderline``, ``NGT - Incompletely Imaged``, ``NGT - Normal``, ``CVC -
  Abnormal``, ``CVC - Borderline``, ``CVC - Normal``, ``Swan Ganz Catheter
  Present``, and ``PatientID``;
* optional ``train_annotations.csv``: ``StudyInstanceUID``, ``label`` (one of
  the column names) and ``data``, the drawn line as ``[[x, y], ...]`` pixels;
* images ``train/<StudyInstanceUID>.jpg``.

Mapping: Support Devices = 1 when any device column is 1, else 0; the other
13 labels are unknown. Device kinds go to ``extra.findings`` (et_tube,
ng_tube, central_line, swan_ganz) so reports name the device; a placement
that is not normal becomes an ``extra.other_findings`` phrase such as
"endotracheal tube in abnormal position"; the raw columns stay in
``extra.device_placement``, drawn lines in ``extra.lines``.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import pandas as pd

from chexgen.data.labels import LABELS
from chexgen.data.manifest import Record
from chexgen.data.sources._common import Reject, SourceResult, find_file, read_csv, require_columns

__all__ = ["RANZCR_COLUMNS", "load_ranzcr"]

RANZCR_COLUMNS = ("ETT - Abnormal", "ETT - Borderline", "ETT - Normal", "NGT - Abnormal", "NGT - Borderline",
                  "NGT - Incompletely Imaged", "NGT - Normal", "CVC - Abnormal", "CVC - Borderline", "CVC - Normal",
                  "Swan Ganz Catheter Present")
_KIND = {"ETT": "et_tube", "NGT": "ng_tube", "CVC": "central_line", "Swan Ganz Catheter Present": "swan_ganz"}
_NAME = {"ETT": "endotracheal tube", "NGT": "nasogastric tube", "CVC": "central venous catheter"}


def load_ranzcr(root: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                check_images: bool = False, limit: int | None = None) -> SourceResult:
    """Read RANZCR CLiP ``train.csv`` (+ ``train_annotations.csv``) into records."""
    path = find_file(root, ["train.csv"], "RANZCR CLiP train.csv")
    frame = read_csv(path, nrows=limit)
    require_columns(frame, ["StudyInstanceUID", *RANZCR_COLUMNS], path)
    result = SourceResult(source="ranzcr", files=[str(path)])
    lines: dict[str, list[dict]] = defaultdict(list)
    ann_path = path.parent / "train_annotations.csv"
    if ann_path.is_file():
        ann = read_csv(ann_path)
        require_columns(ann, ["StudyInstanceUID", "label", "data"], ann_path)
        for n, (uid, label, data) in enumerate(ann[["StudyInstanceUID", "label", "data"]].itertuples(index=False),
                                               start=1):
            try:
                points = json.loads(str(data))
                if not (isinstance(points, list) and all(isinstance(p, list) and len(p) == 2 for p in points)):
                    raise ValueError
            except ValueError:
                result.rejects.append(Reject("ranzcr", str(ann_path), n, "annotation 'data' is not [[x, y], ...]",
                                             str(uid)))
                continue
            lines[str(uid)].append({"label": str(label), "points": points})
        result.files.append(str(ann_path))
    prefix = str(image_root) + os.sep if image_root is not None else ""
    values = frame[list(RANZCR_COLUMNS)]
    bad = ~values.isin([0, 1]).all(axis=1).to_numpy()
    for i, (uid, pid) in enumerate(zip(frame["StudyInstanceUID"].astype(str),
                                       frame.get("PatientID", pd.Series([None] * len(frame))).tolist())):
        row = i + 1
        if bad[i]:
            result.rejects.append(Reject("ranzcr", str(path), row, "device columns must hold 0 or 1", uid))
            continue
        rel = f"train/{uid}.jpg"
        if check_images and image_root is not None and not os.path.exists(prefix + rel):
            result.rejects.append(Reject("ranzcr", str(path), row, f"image {prefix + rel} not found", uid))
            continue
        present = {c: int(values.iloc[i][c]) for c in RANZCR_COLUMNS}
        on = [c for c, v in present.items() if v == 1]
        labels: dict[str, int | None] = {n: None for n in LABELS}
        labels["Support Devices"] = 1 if on else 0
        devices = sorted({c.split(" - ")[0] if " - " in c else c for c in on})
        details = [{"label": "Support Devices", "kind": _KIND[d], "side": None, "zone": None, "severity": None}
                   for d in devices]
        other = []
        for c in on:
            if " - " in c:
                dev, state = c.split(" - ")
                if state == "Abnormal":
                    other.append(f"{_NAME[dev]} in abnormal position")
                elif state == "Borderline":
                    other.append(f"{_NAME[dev]} in borderline position")
                elif state == "Incompletely Imaged":
                    other.append(f"{_NAME[dev]} incompletely imaged")
        extra: dict = {"device_placement": on}
        if details:
            extra["findings"] = details
        if other:
            extra["other_findings"] = other
        if lines.get(uid):
            extra["lines"] = lines[uid]
        result.records.append(Record(id=f"ranzcr/{uid}", image=prefix + rel, dataset="ranzcr", split="train",
                                     patient_id=None if pid is None else str(pid), labels=labels, extra=extra))
    return result
