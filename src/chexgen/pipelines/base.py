"""What every chexgen pipeline shares: call defaults, input checks, seeds, batching, latent clipping, the scheduler.

A pipeline call resolves its sampling settings in ONE place (:func:`resolve_sampling`):

- sampler: the call's, else the model's ``default_sampler``;
- steps: the call's, else the model's ``num_inference_steps``, else the sampler's default;
- guidance: the call's, else the model's ``guidance_scale``.

Every number is checked (finite, in range) before anything runs. Precision: the transformer and VAE
compute in the pipeline's dtype (``from_pretrained(precision=...)`` / ``to(precision=...)``, resolved
by :mod:`chexgen.models.precision`); latents, guidance and scheduler steps stay fp32
(:func:`chexgen.diffusion.samplers.denoise`). Image ``j`` of a call gets seed
``seed + j`` unless explicit ``seeds`` are given, and its own ``torch.Generator``: its noise comes
from that generator alone.

The noise schedule is read back from the pipeline folder's ``scheduler/scheduler_config.json``
(the one written by ``save_pretrained``); each call builds a fresh diffusers scheduler for the
chosen sampler on that schedule, since schedulers carry per-run state. Latent clipping
(``PipelineConfig.clip_latents``) applies to every sampler and to the control pipeline alike.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from chexgen import __version__
from chexgen.diffusion.samplers import SAMPLERS, denoise, get_sampler_spec, make_generators, make_scheduler
from chexgen.diffusion.schedule import NoiseSchedule
from chexgen.errors import ChexgenError
from chexgen.models.precision import precision_name
from chexgen.models.presets import TextEncoderSpec, VAESpec
from chexgen.models.text_encoder import TextEmbeddings

__all__ = [
    "CONFIG_NAME",
    "PipelineConfig",
    "SamplingSettings",
    "resolve_sampling",
    "check_prompts",
    "image_seeds",
    "image_generators",
    "read_noise_schedule",
    "DiffusionPipelineBase",
]

CONFIG_NAME = "chexgen_config.json"
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"


@dataclass
class PipelineConfig:
    """Everything besides weights that a saved pipeline needs to rebuild itself.

    preset: preset name it was built from (informational once saved).
    resolution: output image size in pixels (square).
    text_encoder / vae: specs; ``vae.name_or_path == "vae"`` means the weights are in the folder.
    default_sampler / num_inference_steps (None = the sampler's default) / guidance_scale: call defaults.
    prompt_cleaning: ``basic`` for chexgen models, ``official`` for converted official checkpoints.
    clip_latents: clamp predicted clean latents to ``[-c, c]`` while sampling (None = off); set it to
        about the largest absolute latent of the training data (the bundled demo model uses 5.0).
    """

    preset: str | None = None
    resolution: int = 128
    text_encoder: TextEncoderSpec = field(default_factory=TextEncoderSpec)
    vae: VAESpec = field(default_factory=VAESpec)
    default_sampler: str = "ddim"
    num_inference_steps: int | None = None
    guidance_scale: float = 4.0
    prompt_cleaning: str = "basic"
    clip_latents: float | None = None
    chexgen_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON types (what ``chexgen_config.json`` holds)."""
        d = dataclasses.asdict(self)
        d["text_encoder"] = self.text_encoder.to_dict()
        d["vae"] = self.vae.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PipelineConfig":
        """Rebuild a config from :meth:`to_dict` output (unknown keys are ignored)."""
        kw = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        kw["text_encoder"] = TextEncoderSpec.from_dict(d.get("text_encoder", {}))
        kw["vae"] = VAESpec.from_dict(d.get("vae", {}))
        return cls(**kw)


@dataclass(frozen=True)
class SamplingSettings:
    """The resolved settings of one sampling run (what provenance records)."""

    sampler: str
    steps: int
    guidance: float
    eta: float = 0.0


def _finite(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ChexgenError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ChexgenError(f"{name} must be a finite number, got {value!r}")
    return v


def resolve_sampling(
    config: PipelineConfig,
    sampler: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    eta: float = 0.0,
) -> SamplingSettings:
    """The sampler, steps and guidance a call runs with: the call's values, else the model's, else the sampler's."""
    name = sampler or config.default_sampler
    if name not in SAMPLERS:
        raise ChexgenError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")
    if steps is None:
        steps = config.num_inference_steps or get_sampler_spec(name).default_steps
    if isinstance(steps, bool) or not isinstance(steps, int) and not float(steps).is_integer():
        raise ChexgenError(f"num_inference_steps must be a whole number, got {steps!r}")
    steps = int(steps)
    if steps < 1:
        raise ChexgenError(f"num_inference_steps must be >= 1, got {steps}")
    g = _finite("guidance_scale", config.guidance_scale if guidance is None else guidance)
    if g < 0:
        raise ChexgenError(f"guidance_scale must be >= 0, got {g}")
    e = _finite("eta", eta)
    if e < 0:
        raise ChexgenError(f"eta must be >= 0, got {e}")
    return SamplingSettings(name, steps, g, e)


def check_prompts(prompts: "str | Sequence[str]") -> list[str]:
    """A non-empty list of non-empty prompt strings (one string is one prompt)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ChexgenError("no prompts given")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise ChexgenError(f"prompt {i} is empty; every prompt needs text (got {p!r})")
    return prompts


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ChexgenError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


def image_seeds(n: int, seed: int = 0, seeds: Sequence[int] | None = None, what: str = "image(s)") -> list[int]:
    """Seeds of ``n`` images: ``seeds`` as given (one per image), else ``seed, seed + 1, ...``."""
    if seeds is None:
        return [int(seed) + j for j in range(n)]
    seeds = [int(s) for s in seeds]
    if len(seeds) != n:
        raise ChexgenError(f"{len(seeds)} seeds given for {n} {what}")
    return seeds


def image_generators(
    seeds: Sequence[int], generator: "torch.Generator | Sequence[torch.Generator] | None" = None
) -> list[torch.Generator]:
    """One generator per image: seeded from ``seeds``, or the caller's (one shared, or one per image).

    A single shared generator makes results depend on the batch layout (diffusers' convention).
    """
    n = len(seeds)
    if generator is None:
        return make_generators(seeds)
    if isinstance(generator, torch.Generator):
        return [generator] * n
    gens = list(generator)
    if len(gens) != n:
        raise ChexgenError(f"{len(gens)} generators given for {n} images")
    return gens


def read_noise_schedule(folder: Path) -> NoiseSchedule:
    """The noise schedule stored in ``folder/scheduler/scheduler_config.json`` (chexgen's default if absent).

    Only linear-beta epsilon / v schedules are chexgen's; anything else is refused rather than
    silently sampled with other constants.
    """
    path = folder / SCHEDULER_CONFIG
    if not path.is_file():
        return NoiseSchedule()
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ChexgenError(f"{path}: unreadable scheduler config ({err})") from err
    if cfg.get("beta_schedule", "linear") != "linear" or cfg.get("trained_betas"):
        raise ChexgenError(f"{path}: beta_schedule {cfg.get('beta_schedule')!r} is not supported; "
                           "chexgen models use a linear beta schedule")
    try:
        return NoiseSchedule(
            num_train_timesteps=int(cfg.get("num_train_timesteps", 1000)),
            beta_start=float(cfg.get("beta_start", 1e-4)),
            beta_end=float(cfg.get("beta_end", 0.02)),
            prediction_type=str(cfg.get("prediction_type", "epsilon")),
        )
    except (TypeError, ValueError) as err:
        raise ChexgenError(f"{path}: invalid scheduler setting ({err})") from err


class DiffusionPipelineBase:
    """Sampling machinery shared by the text-to-image and control pipelines.

    A subclass provides ``config`` (:class:`PipelineConfig`), ``transformer``, ``vae``,
    ``noise_schedule`` and :meth:`encode_prompts`; everything else here.
    """

    config: PipelineConfig
    transformer: torch.nn.Module
    vae: torch.nn.Module
    noise_schedule: NoiseSchedule

    # ------------------------------------------------------------------ parts
    @property
    def device(self) -> torch.device:
        """Device of the transformer's weights."""
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the transformer's weights."""
        return next(self.transformer.parameters()).dtype

    @property
    def precision(self) -> str:
        """The transformer's compute precision, ``fp32`` / ``bf16`` / ``fp16`` (what provenance records)."""
        return precision_name(self.dtype)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """Shape ``(channels, height, width)`` of one image's latent."""
        s = self.config.resolution // self.vae.downsample_factor
        return (self.transformer.config.in_channels, s, s)

    def encode_prompts(self, prompts: Sequence[str]) -> TextEmbeddings:  # pragma: no cover - abstract
        """Text embeddings (and padding mask) of ``prompts``; implemented by each pipeline."""
        raise NotImplementedError

    # ------------------------------------------------------------------ settings
    def sampling_settings(self, sampler: str | None = None, num_inference_steps: int | None = None,
                          guidance_scale: float | None = None, eta: float = 0.0) -> SamplingSettings:
        """The settings a call with these arguments runs with (see :func:`resolve_sampling`)."""
        return resolve_sampling(self.config, sampler, num_inference_steps, guidance_scale, eta)

    def make_scheduler(self, sampler: str):
        """A fresh diffusers scheduler for ``sampler`` on this model's noise schedule, with its latent clipping."""
        return make_scheduler(sampler, schedule=self.noise_schedule, clip_latents=self.config.clip_latents)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def denoise_latents(self, model: Callable[..., torch.Tensor], cond: TextEmbeddings,
                        generators: Sequence[torch.Generator], settings: SamplingSettings) -> torch.Tensor:
        """Clean latents for encoded prompts with ``model(latents, t, emb, mask)`` as the denoiser."""
        cond = cond.to(device=self.device, dtype=self.dtype)
        null_emb, null_mask = self.transformer.null_text(len(cond), mask_like=cond.mask)
        return denoise(
            model, (cond.embeddings, cond.mask), (null_emb.to(self.dtype), null_mask), generators,
            self.latent_shape, sampler=settings.sampler, num_inference_steps=settings.steps,
            guidance_scale=settings.guidance, device=self.device, dtype=self.dtype, eta=settings.eta,
            scheduler=self.make_scheduler(settings.sampler),
        )

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 1, H, W]`` in [0, 1] on the CPU."""
        return self.vae.decode(latents).float().cpu()

    @torch.no_grad()
    def generate_batches(
        self,
        prompts: Sequence[str],
        generators: Sequence[torch.Generator],
        settings: SamplingSettings,
        batch_size: int = 8,
        progress: bool = True,
        desc: str = "generating",
        model_for: Callable[[slice], Callable[..., torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Images ``[N, 1, H, W]`` for one prompt and one generator per image, ``batch_size`` at a time.

        ``model_for(batch_slice)`` gives the denoiser of a batch (the control pipeline binds that
        batch's condition latents); by default the transformer itself.
        """
        from tqdm.auto import tqdm

        _check_count("batch_size", batch_size)
        n = len(prompts)
        unique = list(dict.fromkeys(prompts))
        enc = self.encode_prompts(unique)
        row_of = {p: i for i, p in enumerate(unique)}
        images: list[torch.Tensor] = []
        bar = tqdm(total=n, desc=f"{desc} ({settings.sampler}, {settings.steps} steps)", unit="img",
                   disable=not progress)
        for start in range(0, n, batch_size):
            sl = slice(start, min(start + batch_size, n))
            rows = torch.tensor([row_of[p] for p in prompts[sl]], device=enc.embeddings.device)
            model = model_for(sl) if model_for is not None else self.transformer
            latents = self.denoise_latents(model, enc[rows], generators[sl], settings)
            images.append(self.decode_latents(latents))
            bar.update(sl.stop - sl.start)
        bar.close()
        return torch.cat(images)
