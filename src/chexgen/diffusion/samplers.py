"""Samplers: diffusers schedulers behind one small interface, classifier-free guidance, per-image seeds.

Sampler names (``SAMPLERS``) and what they run:

- ``ddim`` (default, 100 steps, eta 0): deterministic DDIM, the paper's stated sampler.
- ``iddpm`` (100 steps): ancestral sampling with the model's learned-range variance
  over linspace-respaced timesteps (0, 10, ..., 999), as IDDPM / the official code.
- ``dpmsolver++`` (20 steps): 2nd-order multistep DPM-Solver++, PixArt-alpha's default.
- ``official``: ``iddpm`` with guidance applied to the first 3 of 4 epsilon
  channels only, reproducing the official ``tools/sample.py`` behaviour.

Classifier-free guidance runs the conditional and unconditional branches in one
batched forward; the guided epsilon is ``eps_u + s * (eps_c - eps_u)`` and the
variance channels come from the conditional branch.

Every image owns a ``torch.Generator``: its initial noise and every ancestral
noise draw come from it alone, so an image depends only on its seed, not on the
batch it was drawn in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from chexgen.diffusion.schedule import NoiseSchedule
from chexgen.errors import ChexgenError

__all__ = [
    "SAMPLERS",
    "DEFAULT_STEPS",
    "SamplerSpec",
    "get_sampler_spec",
    "make_scheduler",
    "guided_prediction",
    "initial_noise",
    "make_generators",
    "denoise",
]


@dataclass(frozen=True)
class SamplerSpec:
    """How a named sampler runs: which scheduler, default steps, variance use and guided channels."""

    name: str
    default_steps: int
    uses_learned_variance: bool
    guided_channels: int | None = None  # None = all epsilon channels
    description: str = ""


_SPECS: dict[str, SamplerSpec] = {
    "ddim": SamplerSpec("ddim", 100, False, None, "DDIM, eta 0 (deterministic); the paper's sampler"),
    "iddpm": SamplerSpec("iddpm", 100, True, None, "IDDPM ancestral, learned-range variance, respaced"),
    "dpmsolver++": SamplerSpec("dpmsolver++", 20, False, None, "DPM-Solver++ 2nd-order multistep"),
    "official": SamplerSpec("official", 100, True, 3, "IDDPM ancestral with CFG on the first 3 eps channels"),
}
SAMPLERS: tuple[str, ...] = tuple(_SPECS)
DEFAULT_STEPS: dict[str, int] = {k: v.default_steps for k, v in _SPECS.items()}


def get_sampler_spec(name: str) -> SamplerSpec:
    """What sampler ``name`` runs (scheduler, default steps, guidance channels); unknown names raise ChexgenError."""
    try:
        return _SPECS[name]
    except KeyError:
        raise ChexgenError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}") from None


class ClampedDPMSolverMultistepScheduler(DPMSolverMultistepScheduler):
    """DPM-Solver++ whose data (x0) predictions are clamped to ``[-clip_latents, clip_latents]``.

    diffusers' own ``thresholding`` rescales by a dynamic quantile (Imagen, for pixel space); latents
    need a plain clamp to the training range, as DDIM's / DDPM's ``clip_sample`` does.
    """

    clip_latents: float | None = None

    def convert_model_output(self, model_output: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        x0 = super().convert_model_output(model_output, *args, **kwargs)
        if self.clip_latents is not None:
            x0 = x0.clamp(-self.clip_latents, self.clip_latents)
        return x0


def make_scheduler(
    name: str = "ddim",
    num_train_timesteps: int = 1000,
    schedule: NoiseSchedule | None = None,
    clip_latents: float | None = None,
    **overrides,
) -> SchedulerMixin:
    """A fresh diffusers scheduler for sampler ``name`` on the chexgen schedule.

    ``clip_latents`` clamps every predicted clean latent to ``[-c, c]`` (IDDPM's ``clip_denoised``
    for latents): a young model's x0 estimates at high noise can overshoot the training latents'
    range by 10-20x, which a VAE decodes as saturated blobs. ``overrides`` go to the scheduler
    constructor (e.g. ``solver_order=3``). Schedulers are stateful (step index, multistep
    history): make one per sampling run.
    """
    spec = get_sampler_spec(name)
    schedule = schedule or NoiseSchedule(num_train_timesteps=num_train_timesteps)
    kw = schedule.scheduler_kwargs()
    clip = {"clip_sample": clip_latents is not None, "clip_sample_range": float(clip_latents or 1.0)}
    if spec.name == "ddim":
        kw.update(set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading", **clip)
        cls = DDIMScheduler
    elif spec.uses_learned_variance:
        # IDDPM respacing: round(linspace(0, T - 1, n)) -> 0, 10, ..., 999 for n = 100.
        kw.update(variance_type="learned_range", timestep_spacing="linspace", **clip)
        cls = DDPMScheduler
    else:
        kw.update(algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True,
                  timestep_spacing="linspace")
        cls = ClampedDPMSolverMultistepScheduler
    kw.update(overrides)
    scheduler = cls(**kw)
    if isinstance(scheduler, ClampedDPMSolverMultistepScheduler):
        scheduler.clip_latents = clip_latents
    return scheduler


def make_generators(seeds: Sequence[int], device: "str | torch.device" = "cpu") -> list[torch.Generator]:
    """One seeded generator per image (on ``device``; CPU generators keep results device independent)."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def initial_noise(
    shape: tuple[int, ...], generators: Sequence[torch.Generator], device=None, dtype=torch.float32
) -> torch.Tensor:
    """``[len(generators), *shape]`` standard normal noise, image i drawn from generator i only."""
    noise = [torch.randn(shape, generator=g, device=g.device, dtype=torch.float32) for g in generators]
    return torch.stack(noise).to(device=device, dtype=dtype)


