"""Indiana University chest X-ray reports (Open-i / NLMCXR, Demner-Fushman et al. 2016).

File: ``NLMCXR_reports.tgz``: 3,955 XML reports (``ecgen-radiology/<n>.xml``)
with ``AbstractText`` sections COMPARISON, INDICATION, FINDINGS and
IMPRESSION, curated MeSH terms (``<MeSH><major>`` such as
``Pleural Effusion/right/small``; ``<automatic>`` ones come from a tagger) and
the ids of the report's images (``parentImage``). The archive ships inside
torchxrayvision and is read there at run time (licence CC BY-NC-ND 4.0: never
copy its content into this repository).

One record per report. ``report`` holds FINDINGS and IMPRESSION as written,
``extra.mesh`` the major MeSH terms, ``labels`` the MeSH mapping below
(positives only: MeSH indexes what a report states, so nothing is set to 0
except that a report indexed ``normal`` is No Finding = 1). The mapping is
also what the extractor benchmark compares against.
"""

from __future__ import annotations

import os
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

from chexgen.data.labels import LABELS
from chexgen.data.manifest import Record
from chexgen.data.sources._common import Reject, SourceResult, find_file

__all__ = ["MESH_TO_LABEL", "mesh_to_labels", "load_nlmcxr", "iter_nlmcxr_reports"]

# First MeSH component (and, where needed, a required sub-term) -> label.
MESH_TO_LABEL: dict[str, str] = {
    "normal": "No Finding",
    "Cardiomegaly": "Cardiomegaly",
    "Cardiac Shadow/enlarged": "Cardiomegaly",
    "Mediastinum/prominent": "Enlarged Cardiomediastinum",
    "Mediastinum/widened": "Enlarged Cardiomediastinum",
    "Mediastinum/enlarged": "Enlarged Cardiomediastinum",
    "Opacity/lung": "Lung Opacity",
    "Airspace Disease": "Lung Opacity",
    "Infiltrate": "Lung Opacity",
    "Density/lung": "Lung Opacity",
    "Nodule": "Lung Lesion",
    "Mass/lung": "Lung Lesion",
    "Pulmonary Edema": "Edema",
    "Edema/lung": "Edema",
    "Pulmonary Congestion": "Edema",
    "Heart Failure": "Edema",
    "Consolidation": "Consolidation",
    "Pneumonia": "Pneumonia",
    "Pulmonary Atelectasis": "Atelectasis",
    "Atelectasis": "Atelectasis",
    "Pneumothorax": "Pneumothorax",
    "Hydropneumothorax": "Pneumothorax",
    "Pleural Effusion": "Pleural Effusion",
    "Thickening/pleura": "Pleural Other",
    "Cicatrix/pleura": "Pleural Other",  # pleural scarring, as the CheXpert labeler counts it
    "Calcinosis/pleura": "Pleural Other",
    "Fractures, Bone": "Fracture",
    "Rib Fractures": "Fracture",
    "Catheters, Indwelling": "Support Devices",
    "Implanted Medical Device": "Support Devices",
    "Tube, Inserted": "Support Devices",
    "Medical Device": "Support Devices",
    "Pacemaker, Artificial": "Support Devices",
    "Stents": "Support Devices",
    "Catheterization, Central Venous": "Support Devices",
}


def mesh_to_labels(terms: list[str]) -> dict[str, int | None]:
    """Major MeSH terms -> labels (1 for mapped terms; everything else unknown)."""
    labels: dict[str, int | None] = {name: None for name in LABELS}
    for term in terms:
        parts = [p.strip() for p in term.split("/")]
        keys = [parts[0]] + [f"{parts[0]}/{p}" for p in parts[1:]]
        for key in keys:
            if key in MESH_TO_LABEL:
                labels[MESH_TO_LABEL[key]] = 1
    if labels["No Finding"] == 1 and any(labels[n] == 1 for n in LABELS if n != "No Finding"):
        labels["No Finding"] = None  # contradictory indexing: leave it unknown
    return labels


def _text(el: ET.Element | None) -> str:
    return " ".join((el.text or "").split()) if el is not None else ""


def iter_nlmcxr_reports(path: str | os.PathLike):
    """Yield ``(member name, dict of sections, major MeSH, automatic MeSH, image ids)`` from the archive."""
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".xml"):
                continue
            data = tar.extractfile(member).read()
            root = ET.fromstring(data)
            sections = {el.get("Label", "").upper(): _text(el) for el in root.iter("AbstractText")}
            major = [m.text.strip() for m in root.iter("major") if m.text]
            auto = [m.text.strip() for m in root.iter("automatic") if m.text]
            images = [el.get("id") for el in root.iter("parentImage") if el.get("id")]
            yield member.name, sections, major, auto, images


def load_nlmcxr(root: str | os.PathLike | None = None, *, limit: int | None = None) -> SourceResult:
    """Read the NLMCXR report archive into records (report text, MeSH labels, image ids)."""
    path = find_file(root, ["NLMCXR_reports.tgz"], "NLMCXR reports", xrv_fallback="NLMCXR_reports.tgz")
    result = SourceResult(source="nlmcxr", files=[str(path)])
    for i, (name, sections, major, auto, images) in enumerate(iter_nlmcxr_reports(path)):
        if limit is not None and i >= limit:
            break
        rid = "nlmcxr/CXR" + Path(name).stem
        findings, impression = sections.get("FINDINGS", ""), sections.get("IMPRESSION", "")
        if not findings and not impression:
            result.rejects.append(Reject("nlmcxr", f"{path}:{name}", i + 1, "no FINDINGS or IMPRESSION text", rid))
            continue
        text = "\n".join(s for s in (f"FINDINGS: {findings}" if findings else "",
                                     f"IMPRESSION: {impression}" if impression else "") if s)
        result.records.append(Record(
            id=rid, image=(images[0] + ".png") if images else None, dataset="nlmcxr",
            report=text, impression=impression or None, labels=mesh_to_labels(major),
            extra={"mesh": major, "mesh_automatic": auto, "images": images,
                   "indication": sections.get("INDICATION", "")},
        ))
    return result
