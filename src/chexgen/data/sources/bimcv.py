"""BIMCV-COVID19+ (de la Iglesia Vayá et al. 2020): label TSV, participants TSV, BIDS image tree.

Written from the public documentation only (no file of it can be read here;
tests write tiny files in the documented layout).

* ``derivatives/labels/labels_covid19_posi.tsv`` (or any TSV passed as
  ``root``): one row per report with a session id column (``ReportID`` /
  ``session``, e.g. ``ses-E07985``), optionally the subject (``participant`` /
  ``PatientID``), and PadChest-style columns ``Labels`` and
  ``LabelsLocalizationsBySentence`` (the same labeller and vocabulary, plus
  ``COVID 19`` and ``COVID 19 uncertain``);
* ``participants.tsv``: ``participant``, ``age`` (a list such as ``[63, 64]``,
  one per session; the first is used), ``gender`` (M / F);
* images: ``sub-*/ses-*/mod-rx/*.png`` whose names carry the view as
  ``vp-pa`` / ``vp-ap`` / ``vp-ll``. One record per image when the tree is
  there, else one per report.

Mapping: :func:`chexgen.data.sources.padchest.map_padchest_labels`, plus
``COVID 19`` -> Pneumonia 1 and ``COVID 19 uncertain`` -> Pneumonia -1 (the
labels describe radiological findings of COVID-19 pneumonia).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from chexgen.data.manifest import Record
from chexgen.data.sources._common import Reject, SourceResult, parse_age, parse_sex, parse_view, read_csv
from chexgen.data.sources.padchest import map_padchest_labels, parse_list, parse_sentence_groups
from chexgen.errors import ChexgenError

__all__ = ["load_bimcv"]

_VIEW = re.compile(r"vp-([a-z]+)", re.I)


def _find_labels(root: Path) -> Path:
    if root.is_file():
        return root
    for cand in ("derivatives/labels/labels_covid19_posi.tsv", "labels_covid19_posi.tsv"):
        if (root / cand).is_file():
            return root / cand
    raise ChexgenError(f"{root}: no labels_covid19_posi.tsv (looked in derivatives/labels/ and the folder)")


def load_bimcv(root: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
               check_images: bool = False, limit: int | None = None) -> SourceResult:
    """Read BIMCV-COVID19+ labels (and participants, images when present) into records."""
    root = Path(root)
    label_path = _find_labels(root)
    base = root if root.is_dir() else label_path.parent
    frame = read_csv(label_path, sep="\t", nrows=limit)
    sess_col = next((c for c in ("ReportID", "session", "session_id") if c in frame.columns), None)
    if sess_col is None or "Labels" not in frame.columns:
        raise ChexgenError(f"{label_path}: expected a session column (ReportID or session) and 'Labels'; "
                           f"found {list(frame.columns)}")
    subj_col = next((c for c in ("participant", "PatientID", "subject") if c in frame.columns), None)
    result = SourceResult(source="bimcv", files=[str(label_path)])
    people: dict[str, tuple[object, object]] = {}
    part_path = next((p for p in (base / "participants.tsv", base.parent / "participants.tsv") if p.is_file()), None)
    if part_path is not None:
        part = read_csv(part_path, sep="\t")
        if "participant" in part.columns:
            for pid, age, sex in zip(part["participant"].astype(str), part.get("age", [None] * len(part)),
                                     part.get("gender", [None] * len(part))):
                people[pid] = (age, sex)
            result.files.append(str(part_path))
    image_base = Path(image_root) if image_root is not None else base
    images: dict[str, list[Path]] = {}
    for p in image_base.glob("sub-*/ses-*/mod-rx/*.png"):
        images.setdefault(p.parent.parent.name, []).append(p)

    for i, row in enumerate(frame.to_dict(orient="records"), start=1):
        session = str(row[sess_col]).strip()
        names = parse_list(row.get("Labels"))
        if not names:
            result.rejects.append(Reject("bimcv", str(label_path), i, "no labels", session))
            continue
        covid = [n for n in names if n.lower().startswith("covid 19")]
        labels, other, details, flags = map_padchest_labels([n for n in names if n not in covid],
                                                            parse_sentence_groups(row.get(
                                                                "LabelsLocalizationsBySentence")))
        if any(n.lower() == "covid 19" for n in covid):
            labels["Pneumonia"], labels["No Finding"] = 1, 0
        elif covid and labels["Pneumonia"] != 1:
            labels["Pneumonia"], labels["No Finding"] = -1, 0
        subject = str(row[subj_col]).strip() if subj_col else None
        sess_images = images.get(session, [])
        if subject is None and sess_images:
            subject = sess_images[0].parent.parent.parent.name
        age = sex = None
        if subject in people:
            raw_age, raw_sex = people[subject]
            ages = re.findall(r"\d+(?:\.\d+)?", str(raw_age)) if raw_age is not None else []
            try:
                age = parse_age(ages[0]) if ages else None
            except ValueError as e:
                result.rejects.append(Reject("bimcv", str(part_path), i, f"subject {subject}: {e}", session))
                continue
            sex = parse_sex(raw_sex)
        extra: dict = {"source_labels": names}
        if other:
            extra["other_findings"] = other
        if details:
            extra["findings"] = details
        if check_images and not sess_images:
            result.rejects.append(Reject("bimcv", str(label_path), i, f"no images for session {session} under "
                                         f"{image_base}", session))
            continue
        targets = sess_images or [None]
        for img in targets:
            view = None
            if img is not None:
                m = _VIEW.search(img.name)
                view = parse_view(m.group(1)) if m else None
            rid = f"bimcv/{session}" + (f"/{img.stem}" if img is not None and len(targets) > 1 else "")
            result.records.append(Record(
                id=rid, image=str(img) if img is not None else None, dataset="bimcv", view=view, sex=sex, age=age,
                patient_id=subject, study_id=session, labels=dict(labels), extra=dict(extra),
            ))
    return result