def guided_prediction(
    model: Callable[..., torch.Tensor],
    latents: torch.Tensor,
    timestep: torch.Tensor,
    cond: tuple[torch.Tensor, torch.Tensor | None],
    uncond: tuple[torch.Tensor, torch.Tensor | None] | None,
    guidance_scale: float,
    guided_channels: int | None = None,
    always_batch: bool = False,
) -> torch.Tensor:
    """Classifier-free guided model output ``[B, C_out, h, w]``.

    ``cond`` / ``uncond`` are ``(embeddings [B, L, C], mask [B, L])``. Both branches run in
    ONE forward (batch ``2B``). Guidance applies to the first ``C`` (epsilon) channels,
    or only to the first ``guided_channels`` of them; any further (variance) channels
    come from the conditional branch. With ``guidance_scale == 1`` (or no ``uncond``)
    the unconditional branch is skipped unless ``always_batch``.
    """
    c = latents.shape[1]
    b = latents.shape[0]
    if uncond is None or (guidance_scale == 1.0 and not always_batch):
        return model(latents, timestep.expand(b), cond[0], cond[1])
    emb = torch.cat([cond[0], uncond[0]])
    mask = None if cond[1] is None else torch.cat([cond[1], uncond[1]])
    out = model(torch.cat([latents, latents]), timestep.expand(2 * b), emb, mask)
    out_c, out_u = out.chunk(2)
    g = c if guided_channels is None else guided_channels
    eps = out_c[:, :c].clone()
    eps[:, :g] = out_u[:, :g] + guidance_scale * (out_c[:, :g] - out_u[:, :g])
    return torch.cat([eps, out_c[:, c:]], dim=1)


@torch.no_grad()
def denoise(
    model: Callable[..., torch.Tensor],
    cond: tuple[torch.Tensor, torch.Tensor | None],
    uncond: tuple[torch.Tensor, torch.Tensor | None] | None,
    generators: Sequence[torch.Generator],
    latent_shape: tuple[int, int, int],
    sampler: str = "ddim",
    num_inference_steps: int | None = None,
    guidance_scale: float = 4.0,
    device: "str | torch.device" = "cpu",
    dtype: torch.dtype = torch.float32,
    eta: float = 0.0,
    progress: Callable | None = None,
    scheduler: SchedulerMixin | None = None,
    clip_latents: float | None = None,
) -> torch.Tensor:
    """Run one sampling loop from per-image noise to clean latents ``[B, *latent_shape]``.

    ``model(latents, t[B], emb, mask) -> [B, C or 2C, h, w]`` (a :class:`ChexGenDiT`).
    ``progress`` optionally wraps the timestep iterator (e.g. ``tqdm``).
    ``clip_latents`` clamps predicted clean latents (see :func:`make_scheduler`).
    """
    spec = get_sampler_spec(sampler)
    steps = int(num_inference_steps or spec.default_steps)
    if steps < 1:
        raise ChexgenError(f"num_inference_steps must be >= 1, got {steps}")
    if len(generators) != cond[0].shape[0]:
        raise ValueError(f"{len(generators)} generators for {cond[0].shape[0]} prompts")
    scheduler = scheduler or make_scheduler(sampler, clip_latents=clip_latents)
    scheduler.set_timesteps(steps, device=device)
    x = initial_noise(latent_shape, generators, device=device, dtype=dtype) * scheduler.init_noise_sigma
    c = latent_shape[0]
    gens = list(generators)  # diffusers draws noise i from gens[i] on its device, then moves it
    timesteps = scheduler.timesteps
    iterator = progress(timesteps) if progress is not None else timesteps
    for t in iterator:
        t_in = t.reshape(1).to(device)
        model_in = scheduler.scale_model_input(x, t)
        out = guided_prediction(model, model_in, t_in, cond, uncond, guidance_scale, spec.guided_channels)
        out = out.to(x.dtype)
        if spec.uses_learned_variance:
            if out.shape[1] != 2 * c:
                raise ChexgenError(f"sampler {sampler!r} needs a learned-variance model (2x{c} output channels)")
            x = scheduler.step(out, t, x, generator=gens).prev_sample  # noise i from generator i
        elif spec.name == "ddim":
            x = scheduler.step(out[:, :c], t, x, eta=eta, generator=gens if eta > 0 else None).prev_sample
        else:
            x = scheduler.step(out[:, :c], t, x, generator=gens).prev_sample
    return x

