"""The text-to-image task for the generic trainer: data, objective, samples and export.

:class:`DiffusionObjective` is the per-step maths: draw a latent from the
cached posterior moments, a timestep and noise, drop 10 % of captions to the
model's learned null caption, predict ``[eps, v]`` and score it with the
learned-variance loss. :func:`build_text_to_image_task` assembles it with the
cached (or on-the-fly) dataset into a :class:`~chexgen.training.trainer.TrainingTask`.
A ControlNet task can reuse ``DiffusionObjective`` by passing a model whose
forward also takes the condition latents (``extra_inputs``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from chexgen.diffusion.losses import VBConstants, learned_variance_loss
from chexgen.diffusion.schedule import NoiseSchedule
from chexgen.errors import ChexgenError
from chexgen.training.cache import CachedFeatures, RecordImages, caption_for, collate_features
from chexgen.training.config import TrainConfig
from chexgen.training.trainer import TrainingTask, unwrap

__all__ = ["DiffusionObjective", "OnTheFlyEncoder", "ManifestCaptionImages", "build_text_to_image_task",
           "resolve_vae_spec"]

log = logging.getLogger(__name__)


class OnTheFlyEncoder:
    """Turns a batch of images + captions into the cached-feature layout (for ``--encode-on-the-fly``)."""

    def __init__(self, vae, text_encoder, prompt_cleaning: str = "basic") -> None:
        self.vae, self.text_encoder, self.prompt_cleaning = vae, text_encoder, prompt_cleaning

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from chexgen.models.text_encoder import clean_prompt

        mean, std = self.vae.encode_moments(batch["image"])
        emb = self.text_encoder.encode([clean_prompt(c, self.prompt_cleaning) for c in batch["caption"]])
        device = batch["image"].device
        return {"latent_mean": mean.float(), "latent_std": std.float(),
                "text": emb.embeddings.to(device), "text_mask": emb.mask.to(device)}


class DiffusionObjective:
    """One training step's randomness and loss for a learned-variance epsilon model."""

    def __init__(
        self,
        schedule: NoiseSchedule | None = None,
        caption_dropout: float = 0.1,
        latent_sampling: str = "sample",
        encoder: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        extra_inputs: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        snr_gamma: float | None = None,
        mse_weight: Callable[[dict[str, Any]], torch.Tensor | None] | None = None,
        extra_loss: Callable[..., dict[str, torch.Tensor]] | None = None,
    ) -> None:
        self.schedule = schedule or NoiseSchedule()
        self.constants = VBConstants.from_schedule(self.schedule)
        self.caption_dropout = caption_dropout
        self.latent_sampling = latent_sampling
        self.encoder = encoder
        self.extra_inputs = extra_inputs
        self.snr_gamma = snr_gamma
        self.mse_weight = mse_weight
        # extra_loss(model, batch, pred, xt, t, text, mask) -> named terms, added to the loss and logged
        self.extra_loss = extra_loss

    def __call__(self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator) -> dict[str, torch.Tensor]:
        if self.encoder is not None and "image" in batch:
            batch = {**batch, **self.encoder(batch)}
        mean = batch["latent_mean"].float()
        device, b = mean.device, mean.shape[0]
        if self.latent_sampling == "sample" and "latent_std" in batch:
            x0 = mean + batch["latent_std"].float() * torch.randn(mean.shape, generator=generator, device=device)
        else:
            x0 = mean
        t = torch.randint(0, self.schedule.num_train_timesteps, (b,), generator=generator, device=device)
        noise = torch.randn(x0.shape, generator=generator, device=device)
        xt = self.schedule.add_noise(x0, noise, t)

        text, mask = batch["text"].float(), batch["text_mask"]
        dit = unwrap(model)
        if self.caption_dropout > 0:
            # torch.where keeps the null caption in the graph every step (zero gradient when no
            # caption is dropped), which DDP needs: a parameter must not be used only sometimes.
            drop = torch.rand(b, generator=generator, device=device) < self.caption_dropout
            null_emb, null_mask = dit.null_text(b, mask_like=mask)
            if null_emb.shape[1] != text.shape[1]:
                raise ChexgenError(
                    f"text tokens ({text.shape[1]}) must be padded to the model's max_text_len ({null_emb.shape[1]})"
                )
            text = torch.where(drop[:, None, None], null_emb.to(text.dtype), text)
            mask = torch.where(drop[:, None], null_mask.to(mask.dtype), mask)
        extra = self.extra_inputs(batch) if self.extra_inputs is not None else {}
        pred = model(xt, t, text, mask, **extra)
        weight = self.mse_weight(batch) if self.mse_weight is not None else None
        out = learned_variance_loss(pred, x0, xt, noise, t, self.constants, snr_gamma=self.snr_gamma,
                                    mse_weight=weight)
        terms = self.extra_loss(model, batch, pred, xt, t, text, mask) if self.extra_loss is not None else {}
        return {"loss": out.loss + sum(terms.values()), "mse": out.mse, "vb": out.vb, **terms}


