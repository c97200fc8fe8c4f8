"""The gray-VAE task for the generic trainer (``chexgen train-vae``).

Objective: ``l1_weight * L1 + ssim_weight * (1 - SSIM) + kl_weight * KL`` on
images in [0, 1], reconstructing from a *sample* of the posterior (the decoder
must tolerate the noise the diffusion model's latents carry). No adversarial
term: at 128-256 px on radiographs L1 + SSIM already gives sharp enough bone
and vessel edges for the small presets, and a discriminator would double the
CPU cost.

Images are decoded and square-fitted once, kept in memory as float16 (a few
thousand 128 px images are ~100 MB), so a CPU step is pure compute. Unreadable
images (and bad manifest lines) go to ``<output_dir>/rejects.jsonl`` with
file, line, id and reason.

At export the VAE's ``scaling_factor`` is set from the data: 1 / std of the
latents of up to ``scaling_samples`` training images, so latents the diffusion
model sees have unit variance (the role 0.18215 plays for the SD VAE).

``decoder_only`` fine-tunes the decoder of an existing VAE and nothing else: the
encoder, ``quant_conv`` and ``scaling_factor`` are frozen, so the latent space,
and every diffusion model or ControlNet trained on it, is unchanged while
decoded images get sharper (how the SD VAE's later decoders were made).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from chexgen.data.manifest import Record, read_manifest_lines
from chexgen.data.rejects import RejectLog
from chexgen.errors import ChexgenError
from chexgen.evaluation.metrics.similarity import compute_ssim
from chexgen.training.cache import RecordImages
from chexgen.training.config import VAETrainConfig
from chexgen.training.trainer import TrainingTask, unwrap

__all__ = ["ssim", "VAEObjective", "InMemoryImages", "load_images", "latent_std", "freeze_encoder", "build_vae_task"]

log = logging.getLogger(__name__)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity of two [B, 1, H, W] batches (the evaluation metric, differentiable)."""
    return compute_ssim(x, y, data_range=data_range, win_size=win_size, sigma=sigma)


class VAEObjective:
    """L1 + SSIM + KL for a diffusers AutoencoderKL on gray images in [0, 1]."""

    def __init__(self, l1_weight: float = 1.0, ssim_weight: float = 0.2, kl_weight: float = 1e-6,
                 crop: int | None = None) -> None:
        self.l1_weight, self.ssim_weight, self.kl_weight, self.crop = l1_weight, ssim_weight, kl_weight, crop

    def __call__(self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator) -> dict[str, torch.Tensor]:
        images = batch["image"].float()
        h, w = images.shape[-2:]
        if self.crop and self.crop < min(h, w):
            # One random window per batch: the VAE is convolutional, so crops teach the same
            # local statistics at (size/crop)^2 less cost per step.
            top = int(torch.randint(0, h - self.crop + 1, (1,), generator=generator, device=generator.device))
            left = int(torch.randint(0, w - self.crop + 1, (1,), generator=generator, device=generator.device))
            images = images[..., top : top + self.crop, left : left + self.crop]
        x = images * 2.0 - 1.0
        ae = unwrap(model)
        posterior = ae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator,
                                                         device=x.device, dtype=posterior.mean.dtype)
        recon = ((ae.decode(z).sample.float() + 1.0) / 2.0)
        l1 = (recon - images).abs().mean()
        s = ssim(recon.clamp(0, 1), images)
        kl = posterior.kl().mean()
        loss = self.l1_weight * l1 + self.ssim_weight * (1.0 - s) + self.kl_weight * kl
        return {"loss": loss, "l1": l1.detach(), "ssim": s.detach(), "kl": kl.detach()}


class InMemoryImages(Dataset):
    """Decoded images ``[N, 1, H, W]`` float16 in [0, 1]; items are ``{"image": [1, H, W]}``."""

    def __init__(self, images: torch.Tensor, ids: Sequence[str], rejected: int = 0) -> None:
        self.images, self.ids = images, list(ids)
        self.rejected = rejected  # records of the manifest left out (listed in the rejects file)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i]}


def _as_list(items: list) -> list:
    return items


