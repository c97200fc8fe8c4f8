"""Record the bundled model's text-to-image reference images (tests/data/bundled_text_reference.npy).

``tests/test_engine.py`` checks that the bundled model still gives bitwise these images (IDDPM, 8
steps, fp32, 2 threads, denormals kept). The file beside it, ``bundled_text_reference.json``, holds
the SHA-256 of the transformer and VAE weights the images were made with, so that a failing test
says whether the weights or the code changed. Rerun this only when the bundled weights change on purpose
(``scripts/train_demo_model.sh``), never to make a code change pass:

    python scripts/record_bundled_reference.py
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "src" / "chexgen" / "assets" / "demo" / "pipeline"
OUT = ROOT / "tests" / "data" / "bundled_text_reference.npy"
PROMPTS = ["Moderate right pleural effusion.", "No acute cardiopulmonary process."]
SETTINGS = dict(num_images_per_prompt=2, seed=123, sampler="iddpm", num_inference_steps=8, batch_size=4)


def weights_sha256(pipeline: Path = BUNDLED, part: str = "transformer") -> str:
    """SHA-256 of the weight file of ``part`` (``transformer`` or ``vae``)."""
    return hashlib.sha256((pipeline / part / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()


def render() -> np.ndarray:
    """The reference images, in the numeric environment the test uses."""
    from chexgen.pipelines import ChexGenPipeline

    threads = torch.get_num_threads()
    torch.set_flush_denormal(False)
    torch.set_num_threads(2)
    try:
        pipe = ChexGenPipeline.from_pretrained(BUNDLED)
        return pipe(PROMPTS, progress=False, **SETTINGS).images.numpy()
    finally:
        torch.set_num_threads(threads)


def main() -> int:
    images = render()
    np.save(OUT, images)
    OUT.with_suffix(".json").write_text(json.dumps({"transformer_sha256": weights_sha256(),
                                                    "vae_sha256": weights_sha256(part="vae"), "prompts": PROMPTS,
                                                    **SETTINGS}, indent=2) + "\n")
    print(f"wrote {OUT} {images.shape} and {OUT.with_suffix('.json').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
