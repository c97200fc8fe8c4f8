"""The one writer of generated images: PNG + provenance + manifest record (+ condition, masks, COCO boxes).

For every planned image the writer puts, under the run folder:

- ``images/<id>.png``: the radiograph (8- or 16-bit gray), marked synthetic with its provenance
  (:func:`chexgen.data.provenance.synthetic_png_text`) and, unless turned off, an invisible
  watermark whose payload (chexgen id + image hash prefix) the provenance records
  (:mod:`chexgen.release.watermark`);
- with DICOM output (``formats`` ``dicom`` or both): a synthetic Secondary Capture DICOM
  (:func:`chexgen.release.dicom.write_synthetic_dicom`) at ``images/<id>.dcm`` (DICOM only) or
  ``dicom/<id>.dcm`` (both; the PNG stays the record's image);
- with a spatial condition: ``conditions/<id>.png`` (the condition exactly as the model saw it,
  palette gray levels), ``masks/<id>__<class>.png`` (one binary mask per class, 0/255, in the
  generated image's pixels: the input masks mapped through the same square fit), and the boxes
  in output pixels in the record and in ``boxes.coco.json``;
- ``manifest.jsonl``: one :class:`~chexgen.data.manifest.Record` per image (``synthetic = true``,
  provenance, the prompt as ``impression``, labels / demographics copied from a source record).

The image file(s) are written last, atomically, so their presence (and a clean decode) mark an
image as finished. The manifest and the COCO file are rebuilt from the plan when a run ends, in
plan order, whatever the number of processes or interruptions; each record's provenance is read
back from its image file, so manifest and file always agree.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from chexgen.data.condition_sources import ConditionInput, write_coco
from chexgen.data.conditions import FrameToSquare, resolve_class, validate_box
from chexgen.data.imageio import quantize, save_png
from chexgen.data.manifest import Box, Mask, Record, record_from_dict, write_manifest
from chexgen.data.provenance import image_provenance, read_provenance, synthetic_png_text
from chexgen.errors import ChexgenError
from chexgen.generation.plan import PlannedImage

__all__ = ["OutputWriter", "mark_image", "write_synthetic_png", "job_provenance", "condition_targets", "condition_boxes", "is_finished_image",
           "MANIFEST_NAME", "COCO_NAME"]

MANIFEST_NAME = "manifest.jsonl"
FORMATS = ("png", "dicom", "both")
COCO_NAME = "boxes.coco.json"
_COPIED_FIELDS = ("view", "sex", "age", "race", "labels", "report", "impression", "severity")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "x"


def condition_boxes(condition: ConditionInput, size: int, policy: str) -> list[Box]:
    """Boxes of ``condition`` in the ``size`` px output frame (boxes that fall outside are dropped)."""
    geometry = FrameToSquare(condition.width, condition.height, size, policy)
    boxes = []
    for i, b in enumerate(condition.boxes):
        mapped = geometry.map_box(validate_box(b, condition.width, condition.height,
                                               where=f"condition {condition.id!r}: box {i}"))
        if mapped is not None:
            boxes.append(Box(b.label, mapped.x0, mapped.y0, mapped.x1, mapped.y1, source=b.source))
    return boxes


def condition_targets(condition: ConditionInput, size: int, policy: str) -> tuple[dict[str, np.ndarray], list[Box]]:
    """Masks (one per canonical class, united) and boxes of ``condition`` in the ``size`` px output frame."""
    geometry = FrameToSquare(condition.width, condition.height, size, policy)
    masks: dict[str, np.ndarray] = {}
    for m in condition.masks:
        name = resolve_class(m.name).name
        mapped = geometry.map_mask(m.mask)
        masks[name] = masks[name] | mapped if name in masks else mapped
    return masks, condition_boxes(condition, size, policy)


def _mask_names(condition: ConditionInput) -> list[str]:
    return list(dict.fromkeys(resolve_class(m.name).name for m in condition.masks))


def job_provenance(run: dict[str, Any], job: PlannedImage) -> dict[str, Any]:
    """Provenance of one planned image (:func:`chexgen.data.provenance.image_provenance`)."""
    return image_provenance(run, job.prompt, job.seed, job.condition.id if job.condition is not None else None)


def is_finished_image(path: Path, size: int) -> bool:
    """Whether ``path`` is a complete PNG of ``size`` x ``size`` pixels (decodes to the end)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.size != (size, size) or im.format != "PNG":
                return False
            im.load()
        return True
    except (OSError, ValueError, SyntaxError):
        return False


