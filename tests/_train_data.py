"""Tiny synthetic training data shared by the training / prepare tests (not a test module)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from chexgen.data.imageio import save_png

CAPTIONS = [
    "No acute cardiopulmonary process.",
    "Large right pleural effusion.",
    "Cardiomegaly with mild pulmonary edema.",
    "Left upper lobe consolidation.",
    "Small left pneumothorax.",
    "Clear lungs. Normal heart size.",
    "Bilateral lower lobe atelectasis.",
    "Right middle lobe pneumonia.",
]


def chest_like(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth gray image with two dark 'lungs' and a bright 'heart' at random offsets."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.75 - 0.2 * yy
    for cx in (0.3, 0.7):
        cx += rng.uniform(-0.05, 0.05)
        img -= 0.45 * (((xx - cx) / 0.17) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1)
    img += 0.3 * (((xx - 0.55) / 0.12) ** 2 + ((yy - 0.65) / 0.1) ** 2 < 1) * rng.uniform(0.5, 1.0)
    return np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1).astype(np.float32)


def make_dataset(root: Path, n: int = 8, size: int = 64, corrupt: int = 0, seed: int = 0) -> Path:
    """Write n PNGs (+ `corrupt` unreadable files) and a JSONL manifest; returns the manifest path."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        save_png(root / "images" / f"img{i}.png", chest_like(rng, size + 8 * (i % 2)))  # non-square-free sizes
        lines.append({"id": f"r{i}", "image": f"images/img{i}.png", "impression": CAPTIONS[i % len(CAPTIONS)]})
    for j in range(corrupt):
        bad = root / "images" / f"bad{j}.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
        lines.append({"id": f"bad{j}", "image": f"images/bad{j}.png", "impression": "Truncated file."})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(d) + "\n" for d in lines))
    return manifest


def save_tiny_vae(path: Path) -> Path:
    """A random 1-channel VAE with 8x downsampling and few channels (fast on CPU)."""
    from chexgen.models.vae import RadiographVAE, build_gray_autoencoder

    torch.manual_seed(0)
    RadiographVAE(build_gray_autoencoder((8, 16, 16, 16), 4, norm_num_groups=8)).save_pretrained(path)
    return path


def prepare_tiny_cache(root: Path, resolution: int) -> tuple[Path, Path, Path]:
    """(manifest, VAE folder, cache folder): 8 images and the tiny VAE under ``root``, cached by ``chexgen prepare``."""
    from chexgen.cli import main

    manifest = make_dataset(root / "data", n=8, size=40)
    vae_dir = save_tiny_vae(root / "vae")
    cache = root / "cache"
    assert main(["prepare", str(manifest), "--out", str(cache), "--vae", str(vae_dir), "--resolution",
                 str(resolution), "--num-workers", "0", "--no-progress"]) == 0
    return manifest, vae_dir, cache


TINY_DIT = "{depth: 2, hidden_size: 64, num_heads: 2}"


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine run ~10x faster on one thread (no spinning on busy cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
