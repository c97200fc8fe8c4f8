"""The benchmark's generators: checked before anything runs, loaded one at a time, metered while generating.

:func:`prepare_models` checks every model entry without loading weights (backend, folder layout,
hub cache when offline, pipeline class, sampler settings, prompt template against every record),
so a bad entry stops the run with one error line before the first image. :func:`generate_model`
then loads one model, generates its share of the plan into ``out/models/<name>`` with
:func:`chexgen.generation.generate_to_folder` (resumable per image, sharded per batch under
torchrun / accelerate) and meters it: wall time spent inside the generator and the number of
samples its denoiser processed (a classifier-free-guided step counts two per image), accumulated
across resumed runs in ``out/timing/<name>.rank<r>.json``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from chexgen.benchmark.config import BenchmarkConfig, ModelEntry
from chexgen.errors import ChexgenError
from chexgen.generation.backends.base import GeneratedBatch, GeneratorBackend
from chexgen.generation.prompts import PromptItem
from chexgen.generation.templates import PromptTemplate, TemplatedBackend, apply_template, parse_template
from chexgen.utils import atomic_write_json

__all__ = ["PreparedModel", "prepare_models", "open_backend", "generate_model", "MeteredBackend", "read_timing",
           "TIMING_DIR", "MODELS_DIR"]

log = logging.getLogger(__name__)

MODELS_DIR = "models"
TIMING_DIR = "timing"


@dataclass
class PreparedModel:
    """A checked model entry: what drives it and the prompts it gets (rendered through its template)."""

    entry: ModelEntry
    kind: str  # chexgen | preset | diffusers | vae-reconstruction
    items: list[PromptItem]
    template: PromptTemplate | None = None
    source: Any = None  # ModelSource for chexgen / diffusers folders and hub ids
    notes: dict[str, Any] = field(default_factory=dict)


def _check_chexgen_options(m: ModelEntry, where: str, folder: str | None) -> None:
    from chexgen.pipelines.base import CONFIG_NAME, PipelineConfig, resolve_sampling

    if m.negative_prompt is not None or m.dtype is not None or m.revision is not None:
        raise ChexgenError(f"{where}: negative_prompt / dtype / revision are for diffusers models only (chexgen "
                           "models take precision)")
    if folder is not None:
        try:
            config = PipelineConfig.from_dict(json.loads((Path(folder) / CONFIG_NAME).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError, TypeError) as err:
            raise ChexgenError(f"{where}: unreadable {CONFIG_NAME} ({err})") from None
    else:
        from chexgen.models.presets import get_preset

        preset = get_preset(m.preset)
        config = PipelineConfig(preset=preset.name, resolution=preset.resolution)
    try:
        resolve_sampling(config, m.sampler, m.steps, m.guidance)
    except ChexgenError as err:
        raise ChexgenError(f"{where}: {err}") from None


def prepare_models(cfg: BenchmarkConfig, items: Sequence[PromptItem]) -> list[PreparedModel]:
    """Check every model entry (see the module docstring); returns them ready to load."""
    from chexgen.generation.backends.select import detect_backend

    out: list[PreparedModel] = []
    for i, m in enumerate(cfg.models):
        where = f"models[{i}] ({m.name})"
        try:
            template = parse_template(m.prompt_template) if m.prompt_template else None
            model_items = apply_template(items, template) if template else list(items)
        except ChexgenError as err:
            raise ChexgenError(f"{where}: {err}") from None
        if m.backend == "vae-reconstruction":
            folder = Path(m.model or "")
            if not (folder / "chexgen_config.json").is_file():
                raise ChexgenError(f"{where}: vae-reconstruction needs a chexgen pipeline folder, got {m.model}")
            if not (folder / "vae" / "diffusion_pytorch_model.safetensors").is_file():
                raise ChexgenError(f"{where}: {folder} keeps no VAE weights in vae/")
            out.append(PreparedModel(m, "vae-reconstruction", model_items, template))
            continue
        if m.preset is not None:
            _check_chexgen_options(m, where, None)
            out.append(PreparedModel(m, "preset", model_items, template))
            continue
        try:
            source = detect_backend(m.model, None if m.backend == "auto" else m.backend, revision=m.revision)
        except ChexgenError as err:
            raise ChexgenError(f"{where}: {err}") from None
        if source.backend == "chexgen":
            _check_chexgen_options(m, where, source.model)
        else:
            if m.sampler is not None or m.text_encoder is not None:
                raise ChexgenError(f"{where}: sampler / text_encoder are for chexgen models; a diffusers pipeline "
                                   "uses its own scheduler and text encoder")
            from chexgen.generation.backends.diffusers import check_call_settings

            try:
                check_call_settings(m.steps, m.guidance, m.dtype)
            except ChexgenError as err:
                raise ChexgenError(f"{where}: {err}") from None
        out.append(PreparedModel(m, source.backend, model_items, template, source))
    return out


def open_backend(pm: PreparedModel, cfg: BenchmarkConfig, device: str, real_root: Path) -> GeneratorBackend:
    """Load one prepared model as a :class:`GeneratorBackend` (weights are read here)."""
    m = pm.entry
    if pm.kind == "vae-reconstruction":
        from chexgen.generation.backends.reconstruction import VAEReconstructionBackend

        backend: GeneratorBackend = VAEReconstructionBackend.from_pipeline_folder(
            m.model, pm.items, real_root, cfg.seed, cfg.images_per_prompt, device=device)
    elif pm.kind in ("chexgen", "preset"):
        from chexgen.generation.backends import ChexGenBackend
        from chexgen.pipelines import ChexGenPipeline
        from chexgen.pipelines.base import resolve_sampling

        if pm.kind == "preset":
            pipe = ChexGenPipeline.from_preset(m.preset, seed=m.preset_seed)
            name = f"preset:{m.preset} (untrained, seed {m.preset_seed})"
        else:
            pipe = ChexGenPipeline.from_pretrained(m.model, text_encoder_name_or_path=m.text_encoder)
            name = str(Path(m.model).resolve())
        pipe.to(device, precision=m.precision or cfg.precision)
        pipe.text_encoder  # load now: a broken reference fails before the model's first image
        backend = ChexGenBackend(pipe, resolve_sampling(pipe.config, m.sampler, m.steps, m.guidance), model_name=name)
    else:
        from chexgen.generation.backends.diffusers import DiffusersBackend, diffusers_dtype

        dtype = diffusers_dtype(m.precision or cfg.precision, m.dtype, device)
        backend = DiffusersBackend.load(pm.source.diffusers, device=device, dtype=dtype, progress=False,
                                        steps=m.steps, guidance=m.guidance, negative_prompt=m.negative_prompt)
    return TemplatedBackend(backend, pm.template) if pm.template is not None else backend


def _denoiser(backend: GeneratorBackend):
    """The module whose forward passes count as model calls (None for VAE reconstructions)."""
    inner = backend
    while isinstance(inner, (TemplatedBackend, MeteredBackend)):
        inner = inner.inner
    pipe = getattr(inner, "pipe", None)
    if getattr(inner, "denoiser", None) is not None:
        return inner.denoiser
    return getattr(pipe, "transformer", None) if pipe is not None else None


class MeteredBackend(GeneratorBackend):
    """Times the wrapped backend's ``generate`` calls and counts its denoiser's samples (see module docstring)."""

    def __init__(self, inner: GeneratorBackend, stats_path: Path) -> None:
        self.inner = inner
        self.name = inner.name
        self.stats_path = Path(stats_path)
        self.denoiser = _denoiser(inner)
        self.totals = read_timing_file(self.stats_path)

    @property
    def resolution(self) -> int:
        return self.inner.resolution

    def settings(self) -> dict[str, Any]:
        return self.inner.settings()

    def generate(self, prompts, seeds, conditions=None) -> GeneratedBatch:
        counted = {"samples": 0, "forwards": 0}

        def hook(module, args, kwargs, output):
            x = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
            counted["forwards"] += 1
            counted["samples"] += int(x.shape[0]) if hasattr(x, "shape") and len(x.shape) else 1

        handle = self.denoiser.register_forward_hook(hook, with_kwargs=True) if self.denoiser is not None else None
        t0 = time.perf_counter()
        try:
            out = self.inner.generate(prompts, seeds, conditions)
        finally:
            if handle is not None:
                handle.remove()
        t = self.totals
        t["seconds"] += time.perf_counter() - t0
        t["images"] += len(prompts)
        t["denoiser_samples"] += counted["samples"]
        t["denoiser_forwards"] += counted["forwards"]
        atomic_write_json(self.stats_path, t)
        return out


def read_timing_file(path: Path) -> dict[str, float]:
    base = {"seconds": 0.0, "images": 0, "denoiser_samples": 0, "denoiser_forwards": 0}
    if Path(path).is_file():
        try:
            stored = json.loads(Path(path).read_text(encoding="utf-8"))
            base.update({k: stored[k] for k in base if isinstance(stored.get(k), (int, float))})
        except (OSError, json.JSONDecodeError):
            log.warning("%s: unreadable timing file; starting it again", path)
    return base


def read_timing(out: Path, name: str) -> dict[str, float]:
    """Timing of one model summed over processes: seconds / image and denoiser samples / image."""
    total = {"seconds": 0.0, "images": 0, "denoiser_samples": 0, "denoiser_forwards": 0}
    for f in sorted((Path(out) / TIMING_DIR).glob(f"{name}.rank*.json")):
        for k, v in read_timing_file(f).items():
            total[k] += v
    n = total["images"]
    total["seconds_per_image"] = total["seconds"] / n if n else float("nan")
    total["model_calls_per_image"] = total["denoiser_samples"] / n if n else float("nan")
    return total


def generate_model(pm: PreparedModel, cfg: BenchmarkConfig, out: Path, device: str, real_root: Path,
                   rank: int = 0, world: int = 1, barrier=None, progress: bool = True):
    """Load one model and generate its share of the plan (resumable); returns the engine's counts."""
    import gc

    from chexgen.generation.engine import generate_to_folder

    backend = open_backend(pm, cfg, device, real_root)
    metered = MeteredBackend(backend, out / TIMING_DIR / f"{pm.entry.name}.rank{rank}.json")
    try:
        return generate_to_folder(metered, pm.items, out / MODELS_DIR / pm.entry.name,
                                  num_images_per_prompt=cfg.images_per_prompt, seed=cfg.seed,
                                  batch_size=pm.entry.batch_size or cfg.batch_size, rank=rank, world=world,
                                  barrier=barrier, progress=progress, watermark=cfg.watermark)
    finally:
        del metered, backend
        gc.collect()
