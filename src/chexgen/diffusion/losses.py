"""The training objective of a learned-variance diffusion model (IDDPM "hybrid", as PixArt trains).

The network predicts, per latent channel, the noise ``eps`` and a value ``v`` in
[-1, 1] that places the reverse-step log-variance between the two natural
bounds (Nichol & Dhariwal 2021, "learned_range")::

    log sigma_t^2 = (v + 1)/2 * log beta_t + (1 - (v + 1)/2) * log beta~_t

with ``beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)`` the variance of the
true posterior q(x_{t-1} | x_t, x_0) (its value at t = 0 is 0, so the log is
"clipped": beta~_1 is used there).

The loss is ``L_simple + L_vb``:

* ``L_simple`` = mean squared error between predicted and true noise;
* ``L_vb`` = the variational-bound term for the sampled t, in bits per
  dimension: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0 and the
  discretised-Gaussian negative log-likelihood of x_0 for t = 0. The model mean
  inside this term is computed from a *detached* epsilon, so L_vb trains only
  the variance and L_simple alone drives the mean (IDDPM section 3.1).

With T = 1000 this per-sample weighting equals IDDPM's L_hybrid
(lambda = 0.001 times T terms); for other T the bound term is scaled by T / 1000
so its weight per sample does not change with the schedule length.

All schedule constants come from :class:`chexgen.diffusion.schedule.NoiseSchedule`
(``betas`` and ``alphas_cumprod``); everything else is derived here in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "LossOutput",
    "VBConstants",
    "gaussian_kl",
    "discretized_gaussian_nll",
    "learned_range_log_variance",
    "learned_variance_loss",
]

_LOG2 = math.log(2.0)


@dataclass
class VBConstants:
    """Per-timestep float64 constants of the posterior q(x_{t-1} | x_t, x_0), derived from betas."""

    betas: Tensor
    alphas_cumprod: Tensor
    sqrt_recip_alphas_cumprod: Tensor
    sqrt_recipm1_alphas_cumprod: Tensor
    posterior_mean_coef1: Tensor  # multiplies x_0
    posterior_mean_coef2: Tensor  # multiplies x_t
    posterior_log_variance_clipped: Tensor

    @classmethod
    def from_schedule(cls, schedule) -> "VBConstants":
        """Build from any object with ``betas`` and ``alphas_cumprod`` (arrays or tensors of length T)."""
        betas = torch.as_tensor(np.asarray(_as_numpy(schedule.betas)), dtype=torch.float64)
        abar = torch.as_tensor(np.asarray(_as_numpy(schedule.alphas_cumprod)), dtype=torch.float64)
        return cls.from_betas(betas, abar)

    @classmethod
    def from_betas(cls, betas: Tensor, alphas_cumprod: Tensor | None = None) -> "VBConstants":
        betas = betas.to(torch.float64)
        abar = torch.cumprod(1.0 - betas, 0) if alphas_cumprod is None else alphas_cumprod.to(torch.float64)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        # beta~_0 is 0 (q(x_-1 | ...) is a point mass); IDDPM uses beta~_1 in its place.
        post_log_var = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
        return cls(
            betas=betas,
            alphas_cumprod=abar,
            sqrt_recip_alphas_cumprod=torch.sqrt(1.0 / abar),
            sqrt_recipm1_alphas_cumprod=torch.sqrt(1.0 / abar - 1.0),
            posterior_mean_coef1=betas * torch.sqrt(abar_prev) / (1.0 - abar),
            posterior_mean_coef2=(1.0 - abar_prev) * torch.sqrt(1.0 - betas) / (1.0 - abar),
            posterior_log_variance_clipped=post_log_var,
        )

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _gather(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """values[t] reshaped to broadcast over ``like`` (B, ...), in like's dtype/device."""
    out = values.to(like.device)[t.to(like.device).long()].to(like.dtype)
    return out.reshape(-1, *([1] * (like.dim() - 1)))


def gaussian_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def _std_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_nll(x: Tensor, mean: Tensor, log_scale: Tensor, bin_width: float = 2.0 / 255.0) -> Tensor:
    """-log P(x) in nats for data on a grid in [-1, 1] with the given bin width (IDDPM's decoder term).

    The two outermost bins extend to -inf / +inf, so values outside [-1, 1] fall into them.
    """
    inv_std = torch.exp(-log_scale)
    upper = _std_normal_cdf((x - mean + bin_width / 2) * inv_std)
    lower = _std_normal_cdf((x - mean - bin_width / 2) * inv_std)
    edge = 1.0 - bin_width / 2  # centres of the first / last bins are -1 and +1
    prob = torch.where(x < -edge, upper, torch.where(x > edge, 1.0 - lower, upper - lower))
    return -torch.log(prob.clamp(min=1e-12))


