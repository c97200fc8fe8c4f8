"""Synthetic Secondary Capture DICOM: attributes, deterministic unique UIDs, exact pixels, validator, export."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from _release_data import provenance, rg1_unci, write_synthetic_set

from chexgen.cli import main
from chexgen.data.manifest import Record, read_manifest, write_manifest
from chexgen.release.dicom import (
    PRIVATE_CREATOR,
    derive_uids,
    read_dicom_pixels,
    read_dicom_provenance,
    write_synthetic_dicom,
)


def _pixels(dtype, seed=0):
    rng = np.random.default_rng(seed)
    hi = np.iinfo(dtype).max
    return rng.integers(0, hi + 1, size=(64, 80), dtype=np.int64).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_attributes_and_exact_round_trip(tmp_path, dtype):
    a = _pixels(dtype)
    prov = {**provenance("sex:Male, age:71.0, race:Black. small left effusion", 3),
            "watermark": {"payload": "chexgen:abcdef:012345"}}
    rec = Record(id="syn_1", sex="F", age=54.0, view="PA", synthetic=True)
    path = write_synthetic_dicom(tmp_path / "a.dcm", a, prov, record=rec)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and ds.ConversionType == "SYN"
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.SamplesPerPixel == 1
    assert ds.BitsAllocated == ds.BitsStored == 8 * np.dtype(dtype).itemsize
    assert str(ds.PatientName) == "SYNTHETIC^CHEXGEN" and ds.PatientID.startswith("SYN-")
    assert ds.PatientSex == "F" and ds.PatientAge == "054Y"  # the record's demographics win over the prompt's
    assert "PixelSpacing" not in ds and "unknown" in ds.ImageComments.lower()
    assert "small left effusion" in ds.ImageComments and "SYNTHETIC" in ds.ImageComments
    assert "StudyDate" not in ds or not ds.StudyDate
    info = read_dicom_provenance(path)
    assert info["synthetic"] and info["provenance"] == prov and info["payload"] == "chexgen:abcdef:012345"
    assert ds.private_block(0x0071, PRIVATE_CREATOR)[0x01].VR == "UT"
    back = read_dicom_pixels(path)
    assert back.dtype == dtype and np.array_equal(back, a)
    import highdicom

    assert np.array_equal(highdicom.imread(str(path)).get_frame(1), a)


def test_demographics_from_the_prompt_when_no_record(tmp_path):
    path = write_synthetic_dicom(tmp_path / "b.dcm", _pixels(np.uint8), provenance("sex:Male, age:71.0. x", 1))
    ds = pydicom.dcmread(path)
    assert ds.PatientSex == "M" and ds.PatientAge == "071Y"
    none = pydicom.dcmread(write_synthetic_dicom(tmp_path / "c.dcm", _pixels(np.uint8), provenance("normal", 1)))
    assert not none.get("PatientSex") and "PatientAge" not in none


def test_uids_deterministic_unique_and_never_copied(tmp_path):
    a = _pixels(np.uint8)
    p1, p2 = provenance("prompt one", 1), provenance("prompt one", 2)
    first = pydicom.dcmread(write_synthetic_dicom(tmp_path / "1.dcm", a, p1))
    again = pydicom.dcmread(write_synthetic_dicom(tmp_path / "1b.dcm", a, dict(p1)))
    other_seed = pydicom.dcmread(write_synthetic_dicom(tmp_path / "2.dcm", a, p2))
    other_prompt = pydicom.dcmread(write_synthetic_dicom(tmp_path / "3.dcm", a, provenance("prompt two", 1)))
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert first[key].value == again[key].value  # rerun: same UIDs
        assert len(first[key].value) <= 64 and first[key].value.startswith("2.25.")
    # one study per prompt: same study, different instances for two seeds; another prompt is another study
    assert first.StudyInstanceUID == other_seed.StudyInstanceUID
    assert first.SOPInstanceUID != other_seed.SOPInstanceUID
    assert other_prompt.StudyInstanceUID != first.StudyInstanceUID
    assert other_prompt.PatientID != first.PatientID
    # a synthetic image made from a real study never carries that study's UIDs
    real = pydicom.dcmread(rg1_unci(), stop_before_pixels=True)
    rec = Record(id="syn", synthetic=True, study_id=str(real.StudyInstanceUID),
                 extra={"source_id": "sh1:" + "0" * 24})
    made = pydicom.dcmread(write_synthetic_dicom(tmp_path / "4.dcm", a, p1, record=rec))
    real_uids = {str(real.StudyInstanceUID), str(real.SeriesInstanceUID), str(real.SOPInstanceUID)}
    assert not real_uids & {made.StudyInstanceUID, made.SeriesInstanceUID, made.SOPInstanceUID}
    assert str(real.StudyInstanceUID) not in str(made)
    uids = derive_uids(p1, study_key="run-1")
    assert uids["study"] != derive_uids(p1)["study"] and uids["instance"] != uids["study"]


def _dciodvfy():
    exe = shutil.which("dciodvfy")
    if exe is None:
        import os

        if os.environ.get("CI"):
            pytest.fail("dciodvfy missing in CI (apt-get install dicom3tools)")
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    return exe


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_passes_dciodvfy(tmp_path, dtype):
    exe = _dciodvfy()
    path = write_synthetic_dicom(tmp_path / "v.dcm", _pixels(dtype), provenance("sex:Female, age:33.0. x", 5),
                                 record=Record(id="r", sex="F", age=33.0, view="PA", synthetic=True))
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    assert "SCImage" in text
    errors = [line for line in text.splitlines() if line.startswith("Error")]
    assert errors == [], text


def test_export_dicom_skips_non_synthetic_and_missing(tmp_path, capsys):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (64, 64)).astype(np.uint8) for _ in range(3)]
    manifest = write_synthetic_set(tmp_path / "syn", imgs, watermark=[False] * 3)
    recs = read_manifest(manifest)
    recs[1].synthetic = False  # a real record in a synthetic set
    recs[2].image = "images/gone.png"
    write_manifest(manifest, recs)
    rc = main(["export-dicom", str(manifest), "--out", str(tmp_path / "dcm"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "syn_0001" in out and "not a synthetic record" in out
    assert "syn_0002" in out and "image not found" in out
    exported = read_manifest(tmp_path / "dcm" / "manifest.jsonl")
    assert [r.id for r in exported] == ["syn_0000"]
    dcm = tmp_path / "dcm" / exported[0].image
    assert np.array_equal(read_dicom_pixels(dcm), imgs[0])
    ds = pydicom.dcmread(dcm)
    assert ds.PatientSex == "F" and ds.ConversionType == "SYN"
    assert not (tmp_path / "dcm" / "images" / "syn_0001.dcm").exists()
    # rerun: same UID already there -> kept, not rewritten
    rc = main(["export-dicom", str(manifest), "--out", str(tmp_path / "dcm"), "--no-progress"])
    assert "1 already there" in capsys.readouterr().out