def _stack_images(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {"image": torch.stack([it["image"] for it in items])}


def load_images(records: Sequence[Record], root, resolution: int, resize_policy: str, rejects_path: Path,
                num_workers: int = 0, progress: bool = True, rejects: RejectLog | None = None,
                manifest_file: str | os.PathLike | None = None,
                record_lines: dict[str, int] | None = None) -> InMemoryImages:
    """Decode every image once (tqdm); unreadable ones are rejects, written to ``rejects_path``.

    ``rejects`` may already hold what the manifest reader left out; the file lists
    both (file, line, id, reason). No readable image at all is unusable input.
    """
    rejects = rejects if rejects is not None else RejectLog()
    where = str(manifest_file) if manifest_file is not None else "<records>"
    lines = record_lines or {}
    ds = RecordImages(records, root, resolution, resize_policy)
    loader = DataLoader(ds, batch_size=64, num_workers=num_workers, collate_fn=_as_list)
    images, ids = [], []
    for items in tqdm(loader, desc="load images", unit="batch", disable=not progress, dynamic_ncols=True):
        for it in items:
            rec = ds.records[it["index"]]
            if it["error"] is None:
                images.append(it["image"].to(torch.float16))
                ids.append(rec.id)
            else:
                rejects.add(where, lines.get(rec.id), f"image {rec.image}: {it['error']}", id=rec.id)
    rejects.write(rejects_path)
    if not images:
        raise ChexgenError(f"{where}: no readable images ({len(rejects)} rejected, listed in {rejects_path})")
    return InMemoryImages(torch.stack(images), ids, rejected=len(rejects))


@torch.no_grad()
def latent_std(autoencoder: nn.Module, images: torch.Tensor, batch_size: int = 32) -> float:
    """Std of posterior samples (unscaled) over ``images`` [N, 1, H, W] in [0, 1]."""
    device = next(autoencoder.parameters()).device
    g = torch.Generator(device=device).manual_seed(0)
    total, total_sq, n = 0.0, 0.0, 0
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size].to(device).float() * 2 - 1
        post = autoencoder.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g, device=device)
        total += float(z.double().sum())
        total_sq += float((z.double() ** 2).sum())
        n += z.numel()
    mean = total / n
    return math.sqrt(max(total_sq / n - mean**2, 1e-12))


def freeze_encoder(autoencoder: nn.Module) -> int:
    """Stop gradients into everything that makes a latent (encoder, ``quant_conv``); returns how many tensors."""
    parts = [autoencoder.encoder] + ([autoencoder.quant_conv] if getattr(autoencoder, "quant_conv", None) else [])
    frozen = 0
    for part in parts:
        for p in part.parameters():
            p.requires_grad_(False)
            frozen += 1
    return frozen


def build_vae_task(cfg: VAETrainConfig, records: Sequence[Record] | None = None, manifest_root=None,
                   limit: int | None = None) -> TrainingTask:
    """Images, AutoencoderKL (fresh or fine-tuned), objective, reconstruction grid and export hook.

    Without ``records`` the manifest ``cfg.data`` is read (its first ``limit``
    records); bad lines, duplicate ids, paths outside ``cfg.data_root`` and
    unreadable images are listed in ``<output_dir>/rejects.jsonl`` and counted in
    the task's ``rejected``.
    """
    from chexgen.models.presets import get_preset
    from chexgen.models.vae import RadiographVAE

    rejects = RejectLog()
    lines: dict[str, int] = {}
    if records is None:
        if not cfg.data:
            raise ChexgenError("train-vae: give a manifest of images")
        read = read_manifest_lines(cfg.data, rejects=rejects, data_root=cfg.data_root)[:limit]
        if not read:
            raise ChexgenError(f"{cfg.data}: the manifest holds no records; nothing to train on")
        records = [r for _, r in read]
        lines = {r.id: line for line, r in read}
        manifest_root = Path(cfg.data).parent
    preset = get_preset(cfg.preset)
    if preset.vae.kind != "gray":
        raise ChexgenError(f"train-vae trains the 1-channel VAE of the small presets; preset {preset.name} uses "
                           f"the {preset.vae.kind!r} VAE")
    resolution = cfg.resolution or preset.resolution
    torch.manual_seed(cfg.seed)  # same initial weights on every process and every (re)start
    vae = RadiographVAE.from_pretrained(cfg.init_from) if cfg.init_from else RadiographVAE.from_spec(preset.vae)
    if cfg.decoder_only:
        frozen = freeze_encoder(vae.autoencoder)
        log.info("train-vae: decoder only (%d encoder parameters frozen; scaling_factor %.4f kept)",
                 frozen, vae.autoencoder.config.scaling_factor)
    data = load_images(records, manifest_root, resolution, cfg.resize_policy, Path(cfg.output_dir) / "rejects.jsonl",
                       num_workers=cfg.num_workers, progress=cfg.progress, rejects=rejects,
                       manifest_file=cfg.data, record_lines=lines)
    log.info("train-vae: %d images at %d px in memory", len(data), resolution)
    preview = data.images[: min(8, len(data))]

    def sample(ae: nn.Module) -> torch.Tensor:
        x = preview.to(next(ae.parameters()).device).float()
        recon = (ae.decode(ae.encode(x * 2 - 1).latent_dist.mean).sample.float() + 1) / 2
        return torch.cat([x, recon.clamp(0, 1)])  # originals, then reconstructions

    def export(ae: nn.Module, directory: Path) -> None:
        if not cfg.decoder_only:  # decoder only: the latent space is the init's, and so is its scale
            std = latent_std(ae, data.images[: cfg.scaling_samples])
            ae.register_to_config(scaling_factor=1.0 / std)
            log.info("train-vae: latent std %.4f -> scaling_factor %.4f", std, 1.0 / std)
        RadiographVAE(ae, preset.vae).save_pretrained(directory)
        log.info("train-vae: saved %s (scaling_factor %.4f)", directory, ae.config.scaling_factor)

    return TrainingTask(
        name="vae",
        model=vae.autoencoder,
        loss_fn=VAEObjective(cfg.l1_weight, cfg.ssim_weight, cfg.kl_weight, crop=cfg.crop_size),
        dataset=data,
        collate_fn=_stack_images,
        config=cfg,
        sample_fn=sample,
        export_fn=export,
        export_dirname="vae",
        rejected=data.rejected,
    )
