"""``chexgen verify``: is this image (or every image in a folder) a marked chexgen synthetic image?

For each PNG, JPEG or DICOM file: the synthetic marking the file carries (PNG
text chunk / DICOM ConversionType SYN + chexgen's private block), whether the
invisible watermark is found, its payload, and whether the payload matches the
provenance: the payload recorded in the file itself, or, once the file lost
its metadata (re-saved as JPEG, converted), the record of a synthetic manifest
whose provenance holds that payload (``manifest=``). A payload's first part is
a hash of the image id, so a manifest match also checks the id.

Unreadable files get one message each; the run goes on and lists them.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from chexgen.errors import ChexgenError
from chexgen.release.files import ImageFile, is_image_path, read_image_file
from chexgen.release.watermark import detect_watermark, payload_id_part

__all__ = ["VerifyResult", "VerifyReport", "verify", "check_file", "manifest_payloads", "list_images"]


@dataclass
class VerifyResult:
    """The verdict for one file."""

    path: str
    kind: str
    synthetic_marked: bool
    watermark_found: bool
    payload: str | None
    score: float
    provenance: str  # match / mismatch / no provenance in file / manifest record ... / no watermark
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Marked as synthetic in the pixels, with a payload that agrees with the provenance."""
        return self.watermark_found and not self.provenance.startswith("mismatch")

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


@dataclass
class VerifyReport:
    """All verdicts, and the files that could not be read (``(path, message)``)."""

    results: list[VerifyResult] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"results": [r.as_dict() for r in self.results],
                "skipped": [{"path": p, "error": m} for p, m in self.skipped]}


def manifest_payloads(manifest: str | os.PathLike) -> dict[str, str]:
    """``payload -> record id`` over a synthetic manifest's provenance."""
    from chexgen.data.manifest import iter_manifest

    out: dict[str, str] = {}
    for rec in iter_manifest(manifest):
        wm = (rec.provenance or {}).get("watermark")
        if isinstance(wm, dict) and wm.get("payload"):
            out[str(wm["payload"])] = rec.id
    return out


def _provenance_status(img: ImageFile, found: bool, payload: str | None,
                       by_payload: dict[str, str] | None) -> tuple[str, list[str]]:
    notes: list[str] = []
    wm = (img.provenance or {}).get("watermark") if img.provenance else None
    if not found:
        if wm is False or (isinstance(wm, dict) and wm.get("enabled") is False):
            notes.append("provenance says the watermark was switched off at generation")
        elif img.synthetic_marked:
            notes.append("marked synthetic in its metadata but no watermark in the pixels")
        return "no watermark", notes
    if img.payload_in_file:
        if img.payload_in_file == payload:
            return "match", notes
        return f"mismatch (the file's provenance records {img.payload_in_file})", notes
    if by_payload is not None:
        rid = by_payload.get(str(payload))
        if rid is None:
            return "no provenance in file; payload not in the manifest", notes
        if payload_id_part(rid) != str(payload).split(":")[1]:
            return f"mismatch (manifest record {rid} has another id hash)", notes
        return f"match: manifest record {rid}", notes
    return "no provenance in file", notes


def check_file(path: str | os.PathLike, by_payload: dict[str, str] | None = None) -> VerifyResult:
    """Verify one file; raises :class:`ChexgenError` if it cannot be read."""
    img = read_image_file(path)
    res = detect_watermark(img.pixels)
    status, notes = _provenance_status(img, res.found, res.payload, by_payload)
    return VerifyResult(str(img.path), img.kind, img.synthetic_marked, res.found, res.payload, round(res.score, 4),
                        status, notes)


def list_images(target: str | os.PathLike) -> list[Path]:
    """``target`` itself, or every image file under the folder ``target`` (sorted)."""
    t = Path(target)
    if t.is_file():
        return [t]
    if t.is_dir():
        return sorted(p for p in t.rglob("*") if p.is_file() and is_image_path(p))
    raise ChexgenError(f"{t}: no such file or folder")


def verify(targets: Iterable[str | os.PathLike] | str | os.PathLike, manifest: str | os.PathLike | None = None,
           progress: bool = False) -> VerifyReport:
    """Verify every image of ``targets`` (files or folders); see the module doc."""
    from tqdm.auto import tqdm

    if isinstance(targets, (str, os.PathLike)):
        targets = [targets]
    paths = [p for t in targets for p in list_images(t)]
    if not paths:
        raise ChexgenError(f"no PNG, JPEG or DICOM files in {', '.join(str(t) for t in targets)}")
    by_payload = manifest_payloads(manifest) if manifest is not None else None
    report = VerifyReport()
    for p in tqdm(paths, desc="verify", unit="img", disable=not progress):
        try:
            report.results.append(check_file(p, by_payload))
        except ChexgenError as e:
            report.skipped.append((str(p), str(e)))
    return report
