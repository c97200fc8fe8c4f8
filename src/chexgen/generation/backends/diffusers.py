"""Any diffusers text-to-image pipeline (by hub id or local folder) as a generator backend.

Stable-Diffusion-style pipelines (RoentGen, RoentGen-v2 ``stanfordmimi/RoentGen-v2``), PixArt-alpha /
PixArt-Sigma and Sana all load through ``DiffusionPipeline.from_pretrained`` and run with:

* their own scheduler (``scheduler/scheduler_config.json``) and the defaults their pipeline
  documents in its call signature (e.g. Stable Diffusion 50 steps, guidance 7.5, no negative
  prompt; PixArt / Sana 20 steps, guidance 4.5, empty negative prompt), unless overridden;
* the square size the denoiser was trained at (``sample_size`` x the VAE factor) unless given;
  PixArt / Sana resolution binning is switched off so the requested square is what is made;
* one CPU ``torch.Generator`` per image (diffusers takes a list), so an image's noise comes from its
  seed alone, on any device;
* RGB output made gray by ITU-R BT.601 luma, ``0.299 R + 0.587 G + 0.114 B``: the conversion PIL's
  ``Image.convert("L")`` applies, so chexgen's gray image is what a user of the model card gets by
  converting its output (CXR models give near-equal channels, where luma and the mean agree).

Before anything is loaded, :func:`resolve_diffusers_model` checks the source: a local folder needs
``model_index.json``; a hub id needs a local copy in the Hugging Face cache when offline
(``HF_HUB_OFFLINE=1``); the pipeline class must be one diffusers lists as text-to-image. Provenance
records the backend, model, hub revision (commit) or the SHA-256 of the folder's weight files,
pipeline and scheduler classes, steps, guidance, negative prompt, size and dtype.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from chexgen.errors import ChexgenError
from chexgen.generation.backends.base import GeneratedBatch, GeneratorBackend

__all__ = ["DiffusersModelRef", "DiffusersBackend", "resolve_diffusers_model", "is_hub_id", "hf_offline",
           "rgb_to_gray", "LUMA_BT601", "check_call_settings", "parse_dtype", "diffusers_dtype", "weights_sha256"]

log = logging.getLogger(__name__)

LUMA_BT601 = (0.299, 0.587, 0.114)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
# call arguments that make a pipeline image-conditioned rather than text-to-image
_IMAGE_INPUTS = ("image", "control_image", "mask_image")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_hub_id(text: str) -> bool:
    """Whether ``text`` reads as a Hugging Face hub id (``owner/name``)."""
    return bool(_HUB_ID.match(str(text))) and ".." not in str(text)


def hf_offline() -> bool:
    """Whether the Hugging Face hub may not be contacted (``HF_HUB_OFFLINE`` set)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return env or bool(getattr(constants, "HF_HUB_OFFLINE", False))


@dataclass(frozen=True)
class DiffusersModelRef:
    """A checked diffusers pipeline source: where it is and what it is (nothing loaded yet)."""

    source: str  # as given: a folder or a hub id
    path: Path  # the folder holding model_index.json (a cache snapshot for hub ids)
    pipeline_class: str
    hub_id: str | None = None
    revision: str | None = None  # hub commit of the snapshot


def _read_index(path: Path, where: str) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ChexgenError(f"{where}: unreadable model_index.json ({err})") from None
    if not isinstance(index, dict) or not isinstance(index.get("_class_name"), str):
        raise ChexgenError(f"{where}: model_index.json has no _class_name (not a diffusers pipeline)")
    return index


def _check_text_to_image(class_name: str, where: str) -> None:
    import diffusers
    from diffusers.pipelines.auto_pipeline import AUTO_TEXT2IMAGE_PIPELINES_MAPPING

    cls = getattr(diffusers, class_name, None)
    if cls is None:
        raise ChexgenError(f"{where}: pipeline class {class_name} is not in diffusers {diffusers.__version__}")
    known = {c.__name__ for c in AUTO_TEXT2IMAGE_PIPELINES_MAPPING.values()}
    params = inspect.signature(cls.__call__).parameters
    if class_name not in known or "prompt" not in params or any(p in params for p in _IMAGE_INPUTS):
        raise ChexgenError(f"{where}: {class_name} is not a text-to-image pipeline (chexgen drives the ones "
                           "diffusers' AutoPipelineForText2Image lists, e.g. StableDiffusionPipeline, "
                           "PixArtAlphaPipeline, PixArtSigmaPipeline, SanaPipeline)")


def _cached_index(hub_id: str, revision: str | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub_id, "model_index.json", revision=revision)
    return Path(found) if isinstance(found, str) else None


