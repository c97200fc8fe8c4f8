"""Blinded study images: re-encoded from pixels only, one size and bit depth for every source.

A rater who saves an image must learn nothing from the file. chexgen marks its
synthetic PNGs with text chunks (``chexgen:synthetic``), real files carry
DICOM headers or EXIF, and real and synthetic files differ in size and bit
depth. Every study image is therefore decoded to a float gray array
(:func:`chexgen.data.imageio.load_gray`: PNG, JPEG or DICOM), cropped to the
centre square and resized (:func:`~chexgen.data.imageio.fit_square`), quantised
to **8 bits** and written as a fresh single-channel PNG built from the array
alone: the file holds only ``IHDR``, ``IDAT`` and ``IEND`` chunks, and
:func:`check_png_pixels_only` proves it before the study is used.

Centre crop (not padding) is the default because synthetic images are square:
black bars on real images only would unblind the study.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from chexgen.data.imageio import RESIZE_POLICIES, fit_square, load_gray
from chexgen.errors import ChexgenError
from chexgen.utils import atomic_path

__all__ = [
    "ALLOWED_CHUNKS",
    "IMAGE_BITS",
    "png_chunks",
    "check_png_pixels_only",
    "encode_blinded_png",
    "reencode_image",
]

IMAGE_BITS = 8
ALLOWED_CHUNKS = ("IHDR", "IDAT", "IEND")
_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunks(data: bytes) -> list[tuple[str, bytes]]:
    """The (type, payload) chunks of PNG bytes, in file order; raises ``ValueError`` on a malformed file."""
    if not data.startswith(_SIGNATURE):
        raise ValueError("not a PNG file (bad signature)")
    out: list[tuple[str, bytes]] = []
    pos = len(_SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            raise ValueError("truncated PNG chunk header")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        payload = data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(payload) != length or len(crc) != 4:
            raise ValueError("truncated PNG chunk")
        if struct.unpack(">I", crc)[0] != zlib.crc32(kind + payload) & 0xFFFFFFFF:
            raise ValueError(f"bad CRC in PNG chunk {kind!r}")
        out.append((kind.decode("latin-1"), payload))
        pos += 12 + length
    return out


def check_png_pixels_only(data: bytes, size: int | None = None) -> None:
    """Raise ``ValueError`` unless ``data`` is an 8-bit gray PNG of only IHDR / IDAT / IEND (of ``size`` px)."""
    chunks = png_chunks(data)
    kinds = [k for k, _ in chunks]
    extra = sorted(set(kinds) - set(ALLOWED_CHUNKS))
    if extra:
        raise ValueError(f"PNG carries chunks beyond the pixels: {extra}")
    if not kinds or kinds[0] != "IHDR" or kinds[-1] != "IEND":
        raise ValueError(f"PNG chunk order {kinds} is not IHDR ... IEND")
    width, height, depth, colour = struct.unpack(">IIBB", chunks[0][1][:10])
    if depth != IMAGE_BITS or colour != 0:
        raise ValueError(f"PNG is not {IMAGE_BITS}-bit gray (bit depth {depth}, colour type {colour})")
    if size is not None and (width, height) != (size, size):
        raise ValueError(f"PNG is {width}x{height}, expected {size}x{size}")


def encode_blinded_png(image: np.ndarray) -> bytes:
    """PNG bytes of a (H, W) array in [0, 1]: 8-bit gray, pixels only."""
    arr = np.round(np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0) * 255).astype(np.uint8)
    if arr.ndim != 2:
        raise ChexgenError(f"expected a 2-D gray image, got shape {arr.shape}")
    buf = io.BytesIO()
    # A new Image from the bare array carries no info dict; pnginfo=None writes no text chunks.
    Image.fromarray(arr).save(buf, format="PNG", pnginfo=None, optimize=False)
    data = buf.getvalue()
    check_png_pixels_only(data, None)
    return data


def reencode_image(src: str | os.PathLike, dst: str | os.PathLike, size: int, policy: str = "crop") -> None:
    """Decode ``src`` (PNG / JPEG / DICOM), fit it to ``size`` x ``size`` and write a blinded PNG to ``dst``.

    Raises :class:`ChexgenError` naming ``src`` when it cannot be read.
    """
    if policy not in RESIZE_POLICIES:
        raise ChexgenError(f"unknown resize policy {policy!r}; expected one of {RESIZE_POLICIES}")
    pixels = fit_square(load_gray(src), size, policy)
    data = encode_blinded_png(pixels)
    check_png_pixels_only(data, size)
    with atomic_path(Path(dst), suffix=".png") as tmp:
        tmp.write_bytes(data)
