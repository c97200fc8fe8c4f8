"""Samplers: scheduler setup, classifier-free guidance, determinism, per-image seeds, IDDPM step math."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import perturb_
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

from chexgen.diffusion import (
    DEFAULT_STEPS,
    SAMPLERS,
    NoiseSchedule,
    denoise,
    guided_prediction,
    make_generators,
    make_scheduler,
)
from chexgen.diffusion.samplers import model_calls_per_image
from chexgen.errors import ChexgenError
from chexgen.models.dit import ChexGenDiT

KW = dict(sample_size=4, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2,
          caption_channels=8, max_text_len=5)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return perturb_(ChexGenDiT(**KW).eval(), std=0.03)


def _text(b, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, 5, 8, generator=g)
    mask = torch.ones(b, 5, dtype=torch.long)
    mask[:, 3:] = 0
    return emb, mask


def test_registry_and_scheduler_kinds():
    assert SAMPLERS == ("ddim", "iddpm", "dpmsolver++", "dpmsolver++3m", "dpmsolver++sde", "unipc", "euler",
                        "euler_a", "heun", "official")
    assert DEFAULT_STEPS["ddim"] == 100 and DEFAULT_STEPS["iddpm"] == 100 and DEFAULT_STEPS["dpmsolver++"] == 20
    assert isinstance(make_scheduler("ddim"), DDIMScheduler)
    assert isinstance(make_scheduler("dpmsolver++"), DPMSolverMultistepScheduler)
    three = make_scheduler("dpmsolver++3m")
    assert three.config.solver_order == 3 and three.config.algorithm_type == "dpmsolver++"
    assert make_scheduler("dpmsolver++sde").config.algorithm_type == "sde-dpmsolver++"
    assert isinstance(make_scheduler("unipc"), UniPCMultistepScheduler)
    assert isinstance(make_scheduler("euler"), EulerDiscreteScheduler)
    assert isinstance(make_scheduler("euler_a"), EulerAncestralDiscreteScheduler)
    assert isinstance(make_scheduler("heun"), HeunDiscreteScheduler)
    for name in SAMPLERS:  # every sampler runs on the model's own schedule
        cfg = make_scheduler(name, schedule=NoiseSchedule(beta_end=0.03)).config
        assert cfg.beta_end == 0.03 and cfg.beta_schedule == "linear"
    # model calls per image (guidance doubles a forward; Heun evaluates twice per step but the last)
    assert model_calls_per_image("dpmsolver++", 10) == 20 and model_calls_per_image("heun", 10) == 38
    assert model_calls_per_image("iddpm", 50, guidance_scale=1.0) == 50
    s = make_scheduler("iddpm")
    assert isinstance(s, DDPMScheduler) and s.config.variance_type == "learned_range"
    s.set_timesteps(100)
    # IDDPM respacing of 1000 steps to 100: round(linspace(0, 999, 100)).
    assert s.timesteps.tolist() == np.round(np.linspace(0, 999, 100)).astype(int)[::-1].tolist()
    d = make_scheduler("ddim")
    d.set_timesteps(100)
    assert d.timesteps[0] == 990 and d.timesteps[-1] == 0
    with pytest.raises(ChexgenError, match="unknown sampler"):
        make_scheduler("lms")


def test_guidance_one_equals_plain_conditional_prediction(model):
    x = torch.randn(3, 4, 4, 4)
    cond, uncond = _text(3, 1), _text(3, 2)
    t = torch.tensor([321])
    with torch.no_grad():
        plain = model(x, t.expand(3), *cond)
        guided = guided_prediction(model, x, t, cond, uncond, 1.0, always_batch=True)
    assert torch.allclose(guided, plain, atol=1e-5)


def test_guidance_formula_and_official_channels(model):
    x = torch.randn(2, 4, 4, 4)
    cond, uncond = _text(2, 1), _text(2, 2)
    t = torch.tensor([500])
    with torch.no_grad():
        c = model(x, t.expand(2), *cond)
        u = model(x, t.expand(2), *uncond)
        g = guided_prediction(model, x, t, cond, uncond, 4.0)
        off = guided_prediction(model, x, t, cond, uncond, 4.0, guided_channels=3)
    assert torch.allclose(g[:, :4], u[:, :4] + 4.0 * (c[:, :4] - u[:, :4]), atol=1e-4)
    assert torch.allclose(g[:, 4:], c[:, 4:], atol=1e-5)  # variance from the conditional branch
    assert torch.allclose(off[:, :3], g[:, :3], atol=1e-5)
    assert torch.allclose(off[:, 3:], c[:, 3:], atol=1e-5)  # 4th eps channel and variance unguided


def test_guided_prediction_batches_both_branches_in_one_forward(model):
    calls = []

    def spy(x, t, e, m):
        calls.append(x.shape[0])
        return model(x, t, e, m)

    with torch.no_grad():
        guided_prediction(spy, torch.randn(3, 4, 4, 4), torch.tensor([5]), _text(3), _text(3, 9), 4.0)
    assert calls == [6]


def test_ddim_eta_zero_is_deterministic_and_ignores_generator_state(model):
    cond, uncond = _text(2, 1), _text(2, 2)
    a = denoise(model, cond, uncond, make_generators([5, 6]), (4, 4, 4), "ddim", 6)
    gens = make_generators([5, 6])
    b = denoise(model, cond, uncond, gens, (4, 4, 4), "ddim", 6)
    assert torch.equal(a, b)
    # only the initial noise is drawn: the generators advanced by exactly one draw each
    ref = make_generators([5, 6])
    for g in ref:
        torch.randn((4, 4, 4), generator=g)
    assert all(torch.equal(g.get_state(), r.get_state()) for g, r in zip(gens, ref))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_image_depends_only_on_its_seed(model, sampler):
    emb, mask = _text(4, 1)
    uemb, umask = _text(4, 2)
    seeds = [11, 12, 13, 14]
    steps = 5
    batched = denoise(model, (emb, mask), (uemb, umask), make_generators(seeds), (4, 4, 4), sampler, steps)
    singles = torch.cat([
        denoise(model, (emb[i:i + 1], mask[i:i + 1]), (uemb[i:i + 1], umask[i:i + 1]),
                make_generators([s]), (4, 4, 4), sampler, steps)
        for i, s in enumerate(seeds)
    ])
    assert torch.allclose(batched, singles, rtol=1e-4, atol=1e-4)
    assert batched.abs().max() < 1e3
    other = denoise(model, (emb, mask), (uemb, umask), make_generators([99, 12, 13, 14]), (4, 4, 4), sampler, steps)
    assert not torch.allclose(other[0], batched[0]) and torch.allclose(other[1:], batched[1:], rtol=1e-4, atol=1e-4)


def test_iddpm_step_matches_learned_range_posterior_in_float64():
    """One respaced ancestral step equals the IDDPM formula computed from NoiseSchedule in float64."""
    sched = make_scheduler("iddpm")
    sched.set_timesteps(100)
    ts = sched.timesteps.tolist()
    k = 50
    t, t_prev = ts[k], ts[k + 1]
    s = NoiseSchedule()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 4, 4, generator=g)
    eps = torch.randn(1, 4, 4, 4, generator=g)
    v = torch.rand(1, 4, 4, 4, generator=g) * 2 - 1
    noise_gen = torch.Generator().manual_seed(7)
    out = sched.step(torch.cat([eps, v], 1), t, x, generator=[noise_gen]).prev_sample

    a_t, a_p = s.alphas_cumprod[t], s.alphas_cumprod[t_prev]
    beta = 1 - a_t / a_p  # respaced beta
    x64, e64, v64 = x.double(), eps.double(), v.double()
    x0 = (x64 - np.sqrt(1 - a_t) * e64) / np.sqrt(a_t)
    mean = (np.sqrt(a_p) * beta / (1 - a_t)) * x0 + (np.sqrt(1 - beta) * (1 - a_p) / (1 - a_t)) * x64
    post_var = beta * (1 - a_p) / (1 - a_t)
    frac = (v64 + 1) / 2
    log_var = frac * np.log(beta) + (1 - frac) * np.log(post_var)
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(7)).double()
    expected = mean + torch.exp(0.5 * log_var) * z
    assert torch.allclose(out.double(), expected, atol=2e-4)


def test_iddpm_needs_learned_variance():
    m = ChexGenDiT(**{**KW, "learn_sigma": False}).eval()
    with pytest.raises(ChexgenError, match="learned-variance"):
        denoise(m, _text(1), _text(1, 3), make_generators([0]), (4, 4, 4), "iddpm", 2)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_clip_latents_bounds_the_predicted_clean_latents(tiny_pipeline, sampler):
    from chexgen.diffusion.samplers import make_generators

    pipe = tiny_pipeline
    enc = pipe.encode_prompts(["a", "b"])
    free = pipe.sample_latents(enc, make_generators([0, 1]), sampler=sampler, num_inference_steps=4)
    pipe.config.clip_latents = 0.25
    try:
        clipped = pipe.sample_latents(enc, make_generators([0, 1]), sampler=sampler, num_inference_steps=4)
    finally:
        pipe.config.clip_latents = None
    assert free.abs().max() > 0.5  # a random model overshoots
    assert clipped.abs().max() <= 0.25 + 0.05  # the last step lands on a (clamped) clean estimate