def resolve_diffusers_model(model: "str | os.PathLike", revision: str | None = None) -> DiffusersModelRef:
    """Check a local pipeline folder or a hub id (see the module docstring); nothing is loaded."""
    source = str(model)
    path = Path(source).expanduser()
    if path.is_dir():
        index_path = path / "model_index.json"
        if not index_path.is_file():
            raise ChexgenError(f"{path}: not a diffusers pipeline folder (no model_index.json)")
        index = _read_index(index_path, str(path))
        _check_text_to_image(index["_class_name"], str(path))
        return DiffusersModelRef(source=source, path=path.resolve(), pipeline_class=index["_class_name"])
    if not is_hub_id(source):
        raise ChexgenError(f"model {source} does not exist (expected a pipeline folder or a hub id such as "
                           "stanfordmimi/RoentGen-v2)")
    index_path = _cached_index(source, revision)
    if index_path is None:
        if hf_offline():
            raise ChexgenError(f"hub model {source} has no local copy in the Hugging Face cache and the hub is "
                               "offline (HF_HUB_OFFLINE=1): download it on a connected machine "
                               f"(`huggingface-cli download {source}`) into HF_HOME, or pass a local folder")
        from huggingface_hub import hf_hub_download

        try:
            index_path = Path(hf_hub_download(source, "model_index.json", revision=revision))
        except Exception as err:  # network / auth / missing-repo errors come as many types
            raise ChexgenError(f"hub model {source}: cannot read its model_index.json ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''})") from None
    index = _read_index(index_path, f"hub model {source}")
    _check_text_to_image(index["_class_name"], f"hub model {source}")
    snapshot = index_path.parent
    return DiffusersModelRef(source=source, path=snapshot, pipeline_class=index["_class_name"], hub_id=source,
                             revision=snapshot.name if snapshot.parent.name == "snapshots" else revision)


def weights_sha256(folder: Path) -> str:
    """SHA-256 over ``relative path:SHA-256`` lines of every weight file in a pipeline folder."""
    from chexgen.utils import sha256_file

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(folder).as_posix()}:{sha256_file(p)}\n".encode())
    return h.hexdigest()


def rgb_to_gray(images: np.ndarray) -> np.ndarray:
    """``[B, H, W, C]`` in [0, 1] -> ``[B, H, W]`` float32: BT.601 luma for RGB, the channel for gray."""
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim == 3:
        return np.clip(arr, 0.0, 1.0)
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise ChexgenError(f"the pipeline returned images of shape {arr.shape}; expected [B, H, W, C]")
    gray = arr[..., 0] if arr.shape[-1] == 1 else arr[..., :3] @ np.asarray(LUMA_BT601, np.float32)
    return np.clip(gray, 0.0, 1.0).astype(np.float32)


def _denoiser(pipe):
    for name in ("unet", "transformer", "prior"):
        module = getattr(pipe, name, None)
        if module is not None:
            return module
    return None


_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}


def parse_dtype(name: str | None):
    """``float32`` (default), ``float16`` or ``bfloat16`` as a torch dtype."""
    import torch

    key = _DTYPES.get(str(name or "float32").lower())
    if key is None:
        raise ChexgenError(f"dtype must be float32, float16 or bfloat16, got {name!r}")
    return getattr(torch, key)


def diffusers_dtype(precision: str, dtype: "str | None", device: str) -> str:
    """The torch dtype name a diffusers pipeline loads in: ``dtype`` if given (the diffusers spelling),
    else ``precision`` resolved for ``device`` as for chexgen models (``auto``: bf16 where fast)."""
    from chexgen.models.precision import resolve_precision

    if dtype is not None:
        return dtype
    return str(resolve_precision(precision, device)).replace("torch.", "")