class ManifestCaptionImages(RecordImages):
    """Images + captions straight from a manifest (on-the-fly encoding); failures are reported, not fatal."""

    def __init__(self, records, root, resolution, resize_policy="crop", text_field="auto") -> None:
        records = [r for r in records if caption_for(r, text_field)]
        super().__init__(records, root, resolution, resize_policy)
        self.text_field = text_field

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = super().__getitem__(i)
        item["caption"] = caption_for(self.records[i], self.text_field)
        item["id"] = self.records[i].id
        return item


def collate_images(items: list[dict[str, Any]]) -> dict[str, Any]:
    good = [it for it in items if it["error"] is None]
    for it in items:
        if it["error"] is not None:
            log.warning("on-the-fly: skipped %s: %s", it["id"], it["error"])
    if not good:
        raise ChexgenError("on-the-fly: every image of a batch failed to load; run `chexgen prepare` to list rejects")
    return {"image": torch.stack([it["image"] for it in good]), "caption": [it["caption"] for it in good]}


def resolve_vae_spec(cfg: TrainConfig, preset, cache_spec=None):
    """The VAE a run uses: --vae folder > the cache's VAE > the preset's."""
    from chexgen.models.presets import VAESpec

    if cfg.vae:
        return dataclasses.replace(preset.vae, name_or_path=str(cfg.vae), subfolder=None, scaling_factor=None)
    if cache_spec is not None and cache_spec.vae:
        return VAESpec.from_dict(cache_spec.vae)
    return preset.vae