def mark_image(image: np.ndarray, image_id: str, provenance: dict[str, Any], bits: int = 8,
               watermark: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """Quantised pixels of ``image`` with the invisible watermark (unless ``watermark`` is off) and the
    provenance with its ``watermark`` entry (payload, or the recorded opt-out)."""
    pixels = quantize(image, bits)
    if watermark:
        from chexgen.release.watermark import apply_watermark

        pixels, entry = apply_watermark(pixels, image_id)
    else:
        entry = {"watermark": {"enabled": False}}
    return pixels, {**provenance, **entry}


def write_synthetic_png(path: "str | os.PathLike", image: np.ndarray, image_id: str, provenance: dict[str, Any],
                        bits: int = 8, watermark: bool = True) -> dict[str, Any]:
    """Write one synthetic PNG the one way (watermark + marking text); returns the provenance written."""
    pixels, prov = mark_image(image, image_id, provenance, bits, watermark)
    save_png(path, pixels, bits=bits, text=synthetic_png_text(prov))
    return prov


def _is_finished_dicom(path: Path, size: int) -> bool:
    """Whether ``path`` is a readable DICOM file of ``size`` x ``size`` pixels."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=False)
        return (int(ds.Rows), int(ds.Columns)) == (size, size) and len(ds.PixelData) >= size * size
    except Exception:  # noqa: BLE001 - any unreadable file is simply not finished; it is written again
        return False


class OutputWriter:
    """Writes the files of generated images into ``out`` (see the module docstring).

    ``run_provenance``: the run-level provenance (what every image's provenance starts with).
    ``policy`` / ``palette``: the control adapter's fit policy and palette (conditioned runs).
    ``image_format``: ``png``, ``dicom`` or ``both``; ``watermark``: embed the invisible watermark.
    """

    def __init__(self, out: "str | os.PathLike", resolution: int, run_provenance: dict[str, Any], bits: int = 8,
                 policy: str | None = None, palette: str | None = None, image_format: str = "png",
                 watermark: bool = True) -> None:
        if image_format not in FORMATS:
            raise ChexgenError(f"image format must be one of {', '.join(FORMATS)}, got {image_format!r}")
        self.out = Path(out)
        self.resolution = int(resolution)
        self.run_provenance = dict(run_provenance)
        self.bits = int(bits)
        self.policy = policy or "pad"
        self.palette = palette
        self.image_format = image_format
        self.watermark = bool(watermark)
        if image_format != "png":
            from chexgen.release.dicom import require_dicom_writer

            require_dicom_writer()  # a missing extra fails before anything is generated

    def image_relpath(self, job: PlannedImage) -> str:
        """The record's image: the PNG, or the DICOM file when only DICOM is written."""
        return job.relpath if self.image_format != "dicom" else f"{Path(job.relpath).with_suffix('.dcm')}"

    def dicom_relpath(self, job: PlannedImage) -> str | None:
        """Path of ``job``'s DICOM file relative to the output folder (None when writing PNG only)."""
        if self.image_format == "png":
            return None
        return self.image_relpath(job) if self.image_format == "dicom" else f"dicom/{job.id}.dcm"

    def mask_relpath(self, job: PlannedImage, name: str) -> str:
        """Path of one condition mask of ``job``, relative to the output folder."""
        return f"masks/{job.id}__{_safe(name)}.png"

    def condition_relpath(self, job: PlannedImage) -> str:
        """Path of the condition image ``job`` was drawn from, relative to the output folder."""
        return f"conditions/{job.id}.png"

    def is_finished(self, job: PlannedImage) -> bool:
        """Whether ``job``'s files already exist complete (PNG and / or DICOM of the right size): resume."""
        if self.image_format != "dicom" and not is_finished_image(self.out / job.relpath, self.resolution):
            return False
        dcm = self.dicom_relpath(job)
        return dcm is None or _is_finished_dicom(self.out / dcm, self.resolution)

    def write(self, job: PlannedImage, image: np.ndarray, drawn_condition: np.ndarray | None = None) -> None:
        """Write one generated image ``(H, W)`` in [0, 1] (and its condition files); the image goes last."""
        if job.condition is not None:
            if drawn_condition is not None:
                save_png(self.out / self.condition_relpath(job), drawn_condition, bits=8,
                         text={"chexgen:condition": f"palette {self.palette}"})
            masks, _ = condition_targets(job.condition, self.resolution, self.policy)
            for name, mask in masks.items():
                save_png(self.out / self.mask_relpath(job, name), mask.astype(np.float32), bits=8)
        pixels, prov = mark_image(image, job.id, job_provenance(self.run_provenance, job), self.bits, self.watermark)
        dcm = self.dicom_relpath(job)
        if dcm is not None:
            from chexgen.release.dicom import write_synthetic_dicom

            write_synthetic_dicom(self.out / dcm, pixels, prov, record=job.item.source)
        if self.image_format != "dicom":
            save_png(self.out / job.relpath, pixels, bits=self.bits, text=synthetic_png_text(prov))

    def record(self, job: PlannedImage) -> Record:
        """The synthetic manifest record of one planned image."""
        d: dict[str, Any] = {
            "id": job.id,
            "image": self.image_relpath(job),
            "width": self.resolution,
            "height": self.resolution,
            "synthetic": True,
            "provenance": job_provenance(self.run_provenance, job),
            "extra": {"prompt_index": job.group, "image_index": job.k},
        }
        src = job.item.source
        if src is not None:
            for name in _COPIED_FIELDS:
                value = getattr(src, name)
                if value not in (None, {}, []):
                    d[name] = value
            d["extra"]["source_id"] = src.id
            if src.dataset:
                d["extra"]["source_dataset"] = src.dataset
        d["impression"] = job.prompt
        dcm = self.dicom_relpath(job)
        if dcm is not None and dcm != d["image"]:
            d["extra"]["dicom"] = dcm
        rec = record_from_dict(d, where=f"generated {job.id}")
        if job.condition is not None:
            rec.masks = [Mask(name=n, path=self.mask_relpath(job, n)) for n in _mask_names(job.condition)]
            rec.boxes = condition_boxes(job.condition, self.resolution, self.policy)
            rec.extra["condition_id"] = job.condition.id
            rec.extra["condition_image"] = self.condition_relpath(job)
        return rec

    def written_provenance(self, job: PlannedImage) -> dict[str, Any] | None:
        """The provenance stored in the image file of ``job`` (PNG text, else the DICOM private block)."""
        if self.image_format != "dicom":
            return read_provenance(self.out / job.relpath)
        from chexgen.release.dicom import read_dicom_provenance

        return read_dicom_provenance(self.out / self.image_relpath(job)).get("provenance")

    def finish(self, plan: Sequence[PlannedImage]) -> int:
        """Rebuild ``manifest.jsonl`` (and ``boxes.coco.json`` for conditioned runs) from the finished images."""
        done = [j for j in plan if (self.out / self.image_relpath(j)).is_file()]
        records = []
        for j in done:
            rec = self.record(j)
            rec.provenance = self.written_provenance(j) or rec.provenance
            records.append(rec)
        if any(j.condition is not None for j in plan):
            write_coco(self.out / COCO_NAME, [(r.id, r.image, r.width, r.height, r.boxes) for r in records])
        return write_manifest(self.out / MANIFEST_NAME, records)
