"""The official sampler (IDDPM ancestral, respaced, learned variance, CFG on 3 eps channels) on a converted model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from chexgen.diffusion.samplers import denoise, guided_prediction, make_generators, make_scheduler
from chexgen.models.official import load_official_transformer

sys.path.insert(0, str(Path(__file__).parent))
from test_official_convert import CAP, HEADS, IN_CH, TOKENS, official_state_dict  # noqa: E402

GRID = 4  # 8x8 latents


@pytest.fixture(scope="module")
def official_model():
    sd = official_state_dict(grid=GRID, seed=3)
    model, _, _ = load_official_transformer({"state_dict_ema": sd}, num_heads=HEADS, interpolation_scale=1.0)
    return model


def _text(bsz=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(bsz, TOKENS, CAP, generator=g)
    mask = torch.zeros(bsz, TOKENS, dtype=torch.long)
    mask[0, :5] = 1
    mask[1, :2] = 1
    return emb, mask


def iddpm_reference(model, cond, generators, shape, steps, num_train=1000):
    """Respaced IDDPM ancestral sampling with learned-range variance, from the IDDPM formulas (float64).

    Noise is drawn per image from its own generator, in the order chexgen uses
    (initial noise, then one draw per step except the last), so results are comparable.
    """
    betas = np.linspace(1e-4, 0.02, num_train, dtype=np.float64)
    acp_full = np.cumprod(1.0 - betas)
    kept = np.round(np.linspace(0, num_train - 1, steps)).astype(int)  # IDDPM space_timesteps
    acp = acp_full[kept]
    acp_prev = np.append(1.0, acp[:-1])
    new_betas = 1.0 - acp / acp_prev
    post_var = new_betas * (1.0 - acp_prev) / (1.0 - acp)
    post_logvar_clipped = np.log(np.append(post_var[1], post_var[1:]))
    coef_x0 = new_betas * np.sqrt(acp_prev) / (1.0 - acp)
    coef_xt = (1.0 - acp_prev) * np.sqrt(1.0 - new_betas) / (1.0 - acp)

    x = torch.stack([torch.randn(shape, generator=g) for g in generators]).double()
    c = shape[0]
    for i in reversed(range(steps)):
        t = torch.full((x.shape[0],), int(kept[i]))
        with torch.no_grad():
            out = model(x.float(), t, cond[0], cond[1]).double()
        eps, v = out[:, :c], out[:, c:]
        frac = (v + 1) / 2
        logvar = frac * np.log(new_betas[i]) + (1 - frac) * post_logvar_clipped[i]
        x0 = np.sqrt(1.0 / acp[i]) * x - np.sqrt(1.0 / acp[i] - 1) * eps
        mean = coef_x0[i] * x0 + coef_xt[i] * x
        if i > 0:
            noise = torch.stack([torch.randn((1, *shape), generator=g)[0] for g in generators]).double()
            x = mean + torch.exp(0.5 * logvar) * noise
        else:
            x = mean
    return x


def test_official_sampler_guidance_one_equals_unguided_iddpm(official_model):
    cond = _text()
    uncond = official_model.null_text(2, mask_like=cond[1])
    shape = (IN_CH, 2 * GRID, 2 * GRID)
    guided = denoise(official_model, cond, uncond, make_generators([11, 12]), shape, sampler="official",
                     num_inference_steps=10, guidance_scale=1.0)
    unguided = denoise(official_model, cond, None, make_generators([11, 12]), shape, sampler="official",
                       num_inference_steps=10, guidance_scale=4.0)
    torch.testing.assert_close(guided, unguided, atol=1e-6, rtol=1e-6)
    plain = denoise(official_model, cond, None, make_generators([11, 12]), shape, sampler="iddpm",
                    num_inference_steps=10)
    torch.testing.assert_close(guided, plain, atol=1e-6, rtol=1e-6)
    # ... and that is respaced IDDPM ancestral sampling with the learned variance.
    ref = iddpm_reference(official_model, cond, make_generators([11, 12]), shape, steps=10)
    torch.testing.assert_close(guided.double(), ref, atol=2e-4, rtol=2e-4)


def test_official_cfg_guides_first_three_eps_channels_only(official_model):
    cond = _text(seed=1)
    uncond = official_model.null_text(2, mask_like=cond[1])
    x = torch.randn(2, IN_CH, 2 * GRID, 2 * GRID, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([500])
    with torch.no_grad():
        c = official_model(x, t.expand(2), *cond)
        u = official_model(x, t.expand(2), *uncond)
        # Guidance 1 through the batched cond/uncond forward is the conditional prediction.
        g1 = guided_prediction(official_model, x, t, cond, uncond, 1.0, guided_channels=3, always_batch=True)
        g4 = guided_prediction(official_model, x, t, cond, uncond, 4.0, guided_channels=3)
    torch.testing.assert_close(g1, c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g4[:, :3], u[:, :3] + 4.0 * (c[:, :3] - u[:, :3]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g4[:, 3:], c[:, 3:], atol=1e-5, rtol=1e-5)  # eps channel 3 + variance: conditional
    assert (c[:, :3] - u[:, :3]).abs().max() > 1e-3  # the null caption really differs from the prompt


def test_official_sampler_timesteps_are_iddpm_respacing():
    sched = make_scheduler("official")
    sched.set_timesteps(100)
    want = np.round(np.linspace(0, 999, 100)).astype(int)[::-1]
    assert sched.timesteps.tolist() == want.tolist()
    assert sched.timesteps[0] == 999 and sched.timesteps[-1] == 0 and sched.timesteps[-2] == 10
