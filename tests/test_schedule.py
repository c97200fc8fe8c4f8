"""NoiseSchedule: the paper's constants and the forward process."""

from __future__ import annotations

import numpy as np
import torch

from chexgen.diffusion.schedule import NoiseSchedule


def test_linear_betas_and_derived_arrays():
    s = NoiseSchedule()
    assert s.betas.dtype == np.float64 and len(s.betas) == 1000
    assert s.betas[0] == 1e-4 and abs(s.betas[-1] - 0.02) < 1e-15
    assert np.allclose(s.alphas_cumprod, np.cumprod(1 - s.betas))
    assert s.alphas_cumprod_prev[0] == 1.0 and s.alphas_cumprod_prev[5] == s.alphas_cumprod[4]
    # posterior variance of the learned-range lower bound: beta_t (1 - abar_{t-1}) / (1 - abar_t)
    t = 10
    pv = s.betas[t] * (1 - s.alphas_cumprod[t - 1]) / (1 - s.alphas_cumprod[t])
    assert np.isclose(np.exp(s.posterior_log_variance_clipped[t]), pv)
    assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]


def test_add_noise_per_sample():
    s = NoiseSchedule()
    x0 = torch.ones(3, 2, 2, 2)
    noise = torch.full_like(x0, 2.0)
    t = torch.tensor([0, 500, 999])
    xt = s.add_noise(x0, noise, t)
    for i, ti in enumerate(t.tolist()):
        a = s.alphas_cumprod[ti]
        assert torch.allclose(xt[i], torch.full((2, 2, 2), np.sqrt(a) + 2 * np.sqrt(1 - a), dtype=torch.float32))


def test_matches_diffusers_scheduler_constants():
    from diffusers import DDPMScheduler

    s = NoiseSchedule()
    d = DDPMScheduler(**s.scheduler_kwargs())
    assert torch.allclose(d.alphas_cumprod.double(), s.tensor("alphas_cumprod"), atol=1e-6)
