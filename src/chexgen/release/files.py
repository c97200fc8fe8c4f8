"""Read a PNG, JPEG or DICOM image with its stored pixel values and its synthetic marking.

Unlike :func:`chexgen.data.imageio.load_gray` (float in [0, 1], LUTs applied,
for models), this keeps the stored integers, so an export or a check sees
exactly what the file holds, and it returns what marks the file as
synthetic: PNG text chunks, or chexgen's DICOM private block.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chexgen.data.imageio import DICOM_SUFFIXES, is_dicom
from chexgen.errors import ChexgenError

__all__ = ["ImageFile", "read_image_file", "IMAGE_SUFFIXES", "SYNTHETIC_KEY", "PROVENANCE_KEY", "is_image_path"]

SYNTHETIC_KEY = "chexgen:synthetic"
PROVENANCE_KEY = "chexgen:provenance"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg") + DICOM_SUFFIXES


@dataclass
class ImageFile:
    """One image file: ``pixels`` (H, W) as stored, ``kind`` png / jpeg / dicom, and its marking."""

    path: Path
    kind: str
    pixels: np.ndarray
    synthetic_marked: bool
    provenance: dict[str, Any] | None
    text: dict[str, str] = field(default_factory=dict)  # PNG text chunks
    dicom: Any = None  # the pydicom dataset (header), for DICOM files
    payload_in_file: str | None = None


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _gray(im) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(im, dtype=np.uint16)
    if im.mode == "I":
        a = np.asarray(im)
        return np.clip(a, 0, 65535).astype(np.uint16)
    if im.mode != "L":
        im = im.convert("L")
    return np.asarray(im, dtype=np.uint8)


def read_image_file(path: str | os.PathLike) -> ImageFile:
    """Read ``path``; raises :class:`ChexgenError` naming the file for anything missing or broken."""
    p = Path(path)
    if not p.is_file():
        raise ChexgenError(f"{p}: image not found")
    if is_dicom(p):
        from chexgen.release.dicom import dicom_marking, dicom_pixels, read_dicom_dataset

        ds = read_dicom_dataset(p)
        pixels = dicom_pixels(ds, p)
        info = dicom_marking(ds, p)
        return ImageFile(p, "dicom", pixels, bool(info["synthetic"]), info["provenance"], dicom=ds,
                         payload_in_file=info["payload"])
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            im.load()
            fmt = (im.format or "").upper()
            text = {str(k): str(v) for k, v in (getattr(im, "text", None) or {}).items()}
            pixels = _gray(im)
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError) as e:
        raise ChexgenError(f"{p}: cannot read image ({type(e).__name__}: {e})") from None
    kind = {"PNG": "png", "JPEG": "jpeg"}.get(fmt, fmt.lower() or "unknown")
    prov = None
    if PROVENANCE_KEY in text:
        try:
            prov = json.loads(text[PROVENANCE_KEY])
        except json.JSONDecodeError:
            raise ChexgenError(f"{p}: PNG text {PROVENANCE_KEY!r} is not valid JSON") from None
        if not isinstance(prov, dict):
            prov = None
    wm = (prov or {}).get("watermark")
    payload = wm.get("payload") if isinstance(wm, dict) else None
    return ImageFile(p, kind, pixels, text.get(SYNTHETIC_KEY, "").lower() == "true", prov, text=text,
                     payload_in_file=payload)