def learned_range_log_variance(v: Tensor, t: Tensor, constants: VBConstants) -> Tensor:
    """Model log-variance for variance values ``v`` in [-1, 1] (interpolation between beta~_t and beta_t)."""
    min_log = _gather(constants.posterior_log_variance_clipped, t, v)
    max_log = _gather(torch.log(constants.betas), t, v)
    frac = (v + 1.0) / 2.0
    return frac * max_log + (1.0 - frac) * min_log


@dataclass
class LossOutput:
    """Loss terms, each averaged over the batch (``loss`` = ``mse`` + ``vb``)."""

    loss: Tensor
    mse: Tensor
    vb: Tensor
    per_sample: Tensor  # (B,) total loss of each sample, for logging by timestep


def learned_variance_loss(
    model_output: Tensor,
    x_start: Tensor,
    x_t: Tensor,
    noise: Tensor,
    timesteps: Tensor,
    constants: VBConstants,
    vb_weight: float | None = None,
    snr_gamma: float | None = None,
    mse_weight: Tensor | None = None,
) -> LossOutput:
    """The hybrid objective for a ``[eps, v]`` model output of shape (B, 2C, ...).

    Computed in float32 (bf16 activations are upcast) so the variance term's small
    logs stay accurate. ``vb_weight`` defaults to T / 1000 (see module docstring).
    ``snr_gamma`` turns on min-SNR weighting of the epsilon MSE (Hang et al. 2023): a
    sample at timestep t is weighted ``min(SNR_t, gamma) / SNR_t``, i.e. the nearly clean
    timesteps (SNR above gamma) count less and the noisy ones, where the coarse layout of
    the image is decided, count as before. ``mse_weight`` (non-negative, broadcastable to
    ``x_start``, e.g. ``[B, 1, h, w]``) weights the epsilon MSE per latent element; each
    sample's weighted mean is divided by its weights' mean, so a sample's MSE keeps its scale
    and only the share of its regions changes (``chexgen train-control --region-loss-weight``
    uses it to count the cells a condition marks more). The logged ``mse`` stays unweighted.
    """
    c = x_start.shape[1]
    if model_output.shape[1] != 2 * c:
        raise ValueError(
            f"model_output has {model_output.shape[1]} channels; a learned-variance model must output "
            f"2 x {c} (epsilon and variance values)"
        )
    out = model_output.float()
    x_start, x_t, noise = x_start.float(), x_t.float(), noise.float()
    eps, v = out[:, :c], out[:, c:]
    reduce_dims = tuple(range(1, x_start.dim()))

    mse = ((eps - noise) ** 2).mean(dim=reduce_dims)

    # Bound term: mean frozen (stop-gradient on eps), only the variance learns from it.
    eps_frozen = eps.detach()
    pred_x0 = _gather(constants.sqrt_recip_alphas_cumprod, timesteps, x_t) * x_t - _gather(
        constants.sqrt_recipm1_alphas_cumprod, timesteps, x_t
    ) * eps_frozen
    model_mean = _gather(constants.posterior_mean_coef1, timesteps, x_t) * pred_x0 + _gather(
        constants.posterior_mean_coef2, timesteps, x_t
    ) * x_t
    model_log_var = learned_range_log_variance(v, timesteps, constants)

    true_mean = _gather(constants.posterior_mean_coef1, timesteps, x_t) * x_start + _gather(
        constants.posterior_mean_coef2, timesteps, x_t
    ) * x_t
    true_log_var = _gather(constants.posterior_log_variance_clipped, timesteps, x_t)

    kl = gaussian_kl(true_mean, true_log_var, model_mean, model_log_var).mean(dim=reduce_dims) / _LOG2
    nll = discretized_gaussian_nll(x_start, model_mean, 0.5 * model_log_var).mean(dim=reduce_dims) / _LOG2
    vb = torch.where(timesteps.to(kl.device) == 0, nll, kl)
    weight = constants.num_timesteps / 1000.0 if vb_weight is None else vb_weight
    vb = vb * weight

    mse_term = mse
    if mse_weight is not None:
        w = mse_weight.float().to(eps.device).expand_as(eps)
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError("mse_weight must be finite and non-negative")
        mse_term = ((eps - noise) ** 2 * w).mean(dim=reduce_dims) / w.mean(dim=reduce_dims).clamp_min(1e-12)
    if snr_gamma is not None:
        if snr_gamma <= 0:
            raise ValueError(f"snr_gamma must be > 0, got {snr_gamma}")
        snr = 1.0 / _gather(constants.sqrt_recipm1_alphas_cumprod, timesteps, mse).pow(2)
        mse_term = mse_term * torch.clamp(snr, max=snr_gamma) / snr
    per_sample = mse_term + vb
    return LossOutput(loss=per_sample.mean(), mse=mse.mean().detach(), vb=vb.mean().detach(), per_sample=per_sample.detach())
