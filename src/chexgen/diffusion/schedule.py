"""The noise schedule: the single source of the diffusion constants.

ChexGen (like PixArt-alpha and DiT) uses T = 1000 steps with betas linear from
1e-4 to 0.02 and epsilon prediction. Constants are computed once in float64;
training (``add_noise``, loss weights) and the samplers (via
:meth:`NoiseSchedule.scheduler_kwargs`) read them from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["NoiseSchedule", "NUM_TRAIN_TIMESTEPS", "BETA_START", "BETA_END"]

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 1e-4
BETA_END = 0.02


@dataclass
class NoiseSchedule:
    """Linear-beta DDPM schedule with its derived float64 arrays (numpy, and torch via ``tensor``).

    Attributes: ``betas``, ``alphas``, ``alphas_cumprod``, ``alphas_cumprod_prev``,
    ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod``,
    ``posterior_variance``, ``posterior_log_variance_clipped`` (IDDPM's
    learned-range lower bound), ``log_betas`` (its upper bound).
    """

    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
    beta_start: float = BETA_START
    beta_end: float = BETA_END
    prediction_type: str = "epsilon"
    betas: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        t = self.num_train_timesteps
        self.betas = np.linspace(self.beta_start, self.beta_end, t, dtype=np.float64)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = np.cumprod(self.alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.posterior_variance = self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The t = 0 posterior variance is 0; IDDPM clips the log with the t = 1 value.
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:])
        )
        self.log_betas = np.log(self.betas)

    def tensor(self, name: str, device=None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """One of the arrays above as a torch tensor."""
        return torch.from_numpy(np.asarray(getattr(self, name))).to(device=device, dtype=dtype)

    def _gather(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        arr = self.tensor(name, device=like.device)[t.to(like.device).long()]
        return arr.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward process q(x_t | x_0): ``sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise`` per sample."""
        return self._gather("sqrt_alphas_cumprod", t, x0) * x0 + self._gather(
            "sqrt_one_minus_alphas_cumprod", t, x0
        ) * noise

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio abar / (1 - abar) at integer timesteps (float64)."""
        a = self.tensor("alphas_cumprod", device=t.device)[t.long()]
        return a / (1.0 - a)

    def scheduler_kwargs(self) -> dict:
        """Keyword arguments that make a diffusers scheduler use exactly this schedule."""
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "beta_schedule": "linear",
            "prediction_type": self.prediction_type,
        }
