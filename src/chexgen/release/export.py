"""``chexgen export-dicom``: an existing synthetic set (manifest + PNGs) as synthetic DICOM files.

Each synthetic record's image is written as a Secondary Capture DICOM
(:func:`chexgen.release.dicom.write_synthetic_dicom`) with its stored pixel
values unchanged (8 or 16 bits as generated; the watermark in them stays),
its provenance (the record's, else the PNG's text chunk) and its
demographics; one study per prompt. ``OUT/manifest.jsonl`` lists the records
with their DICOM paths. Records that are not synthetic, have no image, no
provenance or an unreadable image are skipped with one message each; the run
goes on. Files already written with the same SOP instance UID are kept
(resumable; UIDs are deterministic).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from chexgen.data.manifest import read_manifest, write_manifest
from chexgen.errors import ChexgenError

__all__ = ["ExportReport", "export_dicom"]


@dataclass
class ExportReport:
    """What an export wrote and skipped (``(record id, message)``)."""

    written: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    manifest: str | None = None


def _target(out_dir: Path, image: str, rid: str) -> Path:
    rel = Path(image)
    if rel.is_absolute() or ".." in rel.parts:
        rel = Path("images") / f"{rid}.dcm"
    return out_dir / rel.with_suffix(".dcm")


def _already(path: Path, sop_uid: str) -> bool:
    if not path.is_file():
        return False
    import pydicom

    try:
        return str(pydicom.dcmread(str(path), stop_before_pixels=True).SOPInstanceUID) == sop_uid
    except Exception:  # a broken earlier file: rewrite it
        return False


def export_dicom(manifest: str | os.PathLike, out_dir: str | os.PathLike, progress: bool = False) -> ExportReport:
    """Export every synthetic record of ``manifest`` to DICOM under ``out_dir`` (see the module doc)."""
    from tqdm.auto import tqdm

    from chexgen.release.dicom import derive_uids, write_synthetic_dicom
    from chexgen.release.files import read_image_file

    manifest = Path(manifest)
    out = Path(out_dir)
    if out.resolve() == manifest.parent.resolve():
        raise ChexgenError(f"--out {out}: choose a folder other than the manifest's own")
    records = read_manifest(manifest)
    report = ExportReport()
    exported = []
    for rec in tqdm(records, desc="export-dicom", unit="img", disable=not progress):
        where = f"{manifest}: record {rec.id!r}"
        if not rec.synthetic:
            report.skipped.append((rec.id, f"{where}: not a synthetic record (synthetic is false); real images "
                                           "are never exported as synthetic DICOM"))
            continue
        if not rec.image:
            report.skipped.append((rec.id, f"{where}: no image path"))
            continue
        src = rec.resolve(rec.image, manifest.parent)
        try:
            img = read_image_file(src)
        except ChexgenError as e:
            report.skipped.append((rec.id, f"{where}: {e}"))
            continue
        provenance = rec.provenance or img.provenance
        if not provenance:
            report.skipped.append((rec.id, f"{where}: no provenance in the record or the image"))
            continue
        target = _target(out, rec.image, rec.id)
        if _already(target, derive_uids(provenance)["instance"]):
            report.kept.append(rec.id)
        else:
            try:
                write_synthetic_dicom(target, img.pixels, provenance, record=rec)
            except ChexgenError as e:
                report.skipped.append((rec.id, f"{where}: {e}"))
                continue
            report.written.append(rec.id)
        exported.append(dataclasses.replace(rec, image=str(target.relative_to(out)), provenance=provenance))
    if exported:
        report.manifest = str(out / "manifest.jsonl")
        write_manifest(report.manifest, exported)
    return report
