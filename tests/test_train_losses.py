"""The learned-variance objective against a direct float64 computation from first principles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from chexgen.diffusion.losses import VBConstants, learned_range_log_variance, learned_variance_loss
from chexgen.diffusion.schedule import NoiseSchedule


def _direct_vb(x0, xt, eps, v, t, betas):
    """Per-element bound term in bits, computed independently (Bayes' rule, scipy CDFs)."""
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = 1.0 if t == 0 else abar[t - 1]
    # q(x_{t-1} | x_t, x0) as the product of N(x_t; sqrt(a_t) x_{t-1}, b_t) and N(x_{t-1}; sqrt(abar_{t-1}) x0, 1-abar_{t-1})
    def posterior(x0_):
        if t == 0:
            prec = alphas[0] / betas[0]
            return xt * np.sqrt(alphas[0]) / betas[0] / prec, None
        prec = alphas[t] / betas[t] + 1.0 / (1.0 - abar_prev)
        mean = (np.sqrt(alphas[t]) * xt / betas[t] + np.sqrt(abar_prev) * x0_ / (1.0 - abar_prev)) / prec
        return mean, 1.0 / prec

    post_var_1 = betas[1] * (1 - abar[0]) / (1 - abar[1])
    min_var = post_var_1 if t == 0 else betas[t] * (1 - abar_prev) / (1 - abar[t])
    frac = (v + 1) / 2
    model_var = np.exp(frac * np.log(betas[t]) + (1 - frac) * np.log(min_var))
    x0_hat = (xt - np.sqrt(1 - abar[t]) * eps) / np.sqrt(abar[t])
    if t == 0:
        # q's mean at t=0 uses x0 directly: coef1 = 1, coef2 = 0 (abar_prev = 1)
        model_mean = x0_hat
        sd = np.sqrt(model_var)
        lo, hi = (x0 - 1 / 255 - model_mean) / sd, (x0 + 1 / 255 - model_mean) / sd
        p = np.where(x0 < -0.999, norm.cdf(hi), np.where(x0 > 0.999, norm.sf(lo), norm.cdf(hi) - norm.cdf(lo)))
        return -np.log(p) / math.log(2)
    true_mean, true_var = posterior(x0)
    model_mean, _ = posterior(x0_hat)
    kl = np.log(np.sqrt(model_var) / np.sqrt(true_var)) + (true_var + (true_mean - model_mean) ** 2) / (2 * model_var) - 0.5
    return kl / math.log(2)


@pytest.mark.parametrize("t", [0, 1, 37, 500, 999])
def test_loss_matches_direct_computation(t):
    schedule = NoiseSchedule()
    const = VBConstants.from_schedule(schedule)
    g = torch.Generator().manual_seed(t)
    shape = (3, 2, 4, 4)
    x0 = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    if t == 0:  # put data on the 8-bit grid the decoder term assumes, incl. both edge bins
        x0 = torch.round((x0 + 1) * 127.5) / 127.5 - 1
        x0[0, 0, 0, 0], x0[0, 0, 0, 1] = -1.0, 1.0
    noise = torch.randn(shape, generator=g, dtype=torch.float64)
    ts = torch.full((3,), t, dtype=torch.long)
    xt = schedule.add_noise(x0, noise, ts)
    eps = noise + 0.3 * torch.randn(shape, generator=g, dtype=torch.float64)
    v = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    out = learned_variance_loss(torch.cat([eps, v], 1), x0, xt, noise, ts, const)

    direct_vb = _direct_vb(x0.numpy(), xt.numpy(), eps.numpy(), v.numpy(), t, schedule.betas)
    direct_mse = ((eps - noise) ** 2).numpy()
    expected = direct_mse.mean(axis=(1, 2, 3)) + direct_vb.mean(axis=(1, 2, 3))
    # the loss runs in float32, so compare at float32 precision
    np.testing.assert_allclose(out.per_sample.numpy(), expected, rtol=2e-4, atol=1e-5)
    assert float(out.loss) == pytest.approx(expected.mean(), rel=2e-4)


def test_model_variance_matches_diffusers_learned_range():
    from diffusers import DDPMScheduler

    schedule = NoiseSchedule()
    sched = DDPMScheduler(**schedule.scheduler_kwargs(), variance_type="learned_range")
    const = VBConstants.from_schedule(schedule)
    for t in (1, 10, 400, 999):
        v = torch.tensor([[-1.0, -0.2, 0.5, 1.0]], dtype=torch.float64)
        ours = learned_range_log_variance(v, torch.tensor([t]), const)
        theirs = torch.stack([sched._get_variance(t, predicted_variance=x.reshape(1)) for x in v[0]]).reshape(1, -1)
        np.testing.assert_allclose(ours.numpy(), theirs.double().numpy(), rtol=1e-4)  # diffusers works in float32


def test_bound_term_trains_only_the_variance():
    const = VBConstants.from_schedule(NoiseSchedule())
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 4, 8, 8, generator=g)
    noise = torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([0, 5, 300, 999])
    xt = NoiseSchedule().add_noise(x0, noise, t)
    out = torch.randn(4, 8, 8, 8, generator=g).requires_grad_(True)
    learned_variance_loss(out, x0, xt, noise, t, const).loss.backward()
    expected_eps_grad = 2 * (out[:, :4] - noise) / out[:, :4].numel()  # d mean(mse) / d eps
    torch.testing.assert_close(out.grad[:, :4], expected_eps_grad.detach())
    assert out.grad[:, 4:].abs().sum() > 0  # the variance channels do get a gradient


