"""Which backend drives a model: told (``--backend``) or read off the folder / hub id.

* a folder with ``chexgen_config.json``: a chexgen pipeline (trained, bundled or converted official);
* a folder with ``model_index.json``, or a hub id (``owner/name``): a diffusers pipeline;
* a folder with ``configs/inference.json``: a MONAI bundle, refused with the reason below.

Why MONAI model-zoo bundles (``cxr_image_synthesis_latent_diffusion_model``) are not a backend: the
bundle is not data a loader can read but a program. ``configs/inference.json`` builds its networks,
text encoder and noise with ``$``-prefixed Python expressions (including
``CLIPTextModel.from_pretrained("stabilityai/stable-diffusion-2-1-base")``, a hub download), the
weights in ``models/*.pth`` are state dicts of MONAI's own ``AutoencoderKL`` / ``DiffusionModelUNet``
that need MONAI's ``load_old_state_dict`` key remapping from the retired GenerativeModels layout,
and the sampling loop itself, with constants that decide the pixels (latent scale factor 0.3,
the guidance batching), lives in the bundle's ``scripts/sampler.py``. Supporting it means running
the bundle's code or copying constants out of it: exactly the MONAI-specific special-casing this
interface avoids. Run the bundle with MONAI (``python -m monai.bundle run ...``), write the images
with a manifest, and evaluate them with ``chexgen evaluate``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from chexgen.errors import ChexgenError

__all__ = ["BACKENDS", "ModelSource", "detect_backend", "MONAI_UNSUPPORTED"]

BACKENDS = ("chexgen", "diffusers", "monai")

MONAI_UNSUPPORTED = (
    "MONAI bundles cannot be driven by chexgen: the bundle's configs/inference.json builds its networks and text "
    "encoder with Python expressions, its models/*.pth need MONAI's old-layout key remapping, and its sampler "
    "(latent scale factor, guidance) is code in scripts/sampler.py; run it with `python -m monai.bundle run` and "
    "evaluate the images with `chexgen evaluate` (see chexgen.generation.backends.select)"
)


@dataclass(frozen=True)
class ModelSource:
    """A model and the backend that drives it; ``diffusers`` holds the checked diffusers source."""

    backend: str
    model: str
    diffusers: object | None = None  # DiffusersModelRef


def _kind_of_folder(path: Path) -> str | None:
    if (path / "chexgen_config.json").is_file():
        return "chexgen"
    if (path / "model_index.json").is_file():
        return "diffusers"
    if (path / "configs" / "inference.json").is_file() or (path / "configs" / "metadata.json").is_file():
        return "monai"
    return None


def detect_backend(model: "str | os.PathLike", backend: str | None = None, revision: str | None = None
                   ) -> ModelSource:
    """The backend for ``model`` (``backend`` forces one; a mismatch with the folder is an error).

    Checks everything that can be checked without loading weights (folder layout, hub cache when
    offline, pipeline class); raises :class:`ChexgenError` with one line otherwise.
    """
    from chexgen.generation.backends.diffusers import is_hub_id, resolve_diffusers_model

    if backend is not None and backend not in BACKENDS:
        raise ChexgenError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    source = str(model)
    path = Path(source).expanduser()
    found = _kind_of_folder(path) if path.is_dir() else None
    if path.is_dir() and found is None:
        raise ChexgenError(f"{path}: neither a chexgen pipeline (chexgen_config.json), a diffusers pipeline "
                           "(model_index.json) nor a MONAI bundle (configs/inference.json)")
    if not path.exists() and not is_hub_id(source):
        raise ChexgenError(f"model {source} does not exist (expected a pipeline folder or a hub id such as "
                           "stanfordmimi/RoentGen-v2)")
    if path.exists() and not path.is_dir():
        raise ChexgenError(f"model {source} is a file; expected a pipeline folder or a hub id")
    kind = found or "diffusers"  # a hub id
    if backend is not None and backend != kind:
        what = {"chexgen": "a chexgen pipeline folder (chexgen_config.json)",
                "diffusers": "a diffusers pipeline (model_index.json or a hub id)",
                "monai": "a MONAI bundle (configs/inference.json)"}
        raise ChexgenError(f"--backend {backend}: {source} is {what[kind]}, not {what[backend]}")
    if kind == "monai":
        raise ChexgenError(f"{source}: {MONAI_UNSUPPORTED}")
    if kind == "diffusers":
        return ModelSource("diffusers", source, resolve_diffusers_model(source, revision=revision))
    return ModelSource("chexgen", source)
