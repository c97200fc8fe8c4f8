"""Exponential moving average of model weights (what sampling uses after training).

The shadow copy is float32 and keyed by parameter name, so it can be saved as
safetensors and loaded straight into a fresh model for export. The decay ramps
up as ``min(decay, (1 + n) / (10 + n))`` with n the number of updates: a short
run (a few thousand CPU steps) would otherwise export weights still dominated by
the random initialisation.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """Float32 EMA of the trainable parameters of ``model``; buffers are copied, not averaged."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        self.decay = float(decay)
        self.warmup = warmup
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().float().clone() for name, p in model.named_parameters() if p.requires_grad
        }

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow weights towards ``model``'s current weights (call after each optimiser step)."""
        decay = self.current_decay()
        params = dict(model.named_parameters())
        shadows, currents = [], []
        for name, shadow in self.shadow.items():
            p = params[name]
            shadows.append(shadow)
            currents.append(p.detach().to(shadow.dtype))
        if shadows:
            # shadow <- shadow + (1 - decay) * (param - shadow)
            torch._foreach_lerp_(shadows, currents, 1.0 - decay)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model`` (in the model's dtype)."""
        params = dict(model.named_parameters())
        for name, shadow in self.shadow.items():
            params[name].copy_(shadow.to(params[name].dtype))

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily swap the EMA weights into ``model`` (e.g. to draw sample grids)."""
        backup = {name: p.detach().clone() for name, p in model.named_parameters() if name in self.shadow}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                params = dict(model.named_parameters())
                for name, value in backup.items():
                    params[name].copy_(value)

    def to(self, device: torch.device | str) -> "EMA":
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (safetensors-friendly); the update count travels as a 0-d tensor."""
        state = {f"shadow.{k}": v for k, v in self.shadow.items()}
        state["num_updates"] = torch.tensor(self.num_updates, dtype=torch.int64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = [k for k in self.shadow if f"shadow.{k}" not in state]
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} parameters, e.g. {missing[:3]}")
        for k in self.shadow:
            self.shadow[k] = state[f"shadow.{k}"].to(self.shadow[k].device, torch.float32).clone()
        self.num_updates = int(state["num_updates"])