class DiffusersBackend(GeneratorBackend):
    """A loaded diffusers text-to-image pipeline with resolved call settings (see the module docstring)."""

    name = "diffusers"

    def __init__(self, pipe, ref: DiffusersModelRef, steps: int | None = None, guidance: float | None = None,
                 negative_prompt: str | None = None, resolution: int | None = None,
                 call_kwargs: dict[str, Any] | None = None) -> None:
        self.pipe = pipe
        self.ref = ref
        params = inspect.signature(type(pipe).__call__).parameters
        self._params = params

        def default(key: str, fallback: Any) -> Any:
            p = params.get(key)
            return fallback if p is None or p.default is inspect.Parameter.empty else p.default

        self.steps = _whole("steps", steps if steps is not None else default("num_inference_steps", 50))
        g = guidance if guidance is not None else default("guidance_scale", None)
        if g is None and "guidance_scale" in params:
            raise ChexgenError(f"{ref.pipeline_class} has no default guidance scale; give --guidance")
        self.guidance = None if g is None else _number("guidance", g, minimum=0.0)
        self.negative_prompt = negative_prompt if negative_prompt is not None else default("negative_prompt", None)
        if self.negative_prompt is not None and "negative_prompt" not in params:
            raise ChexgenError(f"{ref.pipeline_class} takes no negative prompt")
        self._resolution = _whole("resolution", resolution if resolution is not None else self._native_size())
        self.call_kwargs = dict(call_kwargs or {})
        self.denoiser = _denoiser(pipe)
        self._weights_sha256: str | None = None
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)

    @classmethod
    def load(cls, ref: DiffusersModelRef, device: str = "cpu", dtype: str | None = None, progress: bool = True,
             **settings: Any) -> "DiffusersBackend":
        """Load ``ref``'s pipeline (offline: from the local copy only) onto ``device`` in ``dtype``."""
        from diffusers import DiffusionPipeline
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        index = _read_index(ref.path / "model_index.json", ref.source)
        from diffusers.utils import deprecation_utils

        # diffusers renamed torch_dtype to dtype (the old name warns); older releases know only torch_dtype
        dtype_key = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
        kw: dict[str, Any] = {dtype_key: parse_dtype(dtype)}
        if index.get("safety_checker") not in (None, [None, None]):
            # an image classifier that blanks "unsafe" natural images: meaningless for radiographs
            kw.update(safety_checker=None, requires_safety_checker=False)
        target = ref.hub_id or str(ref.path)
        if ref.hub_id is not None:
            kw.update(revision=ref.revision, local_files_only=hf_offline())
        bars = (diffusers_logging, transformers_logging) if not progress else ()
        for lib in bars:
            lib.disable_progress_bar()
        try:
            pipe = DiffusionPipeline.from_pretrained(target, **kw)
        except (OSError, ValueError, KeyError, TypeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ChexgenError(f"cannot load diffusers pipeline {ref.source}: {first}") from None
        finally:
            for lib in bars:
                lib.enable_progress_bar()
        pipe.to(device)
        return cls(pipe, ref, **settings)

    # ------------------------------------------------------------------ interface
    def _native_size(self) -> int:
        p = self._params.get("height")
        if p is not None and isinstance(p.default, int):
            return p.default
        den = _denoiser(self.pipe)
        size = getattr(getattr(den, "config", None), "sample_size", None)
        if isinstance(size, (list, tuple)):
            size = size[0]
        factor = getattr(self.pipe, "vae_scale_factor", None)
        if not isinstance(size, int) or not isinstance(factor, (int, float)):
            raise ChexgenError(f"{self.ref.source}: cannot tell the pipeline's image size; give a resolution")
        return int(size * factor)

    @property
    def resolution(self) -> int:
        return self._resolution

    def weights_sha256(self) -> str | None:
        """SHA-256 of a local folder's weight files (hub models are identified by their revision instead)."""
        if self.ref.hub_id is not None:
            return None
        if self._weights_sha256 is None:
            self._weights_sha256 = weights_sha256(self.ref.path)
        return self._weights_sha256

    def settings(self) -> dict[str, Any]:
        dtype = getattr(self.pipe, "dtype", None)
        out: dict[str, Any] = {
            "backend": self.name,
            "model": self.ref.hub_id or str(self.ref.path),
            "pipeline": self.ref.pipeline_class,
            "scheduler": type(self.pipe.scheduler).__name__ if getattr(self.pipe, "scheduler", None) else None,
            "steps": self.steps,
            "guidance": self.guidance,
            "negative_prompt": self.negative_prompt,
            "gray": "ITU-R BT.601 luma",
            "dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
        }
        if self.ref.hub_id is not None:
            out["revision"] = self.ref.revision
        else:
            out["weights_sha256"] = self.weights_sha256()
        if self.call_kwargs:
            out["call_kwargs"] = dict(sorted(self.call_kwargs.items()))
        return out

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], conditions=None) -> GeneratedBatch:
        import torch

        if conditions is not None:
            raise ChexgenError("the diffusers backend cannot generate from masks / boxes")
        prompts = list(prompts)
        # CPU generators: the same seed gives the same noise on every device (diffusers moves it)
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        kw: dict[str, Any] = {"prompt": prompts, "num_inference_steps": self.steps, "generator": gens,
                              "height": self._resolution, "width": self._resolution, "output_type": "np"}
        if self.guidance is not None:
            kw["guidance_scale"] = self.guidance
        if self.negative_prompt is not None:
            kw["negative_prompt"] = [self.negative_prompt] * len(prompts)
        if "num_images_per_prompt" in self._params:
            kw["num_images_per_prompt"] = 1
        if "use_resolution_binning" in self._params:
            kw["use_resolution_binning"] = False
        kw.update(self.call_kwargs)
        with torch.no_grad():
            out = self.pipe(**kw)
        images = rgb_to_gray(out.images if hasattr(out, "images") else out[0])
        want = (len(prompts), self._resolution, self._resolution)
        if images.shape != want:
            raise ChexgenError(f"{self.ref.source} returned images of shape {images.shape}, expected {want}")
        return GeneratedBatch(images)


def check_call_settings(steps: Any = None, guidance: Any = None, dtype: str | None = None) -> None:
    """Refuse bad steps / guidance / dtype before a pipeline is loaded (None = the pipeline's default)."""
    parse_dtype(dtype)
    if steps is not None:
        _whole("steps", steps)
    if guidance is not None:
        _number("guidance", guidance, minimum=0.0)


def _whole(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer() or value < 1:
        raise ChexgenError(f"{name} must be a whole number >= 1, got {value!r}")
    return int(value)


def _number(name: str, value: Any, minimum: float | None = None) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ChexgenError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or (minimum is not None and v < minimum):
        raise ChexgenError(f"{name} must be a finite number >= {minimum}, got {value!r}")
    return v
