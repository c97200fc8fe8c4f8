"""Radiograph image I/O: PNG / JPEG (8- and 16-bit) and DICOM in, gray PNG out.

Every reader returns a float32 array of shape (H, W) in [0, 1] where **bright
means dense** (bone white, air black), as radiographs are displayed:

* PNG / JPEG: 8-bit divided by 255, 16-bit by 65535; RGB(A) is converted to
  luminance.
* DICOM (pydicom): modality LUT (RescaleSlope / RescaleIntercept), then the VOI
  LUT or the first window (WindowCenter / WindowWidth) when the file has one,
  else min-max over the pixel data; MONOCHROME1 (bright means *less* dense) is
  inverted so the result is MONOCHROME2.

Resizing (:func:`fit_square`) has one policy option: ``"crop"`` (center crop
to a square, then resize; default, as most CXR models are trained) or ``"pad"``
(pad the short side with black to a square, then resize; keeps the whole
field of view).

Writers are atomic (temporary file + rename) and can attach PNG text chunks
(chexgen marks every synthetic image with ``chexgen:synthetic = true``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image, PngImagePlugin

from chexgen.errors import ChexgenError
from chexgen.utils import atomic_path

__all__ = ["load_gray", "fit_square", "quantize", "save_png", "read_png_text", "RESIZE_POLICIES", "DICOM_SUFFIXES",
           "MAX_IMAGE_PIXELS", "max_image_pixels", "is_dicom"]

RESIZE_POLICIES = ("crop", "pad")

#: Largest image chexgen decodes, in pixels (width x height): 50 megapixels, e.g. 7000 x 7000. The
#: largest chest radiographs (43 x 43 cm detectors at 100 um) are about 4300 x 4300 = 18.5 MP, so
#: this leaves room for any real radiograph while refusing decompression bombs (a few-kB PNG that
#: inflates to gigabytes) before a single pixel is decoded. Override with $CHEXGEN_MAX_IMAGE_PIXELS.
MAX_IMAGE_PIXELS = 50_000_000


def max_image_pixels() -> int:
    """The pixel limit in force: $CHEXGEN_MAX_IMAGE_PIXELS if set, else :data:`MAX_IMAGE_PIXELS`."""
    value = os.environ.get("CHEXGEN_MAX_IMAGE_PIXELS")
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            raise ChexgenError(f"$CHEXGEN_MAX_IMAGE_PIXELS={value!r}: expected an integer") from None
    return MAX_IMAGE_PIXELS


def _check_size(path: Path, width: int, height: int) -> None:
    limit = max_image_pixels()
    if width * height > limit:
        raise ChexgenError(f"{path}: image is {width} x {height} = {width * height / 1e6:.1f} megapixels, above the "
                           f"limit of {limit / 1e6:g} megapixels (set $CHEXGEN_MAX_IMAGE_PIXELS to raise it)")
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")


def is_dicom(path: Path) -> bool:
    """Whether ``path`` is a DICOM file (by suffix, else by the ``DICM`` magic at byte 128)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _load_dicom(path: Path) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(str(path))
    if "PixelData" not in ds:
        raise ChexgenError(f"{path}: DICOM file has no pixel data")
    _check_size(path, int(getattr(ds, "Columns", 0) or 0), int(getattr(ds, "Rows", 0) or 0))
    arr = ds.pixel_array
    if arr.ndim == 3:  # multi-frame: take the first frame; colour DICOM is not a radiograph
        if getattr(ds, "SamplesPerPixel", 1) != 1:
            raise ChexgenError(f"{path}: expected a single-channel radiograph, got SamplesPerPixel={ds.SamplesPerPixel}")
        arr = arr[0]
    arr = apply_modality_lut(arr, ds).astype(np.float64)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        arr = apply_voi_lut(arr, ds, index=0).astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    out = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        out = 1.0 - out
    return out.astype(np.float32)


