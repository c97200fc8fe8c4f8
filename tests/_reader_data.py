"""Tiny real and synthetic manifests for the reader-study tests and benchmark (not a test module)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chexgen.data.imageio import save_png
from chexgen.data.manifest import write_manifest

FINDINGS = [
    ({"No Finding": 1}, "No acute cardiopulmonary process."),
    ({"Pleural Effusion": 1}, "Large right pleural effusion."),
    ({"Cardiomegaly": 1, "Edema": 1}, "Cardiomegaly with mild pulmonary edema."),
    ({"Consolidation": 1, "Pneumonia": 1}, "Left upper lobe consolidation, likely pneumonia."),
    ({"Pneumothorax": 1}, "Small left apical pneumothorax."),
    ({"Atelectasis": 1, "Pleural Effusion": 1}, "Bibasilar atelectasis and small effusions."),
]


def _image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = 0.5 + 0.3 * np.sin(xx / (3 + rng.random() * 4)) * np.cos(yy / (3 + rng.random() * 4))
    return np.clip(img + 0.05 * rng.standard_normal((h, w)), 0, 1)


def make_manifests(root: Path, n_real: int = 12, models: tuple[str, ...] = ("alpha", "beta"),
                   seeds_per_case: int = 1, seed: int = 0) -> tuple[Path, list[Path]]:
    """A real manifest of ``n_real`` records (16-bit, non-square PNGs with reports) and one synthetic
    manifest per model (8-bit 32x32 PNGs marked ``chexgen:synthetic`` in text chunks, matched by source id)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "real").mkdir(exist_ok=True)
    real = []
    for i in range(n_real):
        labels, text = FINDINGS[i % len(FINDINGS)]
        name = f"real/r{i:03d}.png"
        save_png(root / name, _image(rng, 40, 48), bits=16)
        real.append({"id": f"real-{i:03d}", "image": name, "impression": text, "labels": labels,
                     "dataset": "tiny", "split": "test", "view": "PA"})
    real_path = root / "real.jsonl"
    write_manifest(real_path, real)
    syn_paths = []
    for m in models:
        (root / m).mkdir(exist_ok=True)
        recs = []
        for i in range(n_real):
            labels, text = FINDINGS[i % len(FINDINGS)]
            for k in range(seeds_per_case):
                name = f"{m}/syn-{i:03d}-{k}.png"
                save_png(root / name, _image(rng, 32, 32), bits=8,
                         text={"chexgen:synthetic": "true", "chexgen:model": m, "chexgen:source": f"real-{i:03d}"})
                recs.append({"id": f"{m}-{i:03d}-{k}", "image": name, "synthetic": True, "impression": text,
                             "labels": labels, "provenance": {"model": m, "prompt": text, "seed": k},
                             "extra": {"source_id": f"real-{i:03d}"}})
        p = root / f"{m}.jsonl"
        write_manifest(p, recs)
        syn_paths.append(p)
    return real_path, syn_paths


def create_tiny_study(root: Path, raters: tuple[str, ...] = ("ann", "bob"), cases: int = 6, image_size: int = 64,
                      models: tuple[str, ...] = ("alpha", "beta"), token_days: float = 30.0,
                      db_url: str | None = None, **settings):
    """Manifests under ``root/data`` and a study at ``root/study``; returns (Study, tokens)."""
    from chexgen.reader_study.study import StudySettings, SyntheticSource, create_study

    real, syn = make_manifests(root / "data", models=models)
    s = StudySettings(real=str(real), synthetic=[SyntheticSource(str(p), m) for p, m in zip(syn, models)],
                      raters=list(raters), cases=cases, image_size=image_size, **settings)
    made = create_study(s, root / "study", db_url=db_url, token_days=token_days, progress=False)
    return made.study, made.tokens


def login(client, token: str):
    """Log a TestClient / httpx client in with an invite token; returns the CSRF token of the reading page."""
    import re

    r = client.post("/login", data={"token": token}, follow_redirects=False)
    assert r.status_code == 303, r.text
    page = client.get("/read")
    m = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.text)
    return m.group(1) if m else None


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(study_root: Path, port: int, log_path: Path, timeout: float = 30.0):
    """``chexgen reader-study serve`` in a subprocess on 127.0.0.1:port; returns the Popen once /healthz answers."""
    import os
    import subprocess
    import sys
    import time

    import httpx

    import chexgen

    env = dict(os.environ)
    src = str(Path(chexgen.__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log = open(log_path, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "chexgen.cli", "reader-study", "serve", str(study_root),
                             "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {Path(log_path).read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not start in {timeout}s: {Path(log_path).read_text()[-2000:]}")


def stop_server(proc) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except Exception:
            proc.kill()
            proc.wait(10)
