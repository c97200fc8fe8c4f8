"""RadiographVAE: the one place that maps gray radiographs to scaled latents and back.

Wraps a diffusers :class:`~diffusers.AutoencoderKL`. Two families:

- ``sd``: the RGB Stable Diffusion VAE (paper presets). A gray image in [0, 1] is
  mapped to [-1, 1] and repeated to 3 channels; decoded RGB is averaged back to
  one channel. Latents are multiplied by 0.18215.
- ``gray``: a small 1-channel AutoencoderKL for CPU-sized presets, built from
  config (random, to be trained by ``chexgen train-vae``) or loaded from a folder.

The scaling factor lives in the autoencoder's own config (``scaling_factor``),
so a saved VAE carries it; callers never scale latents themselves.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from diffusers import AutoencoderKL
from torch import nn

from chexgen.errors import ChexgenError
from chexgen.models.presets import VAESpec

__all__ = ["RadiographVAE", "build_gray_autoencoder"]


def build_gray_autoencoder(
    block_out_channels: Sequence[int] = (32, 64, 128, 128),
    latent_channels: int = 4,
    layers_per_block: int = 1,
    sample_size: int = 128,
    scaling_factor: float = 1.0,
    norm_num_groups: int | None = None,
) -> AutoencoderKL:
    """A small randomly initialised 1-channel AutoencoderKL.

    Downsampling is ``2 ** (len(block_out_channels) - 1)`` (8x for four blocks).
    ``scaling_factor`` should be set to ~1/std of the latents once trained.
    """
    n = len(block_out_channels)
    groups = norm_num_groups or min(32, min(block_out_channels))
    if any(c % groups for c in block_out_channels):
        raise ChexgenError(f"block_out_channels {tuple(block_out_channels)} must all be divisible by {groups}")
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        latent_channels=latent_channels,
        norm_num_groups=groups,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
    )


class RadiographVAE(nn.Module):
    """Gray radiograph <-> scaled latent autoencoder.

    Images are ``[B, 1, H, W]`` float in [0, 1] (bright = dense); latents are
    ``[B, latent_channels, H / downsample_factor, W / downsample_factor]``, already scaled.
    """

    def __init__(self, autoencoder: AutoencoderKL, spec: VAESpec | None = None) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        cfg = autoencoder.config
        if cfg.in_channels not in (1, 3):
            raise ChexgenError(f"VAE must take 1 or 3 input channels, got {cfg.in_channels}")
        self.spec = spec
        self.in_channels = int(cfg.in_channels)
        self.latent_channels = int(cfg.latent_channels)
        self.downsample_factor = 2 ** (len(cfg.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.autoencoder.config.scaling_factor)

    @property
    def device(self) -> torch.device:
        return next(self.autoencoder.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.autoencoder.parameters()).dtype

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_spec(cls, spec: VAESpec) -> "RadiographVAE":
        """Build (gray, no path) or load (gray folder / SD hub id or folder) the VAE of a preset."""
        if spec.kind == "gray" and not spec.name_or_path:
            ae = build_gray_autoencoder(spec.block_out_channels, spec.latent_channels,
                                        scaling_factor=spec.scaling_factor or 1.0)
            vae = cls(ae, spec)
        elif spec.kind in ("gray", "sd"):
            vae = cls.from_pretrained(spec.name_or_path, subfolder=spec.subfolder, spec=spec)
            if spec.scaling_factor is not None:
                vae.autoencoder.register_to_config(scaling_factor=float(spec.scaling_factor))
        else:
            raise ChexgenError(f"unknown VAE kind {spec.kind!r}; expected 'gray' or 'sd'")
        if vae.latent_channels != spec.latent_channels or vae.downsample_factor != spec.downsample:
            raise ChexgenError(
                f"VAE {spec.name_or_path or spec.kind} has {vae.latent_channels} latent channels and "
                f"{vae.downsample_factor}x downsampling; the preset expects {spec.latent_channels} and "
                f"{spec.downsample}x"
            )
        return vae

    @classmethod
    def from_pretrained(
        cls, path_or_id: str | os.PathLike, subfolder: str | None = None, spec: VAESpec | None = None
    ) -> "RadiographVAE":
        name = str(path_or_id)
        p = Path(name).expanduser()
        if (name.startswith((".", "/", "~")) or name.count("/") > 1) and not p.exists():
            raise ChexgenError(f"VAE folder {name} does not exist")
        try:
            ae = AutoencoderKL.from_pretrained(str(p) if p.exists() else name, subfolder=subfolder)
        except (OSError, ValueError, EnvironmentError) as err:
            raise ChexgenError(
                f"could not load a VAE from {name!r}{f' (subfolder {subfolder})' if subfolder else ''}: "
                f"{str(err).splitlines()[0] if str(err) else type(err).__name__}; pass a local folder when offline"
            ) from err
        return cls(ae, spec)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` + ``diffusion_pytorch_model.safetensors`` (scaling factor in the config)."""
        self.autoencoder.save_pretrained(str(directory), safe_serialization=True)

    # ------------------------------------------------------------------ gray <-> model space
    def _to_model_space(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be [B, 1, H, W] gray in [0, 1], got shape {tuple(images.shape)}")
        f = self.downsample_factor
        if images.shape[-1] % f or images.shape[-2] % f:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not divisible by the VAE factor {f}")
        x = images.to(device=self.device, dtype=self.dtype) * 2.0 - 1.0
        if self.in_channels == 3:
            x = x.repeat(1, 3, 1, 1)
        return x

    def _from_model_space(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 3:
            x = x.mean(dim=1, keepdim=True)
        return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    # ------------------------------------------------------------------ API
    def encode(
        self,
        images: torch.Tensor,
        sample: bool = False,
        generator: "torch.Generator | list[torch.Generator] | None" = None,
    ) -> torch.Tensor:
        """Scaled latents of ``images``: the posterior mean, or a sample when ``sample=True``."""
        dist = self.autoencoder.encode(self._to_model_space(images)).latent_dist
        z = dist.sample(generator=generator) if sample else dist.mean
        return z * self.scaling_factor

    def encode_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled posterior ``(mean, std)``; cache these and sample ``mean + std * noise`` later."""
        dist = self.autoencoder.encode(self._to_model_space(images)).latent_dist
        return dist.mean * self.scaling_factor, dist.std * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Gray images ``[B, 1, H, W]`` in [0, 1] from scaled latents."""
        z = latents.to(device=self.device, dtype=self.dtype) / self.scaling_factor
        return self._from_model_space(self.autoencoder.decode(z).sample)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the posterior mean (for quick checks)."""
        return self.decode(self.encode(images))