def test_perfect_prediction_has_zero_kl():
    schedule = NoiseSchedule()
    const = VBConstants.from_schedule(schedule)
    x0 = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    noise = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    t = torch.tensor([10, 700])
    xt = schedule.add_noise(x0, noise, t)
    v = -torch.ones_like(x0)  # v = -1 selects the true posterior variance
    res = learned_variance_loss(torch.cat([noise, v], 1), x0, xt, noise, t, const)
    assert float(res.loss) == pytest.approx(0.0, abs=1e-5)
    worse = learned_variance_loss(torch.cat([noise, v * 0], 1), x0, xt, noise, t, const)
    assert float(worse.vb) > 1e-4


def test_rejects_single_width_output():
    const = VBConstants.from_schedule(NoiseSchedule())
    x = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match="2 x 4"):
        learned_variance_loss(x, x, x, x, torch.tensor([3]), const)


def test_min_snr_weighting_scales_only_the_clean_timesteps_mse():
    schedule = NoiseSchedule()
    const = VBConstants.from_schedule(schedule)
    g = torch.Generator().manual_seed(0)
    ts = torch.tensor([5, 100, 300, 600, 999])
    shape = (len(ts), 2, 4, 4)
    x0 = torch.rand(shape, generator=g) * 2 - 1
    noise = torch.randn(shape, generator=g)
    xt = schedule.add_noise(x0, noise, ts)
    pred = torch.cat([noise + 0.2 * torch.randn(shape, generator=g), torch.rand(shape, generator=g) * 2 - 1], 1)
    plain = learned_variance_loss(pred, x0, xt, noise, ts, const)
    weighted = learned_variance_loss(pred, x0, xt, noise, ts, const, snr_gamma=5.0)
    # SNR from the schedule directly: alphabar / (1 - alphabar)
    abar = np.cumprod(1.0 - np.asarray(schedule.betas, dtype=np.float64))[ts.numpy()]
    snr = abar / (1 - abar)
    mse = ((pred[:, :2] - noise) ** 2).mean(dim=(1, 2, 3)).numpy()
    vb = plain.per_sample.numpy() - mse
    expected = mse * np.minimum(snr, 5.0) / snr + vb
    np.testing.assert_allclose(weighted.per_sample.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert snr[0] > 5 > snr[-1]  # both regimes are covered: the first sample is down-weighted, the last is not
    assert weighted.per_sample[0] < plain.per_sample[0] and weighted.per_sample[-1] == plain.per_sample[-1]
    assert float(weighted.mse) == float(plain.mse)  # the logged MSE stays unweighted
    with pytest.raises(ValueError, match="snr_gamma"):
        learned_variance_loss(pred, x0, xt, noise, ts, const, snr_gamma=0.0)


def test_mse_weight_counts_regions_without_changing_a_samples_scale():
    schedule = NoiseSchedule()
    const = VBConstants.from_schedule(schedule)
    g = torch.Generator().manual_seed(1)
    ts = torch.tensor([10, 400, 900])
    shape = (3, 2, 4, 4)
    x0 = torch.rand(shape, generator=g) * 2 - 1
    noise = torch.randn(shape, generator=g)
    xt = schedule.add_noise(x0, noise, ts)
    eps = noise.clone()
    eps[:, :, :2, :2] += 1.0  # the error sits in one corner (4 of 16 cells), exactly 1 per element there
    pred = torch.cat([eps, torch.zeros(shape)], 1)
    plain = learned_variance_loss(pred, x0, xt, noise, ts, const)
    ones = learned_variance_loss(pred, x0, xt, noise, ts, const, mse_weight=torch.full((3, 1, 4, 4), 3.0))
    torch.testing.assert_close(ones.per_sample, plain.per_sample)  # a constant weight changes nothing
    corner = torch.ones(3, 1, 4, 4)
    corner[:, :, :2, :2] += 5.0  # 1 + 5 on the erroneous corner
    weighted = learned_variance_loss(pred, x0, xt, noise, ts, const, mse_weight=corner)
    vb = plain.per_sample - 0.25  # plain MSE: 4 of 16 cells with squared error 1
    # weighted mean over the weights' mean: (4 * 6 * 1) / (4 * 6 + 12 * 1) = 2/3
    torch.testing.assert_close(weighted.per_sample - vb, torch.full((3,), 2 / 3))
    assert float(weighted.mse) == float(plain.mse)  # the logged MSE stays unweighted
    both = learned_variance_loss(pred, x0, xt, noise, ts, const, mse_weight=corner, snr_gamma=5.0)
    abar = np.cumprod(1.0 - np.asarray(schedule.betas, dtype=np.float64))[ts.numpy()]
    snr = torch.tensor(abar / (1 - abar), dtype=torch.float32)
    torch.testing.assert_close(both.per_sample - vb, 2 / 3 * torch.clamp(snr, max=5.0) / snr)  # the two compose
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="mse_weight"):
            learned_variance_loss(pred, x0, xt, noise, ts, const, mse_weight=torch.full((3, 1, 4, 4), bad))