def _load_raster(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            _check_size(path, *im.size)  # before decoding: the header alone says how big it would be
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                scale = 65535.0 if arr.max() > 255 or mode.startswith("I;16") else 255.0
                return np.clip(arr / scale, 0, 1).astype(np.float32)
            if mode == "F":
                arr = np.asarray(im, dtype=np.float32)
                return np.clip(arr, 0, 1)
            if mode != "L":
                im = im.convert("L")
            return np.asarray(im, dtype=np.float32) / 255.0
    except Image.DecompressionBombError as e:  # Pillow's own, larger limit (checked inside Image.open)
        raise ChexgenError(f"{path}: image is above the limit of {max_image_pixels() / 1e6:g} megapixels "
                           f"(refused as a decompression bomb: {e})") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ChexgenError(f"{path}: cannot read image ({e})") from None


def load_gray(path: str | os.PathLike) -> np.ndarray:
    """Load a radiograph as float32 (H, W) in [0, 1], bright = dense. Raises ChexgenError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ChexgenError(f"{path}: image not found")
    if is_dicom(path):
        try:
            return _load_dicom(path)
        except ChexgenError:
            raise
        except Exception as e:  # pydicom raises many types for broken files
            raise ChexgenError(f"{path}: cannot read DICOM ({type(e).__name__}: {e})") from None
    return _load_raster(path)


def fit_square(image: np.ndarray, size: int, policy: str = "crop") -> np.ndarray:
    """Make ``image`` (H, W) a ``size`` x ``size`` float32 array by center crop or black padding, then resize."""
    if policy not in RESIZE_POLICIES:
        raise ChexgenError(f"unknown resize policy {policy!r}; expected one of {RESIZE_POLICIES}")
    h, w = image.shape
    if policy == "crop":
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        image = image[top : top + s, left : left + s]
    else:
        s = max(h, w)
        canvas = np.zeros((s, s), dtype=np.float32)
        top, left = (s - h) // 2, (s - w) // 2
        canvas[top : top + h, left : left + w] = image
        image = canvas
    if image.shape[0] != size:
        im = Image.fromarray(image.astype(np.float32), mode="F")
        im = im.resize((size, size), Image.Resampling.BICUBIC if size > image.shape[0] else Image.Resampling.LANCZOS)
        image = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
    return image.astype(np.float32)


def quantize(image: np.ndarray, bits: int = 8) -> np.ndarray:
    """Float pixels in [0, 1] (clipped) -> uint8 (``bits=8``) or uint16 (``bits=16``), rounded."""
    if bits not in (8, 16):
        raise ChexgenError(f"PNG bit depth must be 8 or 16, got {bits}")
    arr = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    if bits == 8:
        return np.round(arr * 255).astype(np.uint8)
    return np.round(arr * 65535).astype(np.uint16)


def save_png(
    path: str | os.PathLike,
    image: np.ndarray,
    bits: int = 8,
    text: Mapping[str, str] | None = None,
) -> None:
    """Write a (H, W) gray image as a single-channel 8- or 16-bit PNG, atomically.

    ``image`` is float in [0, 1] (quantised with :func:`quantize`), or already integer pixels of
    the matching dtype (uint8 for 8 bits, uint16 for 16), written as they are.
    """
    if bits not in (8, 16):
        raise ChexgenError(f"PNG bit depth must be 8 or 16, got {bits}")
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ChexgenError(f"{path}: expected a 2-D gray image, got shape {arr.shape}")
    arr = arr if arr.dtype == (np.uint8 if bits == 8 else np.uint16) else quantize(arr, bits)
    im = Image.fromarray(arr, mode="L") if bits == 8 else Image.fromarray(arr)
    info = None
    if text:
        info = PngImagePlugin.PngInfo()
        for k, v in text.items():
            info.add_text(str(k), str(v))
    with atomic_path(path, suffix=".png") as tmp:
        im.save(tmp, format="PNG", pnginfo=info)


def read_png_text(path: str | os.PathLike) -> dict[str, str]:
    """Text chunks of a PNG (e.g. chexgen's synthetic marker and provenance)."""
    with Image.open(path) as im:
        return dict(getattr(im, "text", {}) or {})
