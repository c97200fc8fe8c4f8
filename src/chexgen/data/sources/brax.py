"""BRAX, the Brazilian labelled chest X-ray set (Reis et al. 2022, PhysioNet).

Written from the PhysioNet documentation only (credentialed access; no file
can be read here; tests write a tiny spreadsheet in the documented layout).
``master_spreadsheet_update.csv``: one row per image with ``PngPath`` and/or
``DicomPath``, ``PatientID``, ``AccessionNumber``, ``ViewPosition``,
``PatientSex``, ``PatientAge`` (years; the oldest group is written as
``"85 or more"``) and the 14 CheXpert observations (1 / 0 / -1 / blank, from
a Portuguese adaptation of the CheXpert labeler).

Label mapping: identity. An age given as "N or more" is stored as N with
``extra.age_censored``. Unparseable ages and label values go to the rejects.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd

from chexgen.data.labels import LABELS
from chexgen.data.manifest import Record
from chexgen.data.sources._common import Reject, SourceResult, find_file, parse_age, parse_sex, parse_view, read_csv
from chexgen.errors import ChexgenError

__all__ = ["load_brax"]

_CENSORED = re.compile(r"^\s*(\d+)\s*(?:or more|\+)\s*$", re.I)


def load_brax(root: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
              check_images: bool = False, limit: int | None = None) -> SourceResult:
    """Read the BRAX master spreadsheet into records."""
    path = find_file(root, ["master_spreadsheet_update.csv", "master_spreadsheet.csv"], "BRAX spreadsheet")
    frame = read_csv(path, nrows=limit)
    image_col = next((c for c in ("PngPath", "DicomPath") if c in frame.columns), None)
    missing = [n for n in LABELS if n not in frame.columns]
    if image_col is None or missing:
        raise ChexgenError(f"{path}: missing column(s) {missing + ([] if image_col else ['PngPath or DicomPath'])}")
    result = SourceResult(source="brax", files=[str(path)])
    values = frame[list(LABELS)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    raw_bad = frame[list(LABELS)].notna().to_numpy() & np.isnan(values)
    bad = raw_bad | ~(np.isnan(values) | np.isin(values, (1.0, 0.0, -1.0)))
    prefix = str(image_root) + os.sep if image_root is not None else ""
    col = lambda name: frame[name].tolist() if name in frame.columns else [None] * len(frame)  # noqa: E731
    ages, sexes, views, pids = col("PatientAge"), col("PatientSex"), col("ViewPosition"), col("PatientID")
    accessions = col("AccessionNumber")
    for i, rel in enumerate(frame[image_col].astype(str).tolist()):
        row = i + 1
        rid = "brax/" + rel.rsplit(".", 1)[0].strip("/")
        if bad[i].any():
            result.rejects.append(Reject("brax", str(path), row, "label value(s) not in 1/0/-1/blank: "
                                         f"{[LABELS[j] for j in np.flatnonzero(bad[i])]}", rid))
            continue
        extra: dict = {}
        m = _CENSORED.match(str(ages[i])) if ages[i] is not None else None
        try:
            if m:
                age = float(m.group(1))
                extra["age_censored"] = True
            else:
                age = parse_age(ages[i])
        except ValueError as e:
            result.rejects.append(Reject("brax", str(path), row, str(e), rid))
            continue
        if check_images and image_root is not None and not os.path.exists(prefix + rel):
            result.rejects.append(Reject("brax", str(path), row, f"image {prefix + rel} not found", rid))
            continue
        labels = {n: (None if np.isnan(v) else int(v)) for n, v in zip(LABELS, values[i])}
        result.records.append(Record(
            id=rid, image=prefix + rel, dataset="brax", view=parse_view(views[i]), sex=parse_sex(sexes[i]),
            age=age, patient_id=None if pids[i] is None else str(pids[i]),
            study_id=None if accessions[i] is None else str(accessions[i]), labels=labels, extra=extra,
        ))
    return result
