"""Synthetic radiographs as DICOM Secondary Capture images that cannot pass for real ones.

Written with highdicom's :class:`highdicom.sc.SCImage` (the Secondary Capture
IOD the standard recommends for generated images). highdicom fixes a few
attributes that a synthetic image must carry differently, so these are set
with pydicom on the dataset it builds:

* ConversionType (0008,0064) ``SYN`` (highdicom always writes ``DI``);
* ImageType ``DERIVED\\SECONDARY`` (highdicom adds ``OTHER``);
* PatientAge, ImageComments, BurnedInAnnotation, the SC equipment attributes;
* a private block, creator ``CHEXGEN SYNTHETIC 1``, in group 0x0071:
  ``(0071,xx01)`` UT the full provenance JSON, ``(0071,xx02)`` LO the
  watermark payload, ``(0071,xx03)`` CS ``SYNTHETIC``.

UIDs are derived, never random and never copied: a name-based UUID (version
5) of a hash of the inputs under the ``2.25.`` arc (DICOM PS3.5 B.2, which
needs no registered root; pydicom's ``generate_uid(prefix=None)`` would be
random). Study UID from
the *study key*, series UID from the study key plus the model and sampler
settings, instance UID from the whole provenance; so a rerun of the same image
gets the same UIDs, and different images different ones.

**One study per prompt.** The study key defaults to the prompt plus the
checkpoint hash; the generation engine passes its own key (one per prompt of
a run). PatientName is ``SYNTHETIC^CHEXGEN``, PatientID ``SYN-`` plus a hash
of the study key (one synthetic "patient" per study); PatientSex and
PatientAge come from the record's demographics, else from a chexgen
demographic prompt (``sex:Male, age:71.0, ...``), else they stay empty.
StudyDate / StudyTime stay empty (no date is invented or copied). Pixel
spacing is unknown and so left out (PixelSpacing absent; ImageComments says
so). Modality is ``OT`` (highdicom's fixed value for SC; a generated image has
no acquisition modality); PhotometricInterpretation ``MONOCHROME2``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from chexgen.errors import ChexgenError
from chexgen.utils import atomic_path

__all__ = [
    "write_synthetic_dicom",
    "read_dicom_pixels",
    "read_dicom_provenance",
    "read_dicom_dataset",
    "dicom_pixels",
    "dicom_marking",
    "derive_uids",
    "default_study_key",
    "PRIVATE_CREATOR",
    "PRIVATE_GROUP",
    "SYNTHETIC_PATIENT_NAME",
]

PRIVATE_CREATOR = "CHEXGEN SYNTHETIC 1"
PRIVATE_GROUP = 0x0071
SYNTHETIC_PATIENT_NAME = "SYNTHETIC^CHEXGEN"
_VOLATILE = ("created", "timestamp", "elapsed_s")  # provenance keys that do not define the image
_SEX_DICOM = {"M": "M", "F": "F", "O": "O", "male": "M", "female": "F", "other": "O"}
_PROMPT_SEX = re.compile(r"\bsex:\s*(male|female|other|m|f|o)\b", re.I)
_PROMPT_AGE = re.compile(r"\bage:\s*([0-9]+(?:\.[0-9]+)?)", re.I)


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "chexgen synthetic radiograph v1")


def _uid(*parts: str) -> str:
    # A name-based (SHA-1, version 5) UUID of the parts under the UUID arc 2.25 (DICOM PS3.5 B.2): no
    # registered root needed, at most 44 characters, and the same parts always give the same UID.
    return "2.25." + str(uuid.uuid5(_UID_NAMESPACE, "\x1f".join(parts)).int)


def default_study_key(provenance: dict) -> str:
    """The study grouping when the caller gives none: one study per prompt (and checkpoint)."""
    return _canonical({"prompt": provenance.get("prompt"), "checkpoint": provenance.get("checkpoint_sha256")})


def derive_uids(provenance: dict, study_key: str | None = None) -> dict[str, str]:
    """Study / series / SOP instance UIDs derived from the provenance (deterministic, ``2.25.`` root)."""
    key = study_key if study_key is not None else default_study_key(provenance)
    stable = {k: v for k, v in provenance.items() if k not in _VOLATILE}
    series = {k: stable.get(k) for k in ("model", "checkpoint_sha256", "sampler", "steps", "guidance",
                                          "control_model", "control_sha256", "conditioning_scale")}
    return {
        "study": _uid("study", key),
        "series": _uid("series", key, _canonical(series)),
        "instance": _uid("instance", key, _canonical(stable)),
        "patient_id": "SYN-" + hashlib.sha256(("patient" + key).encode()).hexdigest()[:12].upper(),
        "study_id": "SYN" + hashlib.sha256(("study-id" + key).encode()).hexdigest()[:10].upper(),  # SH: 16 chars
    }


def _demographics(provenance: dict, record) -> tuple[str | None, str | None]:
    sex = getattr(record, "sex", None) if record is not None else None
    age = getattr(record, "age", None) if record is not None else None
    prompt = str(provenance.get("prompt") or "")
    if sex is None and (m := _PROMPT_SEX.search(prompt)):
        sex = m.group(1)
    if age is None and (m := _PROMPT_AGE.search(prompt)):
        age = float(m.group(1))
    dsex = _SEX_DICOM.get(str(sex), _SEX_DICOM.get(str(sex).lower())) if sex is not None else None
    dage = None
    if age is not None and 0 <= float(age) < 1000:
        dage = f"{int(float(age)):03d}Y"
    return dsex, dage


def _comments(provenance: dict) -> str:
    keys = ("model", "checkpoint_sha256", "seed", "sampler", "steps", "guidance", "control_model",
            "condition_id", "chexgen_version")
    settings = "; ".join(f"{k}={provenance[k]}" for k in keys if provenance.get(k) is not None)
    text = (f"SYNTHETIC IMAGE generated by chexgen; not a radiograph of a real patient. "
            f"Pixel spacing unknown. Prompt: {provenance.get('prompt', '')} | {settings}")
    return text[:10240]  # LT holds at most 10240 characters; the full JSON is in the private block


def _orientation(record) -> tuple[str, str]:
    view = getattr(record, "view", None) if record is not None else None
    # Radiographs are displayed with the patient's right on the viewer's left (frontal) and, for laterals,
    # facing left; rows run towards the patient's left (or posterior), columns towards the feet.
    return ("P", "F") if view in ("LAT", "LL") else ("L", "F")


def require_dicom_writer() -> None:
    """Fail with one line naming the extra when highdicom (the ``release`` extra) is missing."""
    try:
        import highdicom  # noqa: F401
    except ImportError:
        raise ChexgenError("DICOM output needs highdicom: pip install 'chexgen[release]'") from None


def write_synthetic_dicom(
    path: str | os.PathLike,
    pixels: np.ndarray,
    provenance: dict,
    record=None,
    study_key: str | None = None,
) -> Path:
    """Write ``pixels`` ((H, W) uint8 or uint16) as a synthetic Secondary Capture DICOM, atomically.

    ``provenance`` is the generation provenance dict (its ``watermark`` entry, when present, goes into the
    private block); ``record`` (a :class:`chexgen.data.manifest.Record`) gives demographics and view;
    ``study_key`` groups images into one study (default: one per prompt, see the module doc).
    """
    try:
        import highdicom as hd
    except ImportError:
        raise ChexgenError("DICOM output needs highdicom: pip install 'chexgen[release]'") from None

    arr = np.asarray(pixels)
    if arr.ndim != 2 or arr.dtype not in (np.uint8, np.uint16):
        raise ChexgenError(f"{path}: expected (H, W) uint8 or uint16 pixels, got {arr.dtype} {arr.shape}")
    if not isinstance(provenance, dict):
        raise ChexgenError(f"{path}: provenance must be a dict, got {type(provenance).__name__}")
    uids = derive_uids(provenance, study_key)
    sex, age = _demographics(provenance, record)
    seed = provenance.get("seed")
    instance_number = int(seed) % (2**31 - 1) + 1 if isinstance(seed, int) and seed >= 0 else 1
    version = str(provenance.get("chexgen_version") or "")
    ds = hd.sc.SCImage(
        pixel_array=np.ascontiguousarray(arr),
        photometric_interpretation="MONOCHROME2",
        bits_allocated=8 * arr.dtype.itemsize,
        coordinate_system="PATIENT",
        study_instance_uid=uids["study"],
        series_instance_uid=uids["series"],
        series_number=1,
        sop_instance_uid=uids["instance"],
        instance_number=instance_number,
        manufacturer="chexgen",
        patient_id=uids["patient_id"],
        patient_name=SYNTHETIC_PATIENT_NAME,
        patient_sex=sex,
        patient_orientation=_orientation(record),
        study_id=uids["study_id"],
        series_description="chexgen synthetic radiographs",
        manufacturer_model_name=str(provenance.get("model") or "chexgen")[:64],
        software_versions=f"chexgen {version}".strip(),
    )
    # What highdicom fixes differently for SC (see module doc), set with pydicom:
    ds.ConversionType = "SYN"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    if age is not None:
        ds.PatientAge = age
    ds.ImageComments = _comments(provenance)
    ds.BurnedInAnnotation = "NO"
    ds.BodyPartExamined = "CHEST"  # unpaired: so General Series Laterality (type 2C) is rightly absent
    ds.SecondaryCaptureDeviceManufacturer = "chexgen"
    ds.SecondaryCaptureDeviceManufacturerModelName = str(provenance.get("model") or "chexgen")[:64]
    ds.SecondaryCaptureDeviceSoftwareVersions = f"chexgen {version}".strip()
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "UT", _canonical(provenance))
    payload = (provenance.get("watermark") or {}).get("payload") if isinstance(provenance.get("watermark"),
                                                                                 dict) else None
    if payload:
        block.add_new(0x02, "LO", str(payload)[:64])
    block.add_new(0x03, "CS", "SYNTHETIC")
    path = Path(path)
    with atomic_path(path, suffix=".dcm") as tmp:
        ds.save_as(str(tmp), enforce_file_format=True)
    return path


def read_dicom_dataset(path: str | os.PathLike):
    """The pydicom dataset of ``path``; :class:`ChexgenError` naming the file if it is missing or broken."""
    import pydicom

    p = Path(path)
    if not p.is_file():
        raise ChexgenError(f"{p}: DICOM file not found")
    try:
        return pydicom.dcmread(str(p))
    except Exception as e:  # pydicom raises many types for broken files
        raise ChexgenError(f"{p}: cannot read DICOM ({type(e).__name__}: {e})") from None


def dicom_pixels(ds, where: str | os.PathLike = "<dataset>") -> np.ndarray:
    """The stored pixel values of a single-frame gray dataset, unchanged (no LUT, no inversion)."""
    if "PixelData" not in ds:
        raise ChexgenError(f"{where}: DICOM file has no pixel data")
    if int(getattr(ds, "SamplesPerPixel", 1)) != 1:
        raise ChexgenError(f"{where}: expected a gray image, got SamplesPerPixel={ds.SamplesPerPixel}")
    try:
        arr = ds.pixel_array
    except Exception as e:
        raise ChexgenError(f"{where}: cannot decode pixel data ({type(e).__name__}: {e})") from None
    return arr[0] if arr.ndim == 3 else arr


def read_dicom_pixels(path: str | os.PathLike) -> np.ndarray:
    """The stored pixel values of a single-frame gray DICOM file, unchanged (no LUT, no inversion)."""
    return dicom_pixels(read_dicom_dataset(path), path)


def dicom_marking(ds, where: str | os.PathLike = "<dataset>") -> dict[str, Any]:
    """chexgen's marking of a dataset: ``{"synthetic", "provenance", "payload", "conversion_type",
    "image_type", "patient_name"}``; ``synthetic`` needs ConversionType SYN and chexgen's private marker."""
    out: dict[str, Any] = {"synthetic": False, "provenance": None, "payload": None,
                           "conversion_type": str(getattr(ds, "ConversionType", "") or ""),
                           "image_type": [str(v) for v in (getattr(ds, "ImageType", None) or [])],
                           "patient_name": str(getattr(ds, "PatientName", "") or "")}
    try:
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    except KeyError:
        return out
    marker = None
    for offset, key in ((0x01, "provenance"), (0x02, "payload"), (0x03, "marker")):
        if offset in block:
            value = block[offset].value
            if key == "marker":
                marker = value
            else:
                out[key] = value
    if isinstance(out["provenance"], str):
        try:
            out["provenance"] = json.loads(out["provenance"])
        except json.JSONDecodeError:
            raise ChexgenError(f"{where}: chexgen private block holds invalid provenance JSON") from None
    out["synthetic"] = marker == "SYNTHETIC" and out["conversion_type"] == "SYN"
    return out


def read_dicom_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """:func:`dicom_marking` of a DICOM file."""
    return dicom_marking(read_dicom_dataset(path), path)
