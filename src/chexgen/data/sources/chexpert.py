"""CheXpert (Irvin et al. 2019): ``train.csv`` / ``valid.csv``.

Columns: ``Path`` (``CheXpert-v1.0[-small]/train/patientNNNNN/studyN/viewN_frontal.jpg``),
``Sex`` (Male / Female / Unknown), ``Age`` (years; 0 marks unknown),
``Frontal/Lateral``, ``AP/PA`` (AP, PA, LL, RL or blank) and the 14
observations with 1 (positive), 0 (negative), -1 (uncertain) or blank (not
mentioned). The training CSV ships inside torchxrayvision
(``chexpert_train.csv.gz``, 223,414 rows) and is read from there when no
path is given. Access: Stanford research use agreement for the images.

Label mapping: identity (CheXpert defined the shared 14-label space);
blank stays unknown (``None``). Views: frontal + AP/PA -> AP/PA; lateral ->
LAT, or LL when ``AP/PA`` says LL; frontal without AP/PA -> unknown.
Split: ``train`` for the training CSV, ``val`` for ``valid.csv``.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from chexgen.data.labels import LABELS
from chexgen.data.manifest import Record
from chexgen.data.sources._common import Reject, SourceResult, find_file, read_csv, require_columns

__all__ = ["load_chexpert"]

_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"]


def load_chexpert(root: str | os.PathLike | None = None, *, image_root: str | os.PathLike | None = None,
                  check_images: bool = False, limit: int | None = None) -> SourceResult:
    """Read a CheXpert label CSV into records.

    Args:
        root: ``train.csv`` / ``valid.csv`` or the dataset folder; default: the copy in torchxrayvision.
        image_root: folder that the CSV's ``Path`` column is relative to (the folder above
            ``CheXpert-v1.0-small``); image paths are stored under it.
        check_images: reject rows whose image file does not exist under ``image_root``.
        limit: read only the first ``limit`` rows.
    """
    path = find_file(root, ["train.csv", "valid.csv", "chexpert_train.csv.gz"], "CheXpert labels",
                     xrv_fallback="chexpert_train.csv.gz")
    frame = read_csv(path, nrows=limit)
    require_columns(frame, _COLUMNS + list(LABELS), path)
    split = "val" if "valid" in path.name else "train"
    result = SourceResult(source="chexpert", files=[str(path)])

    values = frame[list(LABELS)].to_numpy(dtype=float)
    bad = ~(np.isnan(values) | np.isin(values, (1.0, 0.0, -1.0)))
    ages = pd.to_numeric(frame["Age"], errors="coerce").to_numpy(dtype=float)
    paths = frame["Path"].astype(str).tolist()
    sexes = frame["Sex"].astype(str).tolist()
    fl = frame["Frontal/Lateral"].astype(str).tolist()
    appa = frame["AP/PA"].fillna("").astype(str).tolist()
    label_rows = np.where(np.isnan(values), 2, values).astype(int).tolist()  # 2 = blank
    age_raw = frame["Age"].tolist()
    prefix = str(image_root) + os.sep if image_root is not None else ""

    for i in range(len(paths)):
        row = i + 1
        rel = paths[i]
        parts = rel.split("/")
        # .../train/patient00001/study1/view1_frontal.jpg
        patient = parts[-3] if len(parts) >= 3 else None
        study = f"{parts[-3]}/{parts[-2]}" if len(parts) >= 3 else None
        rid = "chexpert/" + "/".join(parts[-3:]).rsplit(".", 1)[0]
        if bad[i].any():
            cols = [LABELS[j] for j in np.flatnonzero(bad[i])]
            result.rejects.append(Reject("chexpert", str(path), row, f"label value(s) not in 1/0/-1/blank: {cols}",
                                         rid))
            continue
        age = ages[i]
        if age != age:
            if str(age_raw[i]).strip() not in ("", "nan"):
                result.rejects.append(Reject("chexpert", str(path), row, f"age {age_raw[i]!r} is not a number", rid))
                continue
            age = None
        elif not 0 <= age <= 120:
            result.rejects.append(Reject("chexpert", str(path), row, f"age {age:g} is outside 0..120 years", rid))
            continue
        else:
            age = float(age) if age > 0 else None  # CheXpert writes 0 for an unknown age
        if check_images and image_root is not None and not os.path.exists(prefix + rel):
            result.rejects.append(Reject("chexpert", str(path), row, f"image {prefix + rel} not found", rid))
            continue
        if fl[i] == "Lateral":
            view = "LL" if appa[i] == "LL" else "LAT"
        else:
            view = appa[i] if appa[i] in ("AP", "PA") else None
        labels = {name: (None if v == 2 else v) for name, v in zip(LABELS, label_rows[i])}
        result.records.append(Record(
            id=rid,
            image=prefix + rel,
            dataset="chexpert",
            split=split,
            view=view,
            sex={"Male": "M", "Female": "F"}.get(sexes[i]),
            age=age,
            patient_id=patient,
            study_id=study,
            labels=labels,
        ))
    return result
