"""PadChest (Bustos et al. 2020): ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv``.

One row per image: ``ImageID``, ``ImageDir`` (zip folder number),
``StudyDate_DICOM`` (YYYYMMDD), ``StudyID``, ``PatientID``, ``PatientBirth``
(year), ``PatientSex_DICOM`` (M / F / O), ``Projection`` (PA, L, AP,
AP_horizontal, COSTAL, EXCLUDE, UNK), ``Pediatric``, the stemmed Spanish
report, ``Labels`` (a Python-style list of finding names from PadChest's
174-finding vocabulary, labelled by physicians or their RNN), ``Localizations``
and ``LabelsLocalizationsBySentence`` (per report sentence: its labels and
``loc ...`` terms). The CSV ships inside torchxrayvision and is read from there
when no path is given. Access: BIMCV research use agreement for the images.

Age is the study year minus the birth year. Labelling is exhaustive over the
vocabulary, so every mapped class that is not listed is absent (0). The
mapping onto the shared 14 is :data:`PADCHEST_TO_LABEL`; findings outside the
14 go to ``extra.other_findings`` (phrased by the writer, not checked by QC);
``unchanged``, ``exclude`` and ``suboptimal study`` are kept in
``extra.flags``. Side and zone of each mapped finding come from the
localizations of the same sentence (``extra.findings``). BIMCV-COVID uses the
same vocabulary and reuses :func:`map_padchest_labels`.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd

from chexgen.data.labels import LABELS
from chexgen.data.manifest import Record
from chexgen.data.sources._common import Reject, SourceResult, find_file, parse_view, read_csv, require_columns

__all__ = ["PADCHEST_TO_LABEL", "PADCHEST_DEVICE_KIND", "load_padchest", "map_padchest_labels",
           "parse_list", "parse_sentence_groups"]

_GROUPS: dict[str, tuple[str, ...]] = {
    "No Finding": ("normal",),
    "Enlarged Cardiomediastinum": ("mediastinal enlargement", "superior mediastinal enlargement"),
    "Cardiomegaly": ("cardiomegaly",),
    "Lung Opacity": ("infiltrates", "interstitial pattern", "alveolar pattern", "increased density",
                     "reticular interstitial pattern", "reticulonodular interstitial pattern",
                     "ground glass pattern", "miliary opacities"),
    "Lung Lesion": ("nodule", "multiple nodules", "pulmonary mass", "lung metastasis", "mass",
                    "lepidic adenocarcinoma"),
    "Edema": ("pulmonary edema",),
    "Consolidation": ("consolidation",),
    "Pneumonia": ("pneumonia", "atypical pneumonia"),
    "Atelectasis": ("atelectasis", "laminar atelectasis", "lobar atelectasis", "segmental atelectasis",
                    "total atelectasis", "round atelectasis", "atelectasis basal"),
    "Pneumothorax": ("pneumothorax", "hydropneumothorax"),
    "Pleural Effusion": ("pleural effusion", "loculated pleural effusion", "loculated fissural effusion",
                         "hydropneumothorax"),
    "Pleural Other": ("apical pleural thickening", "pleural thickening", "calcified pleural thickening",
                      "calcified pleural plaques", "pleural plaques"),
    "Fracture": ("callus rib fracture", "rib fracture", "vertebral fracture", "clavicle fracture",
                 "humeral fracture", "fracture"),
    "Support Devices": ("NSG tube", "pacemaker", "central venous catheter via jugular vein", "endotracheal tube",
                        "tracheostomy tube", "central venous catheter via subclavian vein", "dual chamber device",
                        "single chamber device", "chest drain tube", "reservoir central venous catheter",
                        "central venous catheter", "central venous catheter via umbilical vein", "catheter",
                        "electrical device", "gastrostomy tube"),
}
PADCHEST_TO_LABEL: dict[str, tuple[str, ...]] = {}
for _label, _names in _GROUPS.items():
    for _n in _names:
        PADCHEST_TO_LABEL[_n] = PADCHEST_TO_LABEL.get(_n, ()) + (_label,)

PADCHEST_DEVICE_KIND = {
    "NSG tube": "ng_tube", "pacemaker": "pacemaker", "dual chamber device": "pacemaker",
    "single chamber device": "pacemaker", "endotracheal tube": "et_tube", "tracheostomy tube": "tracheostomy",
    "central venous catheter via jugular vein": "central_line", "central venous catheter": "central_line",
    "central venous catheter via subclavian vein": "central_line", "reservoir central venous catheter": "central_line",
    "central venous catheter via umbilical vein": "central_line", "chest drain tube": "chest_tube",
}
_KIND_OF_LESION = {"nodule": "nodule", "multiple nodules": "nodules", "pulmonary mass": "mass", "mass": "mass"}
_FLAGS = {"unchanged", "exclude", "suboptimal study"}

_LIST_ITEM = re.compile(r"'([^']*)'")
_GROUP = re.compile(r"\[([^\[\]]*)\]")


def parse_list(text: object) -> list[str]:
    """Items of a Python-style list of strings ("['a', 'b']") without ``eval``."""
    if not isinstance(text, str):
        return []
    return [s.strip() for s in _LIST_ITEM.findall(text) if s.strip()]


def parse_sentence_groups(text: object) -> list[list[str]]:
    """``LabelsLocalizationsBySentence`` -> one list of labels and loc terms per sentence."""
    if not isinstance(text, str):
        return []
    return [parse_list(g) for g in _GROUP.findall(text)]


def _side_zone(locs: list[str]) -> tuple[str | None, str | None]:
    side = zone = None
    for loc in locs:
        if "bilateral" in loc:
            side = "bilateral"
        elif side is None and " right" in loc:
            side = "right"
        elif side is None and " left" in loc:
            side = "left"
        if zone is None:
            if any(k in loc for k in ("upper", "apical")):
                zone = "upper"
            elif any(k in loc for k in ("middle", "lingula")):
                zone = "middle"
            elif any(k in loc for k in ("lower", "basal", "costophrenic")):
                zone = "lower"
    return side, zone


def map_padchest_labels(names: list[str], groups: list[list[str]] | None = None
                        ) -> tuple[dict[str, int | None], list[str], list[dict], list[str]]:
    """PadChest finding names -> (14 labels, other findings, finding details, flags).

    Every mapped class starts absent (0); ``normal`` sets No Finding and any mapped
    pathology clears it.
    """
    labels: dict[str, int | None] = {name: 0 for name in LABELS}
    other: list[str] = []
    flags: list[str] = []
    for n in names:
        if n in PADCHEST_TO_LABEL:
            for target in PADCHEST_TO_LABEL[n]:
                labels[target] = 1
        elif n in _FLAGS:
            flags.append(n)
        elif n not in other:
            other.append(n)
    if any(labels[n] == 1 for n in LABELS if n not in ("No Finding", "Support Devices")) or other:
        labels["No Finding"] = 0
    details: list[dict] = []
    seen: set[tuple] = set()
    for group in groups or []:
        locs = [g for g in group if g.startswith("loc ")]
        side, zone = _side_zone(locs)
        for n in group:
            for target in PADCHEST_TO_LABEL.get(n, ()):
                if target in ("No Finding", "Cardiomegaly", "Enlarged Cardiomediastinum"):
                    continue
                kind = PADCHEST_DEVICE_KIND.get(n) if target == "Support Devices" else _KIND_OF_LESION.get(n)
                if target == "Fracture" and "rib" in n:
                    kind = "rib"
                key = (target, side, zone, kind)
                if key not in seen and (side or zone or kind):
                    seen.add(key)
                    details.append({"label": target, "side": side if target != "Support Devices" else None,
                                    "zone": zone if target != "Support Devices" else None,
                                    "severity": None, "kind": kind})
    return labels, other, details, flags


_COLUMNS = ["ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
            "Projection", "Labels"]


def load_padchest(root: str | os.PathLike | None = None, *, image_root: str | os.PathLike | None = None,
                  check_images: bool = False, limit: int | None = None) -> SourceResult:
    """Read the PadChest label CSV into records.

    Args:
        root: the CSV or its folder; default: the copy shipped in torchxrayvision.
        image_root: folder holding the ``<ImageDir>/<ImageID>`` PNGs; paths are stored under it.
        check_images: reject rows whose image does not exist under ``image_root``.
        limit: read only the first ``limit`` rows.
    """
    name = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
    path = find_file(root, [name, name + ".gz"], "PadChest labels", xrv_fallback=name + ".gz")
    usecols = _COLUMNS + ["LabelsLocalizationsBySentence", "Pediatric"]
    frame = read_csv(path, nrows=limit, usecols=lambda c: c in usecols, low_memory=False)
    require_columns(frame, _COLUMNS, path)
    result = SourceResult(source="padchest", files=[str(path)])

    ids = frame["ImageID"].astype(str).tolist()
    dirs = frame["ImageDir"].tolist()
    dates = frame["StudyDate_DICOM"].tolist()
    births = pd.to_numeric(frame["PatientBirth"], errors="coerce").to_numpy(dtype=float)
    births_raw = frame["PatientBirth"].tolist()
    sexes = frame["PatientSex_DICOM"].tolist()
    projections = frame["Projection"].fillna("").astype(str).tolist()
    labels_col = frame["Labels"].tolist()
    groups_col = frame["LabelsLocalizationsBySentence"].tolist() if "LabelsLocalizationsBySentence" in frame \
        else [None] * len(frame)
    study_ids = frame["StudyID"].astype(str).tolist()
    patient_ids = frame["PatientID"].astype(str).tolist()
    pediatric = frame["Pediatric"].tolist() if "Pediatric" in frame else [None] * len(frame)
    prefix = str(image_root) + os.sep if image_root is not None else ""

    for i in range(len(ids)):
        row = i + 1
        rid = "padchest/" + ids[i].rsplit(".", 1)[0]
        date = str(dates[i]).split(".")[0]
        if not (len(date) == 8 and date.isdigit() and 1 <= int(date[4:6]) <= 12):
            result.rejects.append(Reject("padchest", str(path), row, f"study date {dates[i]!r} is not YYYYMMDD", rid))
            continue
        age = None
        if births[i] == births[i]:
            age = float(int(date[:4]) - births[i])
            if not 0 <= age <= 120:
                result.rejects.append(Reject("padchest", str(path), row,
                                             f"age {age:g} from birth year {births_raw[i]} is outside 0..120", rid))
                continue
        elif isinstance(births_raw[i], str) and births_raw[i].strip() not in ("", "None", "nan"):
            result.rejects.append(Reject("padchest", str(path), row,
                                         f"birth year {births_raw[i]!r} is not a year", rid))
            continue
        names = parse_list(labels_col[i])
        if not names:
            result.rejects.append(Reject("padchest", str(path), row, "no labels", rid))
            continue
        labels, other, details, flags = map_padchest_labels(names, parse_sentence_groups(groups_col[i]))
        rel = f"{int(dirs[i])}/{ids[i]}" if isinstance(dirs[i], (int, float, np.integer)) and dirs[i] == dirs[i] \
            else f"{dirs[i]}/{ids[i]}"
        if check_images and image_root is not None and not os.path.exists(prefix + rel):
            result.rejects.append(Reject("padchest", str(path), row, f"image {prefix + rel} not found", rid))
            continue
        extra: dict = {"source_labels": names, "projection": projections[i]}
        if other:
            extra["other_findings"] = other
        if details:
            extra["findings"] = details
        if flags:
            extra["flags"] = flags
        if pediatric[i] == "Yes":
            extra["pediatric"] = True
        sex = sexes[i] if sexes[i] in ("M", "F", "O") else None
        result.records.append(Record(
            id=rid, image=prefix + rel, dataset="padchest", view=parse_view(projections[i]),
            sex=sex, age=age, patient_id=patient_ids[i], study_id=study_ids[i], labels=labels, extra=extra,
        ))
    return result