def build_text_to_image_task(cfg: TrainConfig) -> TrainingTask:
    """Dataset, model (stage-2 initialised if asked), objective and hooks for ``chexgen train``."""
    from chexgen.models.dit import ChexGenDiT
    from chexgen.models.presets import get_preset

    preset = get_preset(cfg.preset)
    if not cfg.data:
        raise ChexgenError("train: no data given (a `chexgen prepare` folder, or a manifest with --encode-on-the-fly)")
    text_spec = preset.text_encoder
    encoder = None
    cache_spec = None
    frozen: list[nn.Module] = []
    if cfg.encode_on_the_fly:
        from chexgen.data.manifest import read_manifest
        from chexgen.models.text_encoder import load_text_encoder
        from chexgen.models.vae import RadiographVAE

        resolution = cfg.resolution or preset.resolution
        vae = RadiographVAE.from_spec(resolve_vae_spec(cfg, preset)).eval().requires_grad_(False)
        text_encoder = load_text_encoder(text_spec)
        manifest = Path(cfg.data)
        dataset = ManifestCaptionImages(read_manifest(manifest, data_root=cfg.data_root), manifest.parent,
                                        resolution, cfg.resize_policy, cfg.text_field)
        collate = collate_images
        encoder = OnTheFlyEncoder(vae, text_encoder)
        frozen = [vae, text_encoder]
        prompt_cleaning = "basic"
    else:
        dataset = CachedFeatures(cfg.data, load_std=cfg.latent_sampling == "sample")
        cache_spec = dataset.spec
        resolution = cfg.resolution or cache_spec.resolution
        if cache_spec.resolution != resolution:
            raise ChexgenError(f"{cfg.data}: cache is at {cache_spec.resolution} px but the run asks for {resolution} px")
        if cache_spec.embed_dim != text_spec.embed_dim or cache_spec.max_length != text_spec.max_length:
            raise ChexgenError(
                f"{cfg.data}: cached text is {cache_spec.embed_dim}-d x {cache_spec.max_length} tokens; preset "
                f"{preset.name} expects {text_spec.embed_dim}-d x {text_spec.max_length}"
            )
        collate = functools.partial(collate_features, pad_to=text_spec.max_length)
        prompt_cleaning = cache_spec.prompt_cleaning
    vae_spec = resolve_vae_spec(cfg, preset, cache_spec)

    latent = resolution // preset.vae.downsample
    torch.manual_seed(cfg.seed)  # same initial weights on every process and every (re)start
    model = ChexGenDiT.from_preset(preset, sample_size=latent, **cfg.transformer_overrides)
    if cfg.init_from:
        from chexgen.training.curriculum import load_stage1_weights

        load_stage1_weights(model, cfg.init_from, reinit_null_caption=cfg.reinit_null_caption)

    objective = DiffusionObjective(caption_dropout=cfg.caption_dropout, latent_sampling=cfg.latent_sampling,
                                   encoder=encoder, snr_gamma=cfg.snr_gamma)
    clip = cfg.clip_latents
    if clip is None and not cfg.encode_on_the_fly:
        clip = math.ceil(dataset.latent_abs_max() * 2) / 2
    assets = _PipelineAssets(preset.name, vae_spec, text_spec, resolution, prompt_cleaning,
                             encoder=encoder, clip_latents=clip or None)  # 0 = off
    return TrainingTask(
        name="text-to-image",
        model=model,
        loss_fn=objective,
        dataset=dataset,
        collate_fn=collate,
        config=cfg,
        sample_fn=functools.partial(assets.sample, prompts=cfg.sample_prompts, steps=cfg.sample_steps,
                                    guidance=cfg.sample_guidance, seed=cfg.seed) if cfg.sample_prompts else None,
        export_fn=assets.export,
        frozen=frozen,
    )


class _PipelineAssets:
    """Loads VAE + text encoder only when sampling or exporting (main process, end of run)."""

    def __init__(self, preset_name, vae_spec, text_spec, resolution, prompt_cleaning, encoder=None,
                 clip_latents: float | None = None) -> None:
        self.preset_name, self.vae_spec, self.text_spec = preset_name, vae_spec, text_spec
        self.resolution, self.prompt_cleaning, self.clip_latents = resolution, prompt_cleaning, clip_latents
        self._vae = encoder.vae if encoder is not None else None
        self._text = encoder.text_encoder if encoder is not None else None

    def components(self, device):
        from chexgen.models.text_encoder import load_text_encoder
        from chexgen.models.vae import RadiographVAE

        if self._vae is None:
            self._vae = RadiographVAE.from_spec(self.vae_spec).eval().requires_grad_(False)
        if self._text is None:
            self._text = load_text_encoder(self.text_spec)
        return self._vae.to(device), self._text.to(device)

    def pipeline(self, transformer: nn.Module):
        from chexgen.pipelines import ChexGenPipeline, PipelineConfig

        device = next(transformer.parameters()).device
        vae, text = self.components(device)
        config = PipelineConfig(preset=self.preset_name, resolution=self.resolution, text_encoder=self.text_spec,
                                vae=self.vae_spec, prompt_cleaning=self.prompt_cleaning,
                                clip_latents=self.clip_latents)
        return ChexGenPipeline(transformer, vae, text, config=config)

    def sample(self, transformer: nn.Module, prompts: Sequence[str], steps: int, guidance: float, seed: int):
        pipe = self.pipeline(transformer)
        out = pipe(list(prompts), seed=seed, num_inference_steps=steps, guidance_scale=guidance, progress=False)
        return out.images

    def export(self, transformer: nn.Module, directory: str | os.PathLike) -> None:
        self.pipeline(transformer).save_pretrained(directory)
