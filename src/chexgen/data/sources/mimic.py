"""MIMIC-CXR-JPG 2.0/2.1 (Johnson et al. 2019) joined with MIMIC-IV demographics.

Written from the PhysioNet documentation only: no MIMIC file can be read on
this machine (credentialed access); the tests write tiny files in the
documented layout. Files, under the dataset folder (``.csv`` or ``.csv.gz``):

* ``mimic-cxr-2.0.0-metadata.csv``: ``dicom_id, subject_id, study_id,
  ViewPosition, Rows, Columns, StudyDate`` (YYYYMMDD, shifted) and more;
* ``mimic-cxr-2.0.0-chexpert.csv`` or ``-negbio.csv``: ``subject_id,
  study_id`` and the 14 labels (1.0 / 0.0 / -1.0 / blank) per study;
* ``mimic-cxr-2.0.0-split.csv``: ``dicom_id, study_id, subject_id, split``
  (train / validate / test);
* optional report text files ``files/p10/p10000032/s50414267.txt`` (from
  MIMIC-CXR) under the dataset folder or ``reports=``; FINDINGS and
  IMPRESSION are cut out of them;
* images: ``files/p<first 2 digits>/p<subject_id>/s<study_id>/<dicom_id>.jpg``.

MIMIC-IV (``mimic_iv=`` folder with ``hosp/patients.csv`` and
``hosp/admissions.csv``, or the files directly in it) gives sex (``gender``),
age at the study (``anchor_age + study year - anchor_year``: dates are shifted
consistently per patient) and race (most frequent recorded value over the
patient's admissions; ``race`` in v2, ``ethnicity`` in v1), grouped as White,
Black, Asian, Hispanic/Latino or Other (raw value in ``extra.race_raw``;
unknown / declined -> ``None``), as the fairness study needs.

Label mapping: identity (MIMIC uses the CheXpert labeler's 14 names).
Views: PA, AP, LATERAL -> LAT, LL; others (e.g. "AP AXIAL") -> unknown.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from chexgen.data.labels import LABELS
from chexgen.data.manifest import Record
from chexgen.data.sources._common import Reject, SourceResult, parse_view, read_csv, require_columns
from chexgen.errors import ChexgenError

__all__ = ["load_mimic", "extract_sections", "race_group", "mimic_image_path"]

_SECTION = re.compile(r"^\s*([A-Z][A-Z /&()-]{2,40}):", re.M)


def extract_sections(text: str) -> dict[str, str]:
    """Upper-case report headers ("FINDINGS:", "IMPRESSION:") -> their whitespace-normalised text."""
    parts = list(_SECTION.finditer(text))
    out: dict[str, str] = {}
    for i, m in enumerate(parts):
        end = parts[i + 1].start() if i + 1 < len(parts) else len(text)
        body = " ".join(text[m.end():end].split())
        if body:
            out[m.group(1).strip()] = body
    return out


def race_group(value: object) -> str | None:
    """MIMIC-IV race / ethnicity string -> White / Black / Asian / Hispanic/Latino / Other / None."""
    if not isinstance(value, str):
        return None
    v = value.upper()
    if any(k in v for k in ("UNKNOWN", "UNABLE", "DECLINED", "NOT SPECIFIED")):
        return None
    if v.startswith("WHITE"):
        return "White"
    if v.startswith("BLACK"):
        return "Black"
    if v.startswith("ASIAN"):
        return "Asian"
    if v.startswith("HISPANIC") or "LATINO" in v:
        return "Hispanic/Latino"
    return "Other"


def mimic_image_path(subject_id: int, study_id: int, dicom_id: str) -> str:
    s = str(subject_id)
    return f"files/p{s[:2]}/p{s}/s{study_id}/{dicom_id}.jpg"


def _csv(folder: Path, stem: str, what: str, required: bool = True) -> Path | None:
    for name in (stem + ".csv", stem + ".csv.gz"):
        if (folder / name).is_file():
            return folder / name
    if required:
        raise ChexgenError(f"{folder}: no {what} file ({stem}.csv or .csv.gz)")
    return None


def _demographics(mimic_iv: Path) -> tuple[pd.DataFrame, dict[int, tuple[str | None, str | None]]]:
    base = mimic_iv / "hosp" if (mimic_iv / "hosp").is_dir() else mimic_iv
    pat_path = _csv(base, "patients", "MIMIC-IV patients")
    patients = read_csv(pat_path)
    require_columns(patients, ["subject_id", "gender", "anchor_age", "anchor_year"], pat_path)
    races: dict[int, tuple[str | None, str | None]] = {}
    adm_path = _csv(base, "admissions", "MIMIC-IV admissions", required=False)
    if adm_path is not None:
        adm = read_csv(adm_path)
        col = "race" if "race" in adm.columns else "ethnicity" if "ethnicity" in adm.columns else None
        if col is None:
            raise ChexgenError(f"{adm_path}: expected a 'race' (v2) or 'ethnicity' (v1) column")
        for sid, values in adm.groupby("subject_id")[col]:
            known = [v for v in values.dropna() if race_group(v) is not None]
            raw = Counter(known).most_common(1)[0][0] if known else None
            races[int(sid)] = (race_group(raw), raw)
    return patients.set_index("subject_id"), races


def load_mimic(root: str | os.PathLike, *, mimic_iv: str | os.PathLike | None = None, labels: str = "chexpert",
               reports: str | os.PathLike | None = None, image_root: str | os.PathLike | None = None,
               check_images: bool = False, limit: int | None = None) -> SourceResult:
    """Read MIMIC-CXR-JPG metadata, labels and split (and MIMIC-IV demographics) into one record per image.

    Args:
        root: the MIMIC-CXR-JPG folder (with the ``mimic-cxr-2.0.0-*.csv`` files).
        mimic_iv: MIMIC-IV folder for sex, age and race.
        labels: ``"chexpert"`` or ``"negbio"`` label file.
        reports: folder holding ``files/pXX/pNNNNNNNN/sNNNNNNNN.txt`` (default: ``root``).
        image_root: folder the ``files/...`` image paths are under (default: ``root``).
        check_images: reject rows whose JPEG is missing.
        limit: read only the first ``limit`` metadata rows.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise ChexgenError(f"{folder}: expected the MIMIC-CXR-JPG folder")
    meta_path = _csv(folder, "mimic-cxr-2.0.0-metadata", "metadata")
    meta = read_csv(meta_path, nrows=limit)
    require_columns(meta, ["dicom_id", "subject_id", "study_id", "ViewPosition"], meta_path)
    if labels not in ("chexpert", "negbio"):
        raise ChexgenError(f"labels must be 'chexpert' or 'negbio', got {labels!r}")
    lab_path = _csv(folder, f"mimic-cxr-2.0.0-{labels}", f"{labels} labels")
    lab = read_csv(lab_path)
    require_columns(lab, ["subject_id", "study_id", *[n for n in LABELS]], lab_path)
    lab_values = lab[list(LABELS)].to_numpy(dtype=float)
    study_labels = {int(s): row for s, row in zip(lab["study_id"], lab_values)}
    split_path = _csv(folder, "mimic-cxr-2.0.0-split", "split", required=False)
    splits: dict[str, str] = {}
    if split_path is not None:
        sp = read_csv(split_path)
        require_columns(sp, ["dicom_id", "split"], split_path)
        splits = dict(zip(sp["dicom_id"].astype(str), sp["split"].astype(str)))
    patients, races = (_demographics(Path(mimic_iv)) if mimic_iv is not None else (None, {}))
    report_root = Path(reports) if reports is not None else folder
    image_base = Path(image_root) if image_root is not None else folder
    result = SourceResult(source="mimic", files=[str(p) for p in (meta_path, lab_path, split_path) if p])
    section_cache: dict[int, dict[str, str]] = {}

    for i, row in enumerate(meta.itertuples(index=False), start=1):
        dicom_id = str(row.dicom_id)
        rid = f"mimic/{dicom_id}"
        try:
            subject, study = int(row.subject_id), int(row.study_id)
        except (TypeError, ValueError):
            result.rejects.append(Reject("mimic", str(meta_path), i, "subject_id / study_id are not integers", rid))
            continue
        values = study_labels.get(study)
        if values is not None and not np.all(np.isnan(values) | np.isin(values, (1.0, 0.0, -1.0))):
            result.rejects.append(Reject("mimic", str(lab_path), i, f"study {study}: label values not 1/0/-1/blank",
                                         rid))
            continue
        rec_labels = {n: (None if values is None or np.isnan(values[j]) else int(values[j]))
                      for j, n in enumerate(LABELS)}
        rel = mimic_image_path(subject, study, dicom_id)
        if check_images and not (image_base / rel).is_file():
            result.rejects.append(Reject("mimic", str(meta_path), i, f"image {image_base / rel} not found", rid))
            continue
        sex = age = race = None
        extra: dict = {}
        if patients is not None:
            if subject not in patients.index:
                result.rejects.append(Reject("mimic", str(meta_path), i,
                                             f"subject {subject} not in MIMIC-IV patients", rid))
                continue
            p = patients.loc[subject]
            sex = {"M": "M", "F": "F"}.get(str(p["gender"]))
            date = str(getattr(row, "StudyDate", "")).split(".")[0]
            if not (len(date) == 8 and date.isdigit()):
                result.rejects.append(Reject("mimic", str(meta_path), i, f"StudyDate {date!r} is not YYYYMMDD", rid))
                continue
            age = float(p["anchor_age"]) + int(date[:4]) - float(p["anchor_year"])
            if not 0 <= age <= 120:
                result.rejects.append(Reject("mimic", str(meta_path), i, f"age at study {age:g} outside 0..120", rid))
                continue
            race, raw = races.get(subject, (None, None))
            if raw:
                extra["race_raw"] = raw
        if study not in section_cache:
            txt = report_root / f"files/p{str(subject)[:2]}/p{subject}/s{study}.txt"
            section_cache[study] = extract_sections(txt.read_text(errors="replace")) if txt.is_file() else {}
        sections = section_cache[study]
        findings, impression = sections.get("FINDINGS"), sections.get("IMPRESSION")
        report = "\n".join(f"{k}: {v}" for k, v in (("FINDINGS", findings), ("IMPRESSION", impression)) if v) or None
        split = {"train": "train", "validate": "val", "test": "test"}.get(splits.get(dicom_id, ""))
        width = int(row.Columns) if hasattr(row, "Columns") and row.Columns == row.Columns else None
        height = int(row.Rows) if hasattr(row, "Rows") and row.Rows == row.Rows else None
        result.records.append(Record(
            id=rid, image=str(image_base / rel) if image_root is not None else rel, dataset="mimic", split=split,
            view=parse_view(row.ViewPosition), sex=sex, age=age, race=race, patient_id=str(subject),
            study_id=f"s{study}", width=width, height=height, labels=rec_labels, report=report,
            impression=impression, extra=extra,
        ))
    return result
