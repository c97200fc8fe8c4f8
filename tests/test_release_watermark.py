"""The invisible watermark on real radiographs (pydicom-data, pneumonia-model-package)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from _release_data import gray_u8, pneumonia_jpegs, provenance, rg1_unci
from PIL import Image

from chexgen.errors import ChexgenError
from chexgen.release.dicom import read_dicom_pixels, write_synthetic_dicom
from chexgen.release.watermark import (
    MIN_SCORE,
    apply_watermark,
    detect_watermark,
    embed_watermark,
    make_payload,
    payload_id_part,
)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    peak = float(np.iinfo(a.dtype).max)
    return 10 * np.log10(peak**2 / np.mean((a.astype(np.float64) - b) ** 2))


def _jpeg(a: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf))


def test_payload_format():
    a = np.zeros((64, 64), np.uint8)
    p = make_payload("syn_0001", a)
    assert p.startswith("chexgen:") and p.split(":")[1] == payload_id_part("syn_0001") and len(p) == 21
    assert make_payload("syn_0001", a + 1) != p and make_payload("syn_0002", a) != p


def test_real_16bit_cr_from_pydicom_data():
    ds = pydicom.dcmread(rg1_unci())
    a = ds.pixel_array
    assert a.dtype == np.uint16 and a.ndim == 2
    a = a[::2, ::2].copy()  # keep the test fast; still ~980 x 920 real CR pixels
    assert not detect_watermark(a).found
    p = make_payload("rg1", a)
    w = embed_watermark(a, p)
    assert w.shape == a.shape and w.dtype == np.uint16
    assert _psnr(a, w) > 40
    got = detect_watermark(w)
    assert got.found and got.payload == p and got.score >= MIN_SCORE
    # MONOCHROME1 displayed inverted: the mark is in block magnitudes, so the inverted image still carries it
    assert detect_watermark(np.iinfo(np.uint16).max - w).payload == p
    # 8-bit requantisation of the 16-bit image
    assert detect_watermark((w >> 8).astype(np.uint8)).payload == p


def test_real_jpeg_radiographs_from_pneumonia_model_package(tmp_path):
    paths = pneumonia_jpegs()
    assert len(paths) == 16
    unmarked = [gray_u8(p, 256) for p in paths]
    assert not any(detect_watermark(a).found for a in unmarked)  # no false positive on 16 real images
    for i, a in enumerate(unmarked[:6:2] + unmarked[9:15:3]):
        p = make_payload(f"img{i}", a)
        w = embed_watermark(a, p)
        assert w.dtype == np.uint8 and _psnr(a, w) > 38
        assert detect_watermark(w).payload == p
        assert detect_watermark(_jpeg(w, 90)).payload == p
        half = np.asarray(Image.fromarray(w).resize((128, 128), Image.Resampling.BILINEAR))
        assert detect_watermark(half).payload == p
        window = np.clip((w.astype(np.float64) - 12) * 1.1, 0, 255).round().astype(np.uint8)
        assert detect_watermark(window).payload == p
        path = write_synthetic_dicom(tmp_path / f"{i}.dcm", w, provenance("x", i))
        assert detect_watermark(read_dicom_pixels(path)).payload == p


def test_native_size_jpeg():
    a = np.asarray(Image.open(pneumonia_jpegs()[3]).convert("L"))
    p = make_payload("native", a)
    assert detect_watermark(embed_watermark(a, p)).payload == p


@pytest.mark.parametrize("bad", [np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.float32),
                                 np.zeros((16, 64), np.uint8)])
def test_bad_pixels(bad):
    with pytest.raises(ChexgenError):
        embed_watermark(bad, "chexgen:000000:000000")


def test_bad_payload():
    with pytest.raises(ChexgenError, match="payload"):
        embed_watermark(np.zeros((64, 64), np.uint8), "hello")


def test_apply_watermark_records_payload_or_opt_out():
    a = gray_u8(pneumonia_jpegs()[2], 256)
    marked, entry = apply_watermark(a, "syn_7")
    assert entry["watermark"]["enabled"] and detect_watermark(marked).payload == entry["watermark"]["payload"]
    assert entry["watermark"]["payload"] == make_payload("syn_7", a)
    same, off = apply_watermark(a, "syn_7", enabled=False)
    assert same is a and off == {"watermark": {"enabled": False}}
