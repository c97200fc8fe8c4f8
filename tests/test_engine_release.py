"""The one writer's synthetic marking: invisible watermark by default, DICOM output, opt-out recorded."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from conftest import make_tiny_pipeline
from PIL import Image

from chexgen.cli import main
from chexgen.data.imageio import read_png_text
from chexgen.data.manifest import read_manifest
from chexgen.data.provenance import read_provenance
from chexgen.generation import ChexGenBackend, PromptItem, generate_to_folder
from chexgen.release.verify import check_file
from chexgen.release.watermark import detect_watermark


@pytest.fixture(scope="module")
def pipe128(tiny_t5_dir):
    # 128 px: the demo model's size, where the watermark has room for its payload
    return make_tiny_pipeline(tiny_t5_dir, resolution=128, depth=1)


def _run(pipe, out, **kw):
    backend = ChexGenBackend(pipe, pipe.sampling_settings(num_inference_steps=2))
    return generate_to_folder(backend, [PromptItem("Left pleural effusion."), PromptItem("Normal.")], out,
                              progress=False, **kw)


def test_watermark_is_embedded_by_default_and_verifiable(pipe128, tmp_path):
    _run(pipe128, tmp_path / "wm")
    for rec in read_manifest(tmp_path / "wm" / "manifest.jsonl"):
        wm = rec.provenance["watermark"]
        assert wm["payload"].startswith("chexgen:")
        png = tmp_path / "wm" / rec.image
        assert read_provenance(png) == rec.provenance  # manifest and file agree
        found = detect_watermark(np.asarray(Image.open(png)))
        assert found.found and found.payload == wm["payload"]
        res = check_file(png)
        assert res.ok and res.synthetic_marked


def test_no_watermark_is_recorded_and_leaves_plain_pixels(pipe128, tmp_path):
    _run(pipe128, tmp_path / "plain", watermark=False)
    _run(pipe128, tmp_path / "marked")
    for rec in read_manifest(tmp_path / "plain" / "manifest.jsonl"):
        assert rec.provenance["watermark"] == {"enabled": False}
        assert not detect_watermark(np.asarray(Image.open(tmp_path / "plain" / rec.image))).found
    a = np.asarray(Image.open(tmp_path / "plain" / "images" / "syn-000000-000.png"), float)
    b = np.asarray(Image.open(tmp_path / "marked" / "images" / "syn-000000-000.png"), float)
    assert 0 < np.abs(a - b).mean() < 3  # the mark changes pixels, by little


def test_both_formats_write_matching_png_and_synthetic_dicom(pipe128, tmp_path):
    out = tmp_path / "both"
    _run(pipe128, out, image_format="both", bits=16)
    recs = read_manifest(out / "manifest.jsonl")
    for rec in recs:
        png = np.asarray(Image.open(out / rec.image))
        ds = pydicom.dcmread(out / rec.extra["dicom"])
        assert ds.ConversionType == "SYN" and list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsStored == 16
        assert np.array_equal(ds.pixel_array, png)  # the same (watermarked) pixels
    uids = {pydicom.dcmread(out / r.extra["dicom"]).SOPInstanceUID for r in recs}
    assert len(uids) == len(recs)
    # a rerun verifies the DICOM files too: a truncated one is made again, with the same pixels and UIDs
    victim = out / recs[0].extra["dicom"]
    before = pydicom.dcmread(victim)
    victim.write_bytes(victim.read_bytes()[:100])
    again = _run(pipe128, out, image_format="both", bits=16)
    after = pydicom.dcmread(victim)
    assert again.generated == 1 and np.array_equal(after.pixel_array, before.pixel_array)
    assert (after.StudyInstanceUID, after.SeriesInstanceUID, after.SOPInstanceUID) == (
        before.StudyInstanceUID, before.SeriesInstanceUID, before.SOPInstanceUID)


def test_dicom_only_run_points_records_at_dicom_files(pipe128, tmp_path, capsys):
    out = tmp_path / "dcm"
    _run(pipe128, out, image_format="dicom")
    recs = read_manifest(out / "manifest.jsonl")
    assert all(r.image.endswith(".dcm") for r in recs) and not list((out / "images").glob("*.png"))
    assert all(r.provenance["watermark"]["payload"] for r in recs)  # read back from the DICOM private block


def test_cli_format_and_watermark_options(tiny_pipeline_dir, tmp_path):
    out = tmp_path / "cli"
    assert main(["generate", "Small effusion.", "--model", str(tiny_pipeline_dir), "--out", str(out), "--steps",
                 "1", "--no-progress", "--no-watermark", "--format", "both"]) == 0
    (rec,) = read_manifest(out / "manifest.jsonl")
    assert rec.provenance["watermark"] == {"enabled": False} and (out / rec.extra["dicom"]).is_file()
    assert '"enabled": false' in read_png_text(out / rec.image)["chexgen:provenance"]
    # settings include format and watermark: a rerun with the watermark on is a different run
    assert main(["generate", "Small effusion.", "--model", str(tiny_pipeline_dir), "--out", str(out), "--steps",
                 "1", "--no-progress", "--format", "both"]) == 2
