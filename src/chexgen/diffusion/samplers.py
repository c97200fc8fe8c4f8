"""Samplers: diffusers schedulers behind one small interface, classifier-free guidance, per-image seeds.

Sampler names (``SAMPLERS``) and what they run (every one on the model's own noise schedule):

- ``ddim`` (100 steps, eta 0): deterministic DDIM, the paper's stated sampler.
- ``iddpm`` (100 steps): ancestral sampling with the model's learned-range variance
  over linspace-respaced timesteps (0, 10, ..., 999), as IDDPM / the official code.
- ``dpmsolver++`` (20 steps): 2nd-order multistep DPM-Solver++, PixArt-alpha's default.
- ``dpmsolver++3m`` (20 steps): the same, 3rd order.
- ``dpmsolver++sde`` (20 steps): stochastic 2nd-order DPM-Solver++ (SDE variant, fresh noise each step).
- ``unipc`` (20 steps): UniPC multistep predictor-corrector (bh2, 2nd order, data prediction).
- ``euler`` / ``euler_a`` (30 steps): Euler (deterministic) and Euler ancestral in sigma space.
- ``heun`` (20 steps): 2nd-order Heun in sigma space; 2 model calls per step but the last.
- ``official``: ``iddpm`` with guidance applied to the first 3 of 4 epsilon
  channels only, reproducing the official ``tools/sample.py`` behaviour.

All but ``iddpm`` / ``official`` use only the epsilon half of a learned-variance model's output
(diffusers' PixArt pipeline does the same). ``clip_latents`` (the pipeline's latent clipping)
clamps the predicted clean latent of every step in every sampler: through the scheduler's own
``clip_sample`` (DDIM, IDDPM), by clamping the data prediction of the multistep solvers
(DPM-Solver++, UniPC), or by clamping ``x0 = x - sigma * eps`` and handing the scheduler the
epsilon of the clamped x0 (Euler, Euler ancestral, Heun).

Classifier-free guidance runs the conditional and unconditional branches in one
batched forward; the guided epsilon is ``eps_u + s * (eps_c - eps_u)`` and the
variance channels come from the conditional branch. :func:`model_calls_per_image` counts the
forwards an image costs (each forward holds both branches; with guidance an image costs twice).

Every image owns a ``torch.Generator``: its initial noise and every ancestral
noise draw come from it alone, so an image depends only on its seed, not on the
batch it was drawn in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from chexgen.diffusion.schedule import NoiseSchedule
from chexgen.errors import ChexgenError

__all__ = [
    "SAMPLERS",
    "DEFAULT_STEPS",
    "SamplerSpec",
    "get_sampler_spec",
    "make_scheduler",
    "model_calls_per_image",
    "guided_prediction",
    "initial_noise",
    "make_generators",
    "denoise",
]


@dataclass(frozen=True)
class SamplerSpec:
    """How a named sampler runs: which scheduler family, default steps, variance use and guided channels.

    family: ``ddim``, ``ddpm`` (learned variance), ``dpm`` (DPM-Solver++ multistep), ``unipc`` or
    ``sigma`` (Euler / Euler ancestral / Heun). options: constructor arguments of that family's
    scheduler. stochastic: the step draws fresh noise (from the images' generators).
    """

    name: str
    default_steps: int
    uses_learned_variance: bool
    guided_channels: int | None = None  # None = all epsilon channels
    description: str = ""
    family: str = "ddim"
    options: dict[str, Any] = field(default_factory=dict)
    stochastic: bool = False


_DPM = {"algorithm_type": "dpmsolver++", "solver_order": 2, "lower_order_final": True, "timestep_spacing": "linspace"}
_SPECS: dict[str, SamplerSpec] = {s.name: s for s in (
    SamplerSpec("ddim", 100, False, None, "DDIM, eta 0 (deterministic); the paper's sampler", "ddim"),
    SamplerSpec("iddpm", 100, True, None, "IDDPM ancestral, learned-range variance, respaced", "ddpm",
                stochastic=True),
    SamplerSpec("dpmsolver++", 20, False, None, "DPM-Solver++ 2nd-order multistep", "dpm", _DPM),
    SamplerSpec("dpmsolver++3m", 20, False, None, "DPM-Solver++ 3rd-order multistep", "dpm",
                {**_DPM, "solver_order": 3}),
    SamplerSpec("dpmsolver++sde", 20, False, None, "DPM-Solver++ 2nd-order SDE (stochastic)", "dpm",
                {**_DPM, "algorithm_type": "sde-dpmsolver++"}, stochastic=True),
    SamplerSpec("unipc", 20, False, None, "UniPC multistep predictor-corrector, bh2, 2nd order", "unipc",
                {"solver_order": 2, "solver_type": "bh2", "predict_x0": True, "lower_order_final": True,
                 "timestep_spacing": "linspace"}),
    SamplerSpec("euler", 30, False, None, "Euler in sigma space (deterministic)", "sigma",
                {"cls": "euler", "timestep_spacing": "linspace"}),
    SamplerSpec("euler_a", 30, False, None, "Euler ancestral in sigma space (stochastic)", "sigma",
                {"cls": "euler_a", "timestep_spacing": "linspace"}, stochastic=True),
    SamplerSpec("heun", 20, False, None, "Heun 2nd order in sigma space (2 model calls per step but the last)",
                "sigma", {"cls": "heun", "timestep_spacing": "linspace"}),
    SamplerSpec("official", 100, True, 3, "IDDPM ancestral with CFG on the first 3 eps channels", "ddpm",
                stochastic=True),
)}
SAMPLERS: tuple[str, ...] = tuple(_SPECS)
DEFAULT_STEPS: dict[str, int] = {k: v.default_steps for k, v in _SPECS.items()}


def get_sampler_spec(name: str) -> SamplerSpec:
    """What sampler ``name`` runs (scheduler, default steps, guidance channels); unknown names raise ChexgenError."""
    try:
        return _SPECS[name]
    except KeyError:
        raise ChexgenError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}") from None


def model_calls_per_image(name: str, steps: int, guidance_scale: float = 4.0) -> int:
    """Network evaluations one image costs: forwards per image times 2 with classifier-free guidance."""
    spec = get_sampler_spec(name)
    forwards = 2 * steps - 1 if spec.options.get("cls") == "heun" else steps
    return forwards * (1 if guidance_scale == 1.0 else 2)


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


class ClampedUniPCMultistepScheduler(UniPCMultistepScheduler):
    """UniPC (data prediction) whose x0 predictions are clamped, as :class:`ClampedDPMSolverMultistepScheduler`."""

    clip_latents: float | None = None

    def convert_model_output(self, model_output: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        x0 = super().convert_model_output(model_output, *args, **kwargs)
        if self.clip_latents is not None and self.config.predict_x0:
            x0 = x0.clamp(-self.clip_latents, self.clip_latents)
        return x0


class _SigmaClamp:
    """Mixin for sigma-space schedulers: clamp ``x0`` of the model output before the scheduler's step.

    The model was evaluated at ``sigmas[step_index]`` (also in Heun's second stage); its x0 is
    ``x - sigma * eps`` (epsilon models) and the step gets the epsilon of the clamped x0.
    """

    clip_latents: float | None = None

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, *args, **kwargs):
        if self.clip_latents is not None:
            if self.step_index is None:
                self._init_step_index(timestep)
            sigma = self.sigmas[self.step_index].to(sample.device, torch.float32)
            c = self.clip_latents
            if self.config.prediction_type == "epsilon":
                x0 = (sample - sigma * model_output).clamp(-c, c)
                model_output = (sample - x0) / sigma
            elif self.config.prediction_type == "v_prediction":
                scale = (sigma ** 2 + 1) ** 0.5
                x0 = (model_output * (-sigma / scale) + sample / scale ** 2).clamp(-c, c)
                model_output = (sample / scale ** 2 - x0) * scale / sigma
            else:
                raise ChexgenError(f"latent clipping needs an epsilon or v model, got {self.config.prediction_type!r}")
        return super().step(model_output, timestep, sample, *args, **kwargs)


class ClampedEulerDiscreteScheduler(_SigmaClamp, EulerDiscreteScheduler):
    """Euler with latent clipping."""


class ClampedEulerAncestralDiscreteScheduler(_SigmaClamp, EulerAncestralDiscreteScheduler):
    """Euler ancestral with latent clipping."""


class ClampedHeunDiscreteScheduler(_SigmaClamp, HeunDiscreteScheduler):
    """Heun with latent clipping."""


_SIGMA_CLASSES = {"euler": ClampedEulerDiscreteScheduler, "euler_a": ClampedEulerAncestralDiscreteScheduler,
                  "heun": ClampedHeunDiscreteScheduler}


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
    options = dict(spec.options)
    if spec.family == "ddim":
        kw.update(set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading", **clip)
        cls = DDIMScheduler
    elif spec.family == "ddpm":
        # IDDPM respacing: round(linspace(0, T - 1, n)) -> 0, 10, ..., 999 for n = 100.
        kw.update(variance_type="learned_range", timestep_spacing="linspace", **clip)
        cls = DDPMScheduler
    elif spec.family == "dpm":
        cls = ClampedDPMSolverMultistepScheduler
    elif spec.family == "unipc":
        cls = ClampedUniPCMultistepScheduler
    else:
        cls = _SIGMA_CLASSES[options.pop("cls")]
    kw.update(options)
    kw.update(overrides)
    scheduler = cls(**kw)
    if hasattr(cls, "clip_latents"):
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
    batched_text: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Classifier-free guided model output ``[B, C_out, h, w]``.

    ``cond`` / ``uncond`` are ``(embeddings [B, L, C], mask [B, L])``. Both branches run in
    ONE forward (batch ``2B``). Guidance applies to the first ``C`` (epsilon) channels,
    or only to the first ``guided_channels`` of them; any further (variance) channels
    come from the conditional branch. With ``guidance_scale == 1`` (or no ``uncond``)
    the unconditional branch is skipped unless ``always_batch``. The output is fp32 whatever the
    model's dtype: guidance is sampler arithmetic. ``batched_text`` is :func:`batch_text` of ``cond`` and
    ``uncond``, made once per sampling loop (the same tensor every step lets the model reuse its text path).
    """
    c = latents.shape[1]
    b = latents.shape[0]
    if uncond is None or (guidance_scale == 1.0 and not always_batch):
        return model(latents, timestep.expand(b), cond[0], cond[1]).float()
    emb, mask = batched_text if batched_text is not None else batch_text(cond, uncond)
    out = model(torch.cat([latents, latents]), timestep.expand(2 * b), emb, mask).float()
    out_c, out_u = out.chunk(2)
    g = c if guided_channels is None else guided_channels
    eps = out_c[:, :c].clone()
    eps[:, :g] = out_u[:, :g] + guidance_scale * (out_c[:, :g] - out_u[:, :g])
    return torch.cat([eps, out_c[:, c:]], dim=1)


def batch_text(cond: tuple[torch.Tensor, torch.Tensor | None],
               uncond: tuple[torch.Tensor, torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Text embeddings and mask of both guidance branches, ``[conditional; unconditional]``."""
    mask = None if cond[1] is None else torch.cat([cond[1], uncond[1]])
    return torch.cat([cond[0], uncond[0]]), mask


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

    Precision: ``dtype`` is the MODEL's compute dtype. The latents, the guidance combination and every
    scheduler step stay fp32 (the noise, the step's small differences of large terms and the
    multistep history lose too much in bf16); only the model's input is cast to ``dtype`` and its
    output back to fp32. Returns fp32 latents.
    """
    spec = get_sampler_spec(sampler)
    steps = int(num_inference_steps or spec.default_steps)
    if steps < 1:
        raise ChexgenError(f"num_inference_steps must be >= 1, got {steps}")
    if len(generators) != cond[0].shape[0]:
        raise ValueError(f"{len(generators)} generators for {cond[0].shape[0]} prompts")
    scheduler = scheduler or make_scheduler(sampler, clip_latents=clip_latents)
    scheduler.set_timesteps(steps, device=device)
    x = initial_noise(latent_shape, generators, device=device, dtype=torch.float32) * scheduler.init_noise_sigma
    c = latent_shape[0]
    gens = list(generators)  # diffusers draws noise i from gens[i] on its device, then moves it
    timesteps = scheduler.timesteps
    iterator = progress(timesteps) if progress is not None else timesteps
    text = batch_text(cond, uncond) if uncond is not None else None  # one tensor for the whole loop
    for t in iterator:
        t_in = t.reshape(1).to(device)
        model_in = scheduler.scale_model_input(x, t).to(dtype)
        out = guided_prediction(model, model_in, t_in, cond, uncond, guidance_scale, spec.guided_channels,
                                batched_text=text)
        if spec.uses_learned_variance:
            if out.shape[1] != 2 * c:
                raise ChexgenError(f"sampler {sampler!r} needs a learned-variance model (2x{c} output channels)")
            x = scheduler.step(out, t, x, generator=gens).prev_sample  # noise i from generator i
        elif spec.family == "ddim":
            x = scheduler.step(out[:, :c], t, x, eta=eta, generator=gens if eta > 0 else None).prev_sample
        elif spec.family == "dpm" or spec.stochastic:
            x = scheduler.step(out[:, :c], t, x, generator=gens).prev_sample
        else:  # deterministic steps that take no generator (UniPC, Euler, Heun)
            x = scheduler.step(out[:, :c], t, x).prev_sample
    return x

