"""Mask- and box-guided generation: a ChexGenPipeline plus a ControlNet adapter.

Conditions (:class:`~chexgen.data.condition_sources.ConditionInput`: masks and
boxes of one image) are rendered with the fixed palette at the model
resolution, encoded by the pipeline's own VAE (posterior mean), and fed to the
adapter at every denoising step.

**Guidance with control** (``control_guidance``). Classifier-free guidance batches the
conditional and unconditional (null caption) branches. Two ways to combine them with a condition:

- ``"joint"``: the condition goes into the conditional branch only; the unconditional branch is
  the base model with the null caption and no control. The guided epsilon
  ``eps(x, null) + s * (eps(x, text, c) - eps(x, null))`` then contrasts text *and* condition,
  so the guidance scale amplifies the control as it amplifies the text.
- ``"shared"``: the condition latent goes into *both* halves, so the guided epsilon
  ``eps(x, null, c) + s * (eps(x, text, c) - eps(x, null, c))`` contrasts the text only and the
  spatial control acts unguided, at its trained strength, in both branches. (The official
  control sampler ran the conditional branch alone, i.e. no guidance.)

An adapter's default is stored in its ``control_info.json`` (``chexgen train-control`` writes
``joint``); adapters without one (converted official weights, packs made before the setting
existed) use ``shared``, the behaviour they had. On the bundled demo model's adapter, ``joint`` raised the hit
rate of ``benchmarks/control.py --model`` from 0.57 to 0.64 for masks and from 0.48 to 0.63 for
boxes (segmenter ceiling 0.73 / 0.67; see the Benchmarks page).

The adapter folder (``ChexGenControlNet.save_pretrained``) is separate from the
base pipeline folder; ``control_info.json`` in it records which base it was
trained on.

Sampling settings, seeds, batching and latent clipping are the base pipeline's
(:class:`~chexgen.pipelines.base.DiffusionPipelineBase`): the control pipeline only adds the
condition latents to the denoiser, so with ``conditioning_scale = 0`` it samples exactly
like the text-to-image pipeline.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from chexgen.data.condition_sources import ConditionInput
from chexgen.data.conditions import render_binary_condition, render_condition
from chexgen.errors import ChexgenError
from chexgen.models.controlnet import (
    OFFICIAL_BINARY_PALETTE_ID,
    ChexGenControlNet,
    controlled_forward,
    load_controlnet,
)
from chexgen.models.text_encoder import TextEmbeddings
from chexgen.pipelines.base import SamplingSettings, check_prompts, image_generators, image_seeds
from chexgen.pipelines.text2img import ChexGenPipeline

__all__ = ["ChexGenControlPipeline", "ControlPipelineOutput", "control_model_fn", "pair_prompts", "CONTROL_INFO",
           "CONTROL_GUIDANCE", "check_control_guidance",
           "ControlInfo"]

log = logging.getLogger(__name__)

CONTROL_INFO = "control_info.json"
# How classifier-free guidance treats the condition (module docstring); the first is train-control's default.
CONTROL_GUIDANCE = ("joint", "shared")
LEGACY_CONTROL_GUIDANCE = "shared"  # adapters whose control_info.json does not say


def check_control_guidance(value: str) -> str:
    """``value`` if it is one of :data:`CONTROL_GUIDANCE`, else a clear error."""
    if value not in CONTROL_GUIDANCE:
        raise ChexgenError(f"control guidance must be one of {', '.join(CONTROL_GUIDANCE)}, got {value!r}")
    return value


@dataclass
class ControlInfo:
    """What ``control_info.json`` beside an adapter records (one schema for every writer).

    base_model: the base pipeline (absolute, or relative to the adapter folder as in a packed model);
    base_checkpoint_sha256: SHA-256 of the base transformer weights it was trained on; condition_name /
    missing_condition: the cached condition it learned from and how missing ones were filled; data: the
    training cache; resolution: image size in pixels; control_guidance: how sampling guides the
    condition by default (:data:`CONTROL_GUIDANCE`; ``None``: the legacy ``shared``).
    """

    base_model: str
    base_checkpoint_sha256: str | None = None
    condition_name: str | None = None
    data: str | None = None
    missing_condition: str | None = None
    resolution: int | None = None
    control_guidance: str | None = None

    def write(self, directory: "str | os.PathLike") -> Path:
        from dataclasses import asdict

        from chexgen.utils import atomic_write_json

        path = Path(directory) / CONTROL_INFO
        atomic_write_json(path, asdict(self))
        return path

    @classmethod
    def read(cls, directory: "str | os.PathLike") -> "ControlInfo | None":
        """The info of an adapter folder, or None when it has none."""
        path = Path(directory) / CONTROL_INFO
        if not path.is_file():
            return None
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ChexgenError(f"{path}: unreadable ({err})") from None
        if not isinstance(d, dict) or not d.get("base_model"):
            raise ChexgenError(f"{path}: 'base_model' is missing")
        d.setdefault("base_checkpoint_sha256", d.get("trained_on_base_sha256"))  # written by chexgen <= 0.1 packs
        known = {f: d.get(f) for f in cls.__dataclass_fields__}
        return cls(**known)


def control_model_fn(
    transformer: torch.nn.Module,
    adapter: ChexGenControlNet | None,
    control_latents: torch.Tensor,
    conditioning_scale: float = 1.0,
    control_guidance: str = LEGACY_CONTROL_GUIDANCE,
) -> Callable[..., torch.Tensor]:
    """A ``model(latents, t, emb, mask)`` for :func:`chexgen.diffusion.samplers.denoise` with control bound.

    The sampler stacks ``[conditional; unconditional]`` (each in image order) when
    guiding. With ``control_guidance="shared"`` the control latents are tiled the same
    way, so both halves see the condition of their image; with ``"joint"`` the
    conditional half sees it and the unconditional half runs the base model alone
    (module docstring). An unguided batch (one half) always sees the condition.
    """
    check_control_guidance(control_guidance)
    n = control_latents.shape[0]

    def model(latents: torch.Tensor, timesteps, text_embeddings, text_mask=None) -> torch.Tensor:
        reps, rest = divmod(latents.shape[0], n)
        if rest or reps < 1:
            raise ChexgenError(f"batch of {latents.shape[0]} latents does not tile {n} condition latents")
        if reps == 2 and control_guidance == "joint" and adapter is not None and conditioning_scale != 0:
            def half(x, part: slice):
                return x[part] if torch.is_tensor(x) and x.ndim > 0 else x

            cond, uncond = slice(0, n), slice(n, 2 * n)
            out_c = controlled_forward(transformer, adapter, latents[cond], half(timesteps, cond),
                                       text_embeddings[cond], half(text_mask, cond), control_latents,
                                       conditioning_scale)
            out_u = controlled_forward(transformer, None, latents[uncond], half(timesteps, uncond),
                                       text_embeddings[uncond], half(text_mask, uncond), None)
            return torch.cat([out_c, out_u])
        control = control_latents if reps == 1 else control_latents.repeat(reps, 1, 1, 1)
        return controlled_forward(transformer, adapter, latents, timesteps, text_embeddings, text_mask,
                                  control, conditioning_scale)

    return model


@dataclass
class ControlPipelineOutput:
    """Images ``[N, 1, H, W]`` in [0, 1] (CPU), the rendered conditions ``[N, 1, H, W]``, and per image
    its prompt, seed and the id of its condition."""

    images: torch.Tensor
    conditions: torch.Tensor
    prompts: list[str]
    seeds: list[int]
    condition_ids: list[str]


class ChexGenControlPipeline:
    """Text + spatial condition -> radiograph. ``base`` is a :class:`ChexGenPipeline`."""

    def __init__(self, base: ChexGenPipeline, controlnet: ChexGenControlNet, conditioning_scale: float = 1.0,
                 control_guidance: str = LEGACY_CONTROL_GUIDANCE) -> None:
        controlnet.check_compatible(base.transformer)
        self.base = base
        self.controlnet = controlnet.eval()
        self.conditioning_scale = float(conditioning_scale)
        self.control_guidance = check_control_guidance(control_guidance)
        self.control_path: Path | None = None

    @classmethod
    def from_pretrained(cls, control_path: str | os.PathLike, base: "str | os.PathLike | ChexGenPipeline | None" = None,
                        device=None, **base_kwargs: Any) -> "ChexGenControlPipeline":
        """Load an adapter folder and its base.

        The base is ``base`` if given, else the pipeline recorded in the adapter's
        ``control_info.json`` (``chexgen train-control`` writes an absolute path; a relative
        one, as in the bundled demo model, is taken from the adapter folder), else the folder that
        contains the adapter (``chexgen convert-official --control`` layout).
        """
        control_path = Path(control_path)
        info = ControlInfo.read(control_path)
        if base is None:
            if info is not None:
                base = info.base_model
                if not Path(base).is_absolute():  # a packed model names its base relative to the adapter
                    base = control_path / base
            elif (control_path.parent / "chexgen_config.json").is_file():
                base = control_path.parent  # convert-official --control writes <pipeline>/controlnet/
            else:
                raise ChexgenError(f"{control_path}: no {CONTROL_INFO} naming the base model; pass the base pipeline")
        if not isinstance(base, ChexGenPipeline):
            base = ChexGenPipeline.from_pretrained(base, **base_kwargs)
        adapter = load_controlnet(str(control_path), transformer=base.transformer)
        torch.nn.Module.to(adapter, device=base.device, dtype=base.dtype)  # plain move, no diffusers dtype warning
        guidance = info.control_guidance if info is not None and info.control_guidance else LEGACY_CONTROL_GUIDANCE
        pipe = cls(base, adapter, control_guidance=guidance)
        pipe.control_path = control_path
        if device is not None:
            pipe.to(device)
        return pipe

    def to(self, device=None, dtype=None, precision: str | None = None) -> "ChexGenControlPipeline":
        """Move base and adapter; ``precision`` / ``dtype`` as :meth:`ChexGenPipeline.to` (the adapter follows)."""
        self.base.to(device=device, dtype=dtype, precision=precision)
        torch.nn.Module.to(self.controlnet, device=self.base.device, dtype=self.base.dtype)
        return self

    @property
    def resolution(self) -> int:
        """Image size in pixels (the base pipeline's)."""
        return self.base.config.resolution

    @property
    def fit_policy(self) -> str:
        """How conditions are squared to the image (``crop`` or ``pad``), as the adapter was trained."""
        return self.controlnet.config.fit_policy

    # ------------------------------------------------------------------ conditions
    def render(self, condition: ConditionInput) -> np.ndarray:
        """The condition image (``resolution`` square, float in [0, 1]) of one :class:`ConditionInput`.

        Drawn with the adapter's palette: chexgen's gray class levels, or white-on-black
        for a converted official (binary mask) adapter.
        """
        draw = render_binary_condition if self.controlnet.config.palette == OFFICIAL_BINARY_PALETTE_ID \
            else render_condition
        return draw(self.resolution, condition.masks, condition.boxes, frame=(condition.width, condition.height),
                    policy=self.fit_policy, where=f"condition {condition.id!r}")

    @torch.no_grad()
    def encode_conditions(self, images: torch.Tensor) -> torch.Tensor:
        """VAE posterior-mean latents of condition images ``[B, 1, H, W]`` (as ``chexgen prepare`` caches them)."""
        if images.shape[-1] != self.resolution or images.shape[-2] != self.resolution:
            raise ChexgenError(f"condition images are {tuple(images.shape[-2:])}, the model makes {self.resolution} px")
        return self.base.vae.encode(images.to(self.base.device)).to(self.base.dtype)

    # ------------------------------------------------------------------ sampling
    def render_all(self, conditions: Sequence[ConditionInput]) -> torch.Tensor:
        """Condition images ``[N, 1, H, W]`` of ``conditions`` (each checked and drawn)."""
        return torch.stack([torch.from_numpy(self.render(c))[None] for c in conditions])

    def _scale(self, conditioning_scale: float | None) -> float:
        scale = self.conditioning_scale if conditioning_scale is None else float(conditioning_scale)
        if not np.isfinite(scale) or scale < 0:
            raise ChexgenError(f"conditioning_scale must be a finite number >= 0, got {conditioning_scale!r}")
        return scale

    def _guidance(self, control_guidance: str | None) -> str:
        return self.control_guidance if control_guidance is None else check_control_guidance(control_guidance)

    @torch.no_grad()
    def sample_latents(
        self,
        cond: TextEmbeddings,
        control_latents: torch.Tensor,
        generators: Sequence[torch.Generator],
        sampler: str | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        conditioning_scale: float | None = None,
        eta: float = 0.0,
        control_guidance: str | None = None,
    ) -> torch.Tensor:
        """Clean latents for encoded prompts and condition latents (one row each, one generator each).

        ``control_guidance``: ``joint`` / ``shared`` (module docstring); default the adapter's."""
        if control_latents.shape[0] != len(cond):
            raise ChexgenError(f"{control_latents.shape[0]} condition latents for {len(cond)} prompts")
        base = self.base
        settings = base.sampling_settings(sampler, num_inference_steps, guidance_scale, eta)
        model = control_model_fn(base.transformer, self.controlnet, control_latents.to(base.device, base.dtype),
                                 self._scale(conditioning_scale), self._guidance(control_guidance))
        return base.denoise_latents(model, cond, generators, settings)

    @torch.no_grad()
    def generate_rendered(
        self,
        prompts: Sequence[str],
        rendered: torch.Tensor,
        generators: Sequence[torch.Generator],
        settings: SamplingSettings,
        conditioning_scale: float | None = None,
        batch_size: int = 8,
        progress: bool = True,
        control_guidance: str | None = None,
    ) -> torch.Tensor:
        """Images for one prompt, one rendered condition ``[1, H, W]`` and one generator per image."""
        if len(prompts) != rendered.shape[0] or len(generators) != len(prompts):
            raise ChexgenError(f"{len(prompts)} prompts, {rendered.shape[0]} conditions and {len(generators)} "
                               "generators: give one of each per image")
        scale = self._scale(conditioning_scale)
        guidance = self._guidance(control_guidance)
        base = self.base

        def model_for(sl: slice):
            control = self.encode_conditions(rendered[sl])
            return control_model_fn(base.transformer, self.controlnet, control, scale, guidance)

        return base.generate_batches(list(prompts), generators, settings, batch_size=batch_size, progress=progress,
                                     desc="generating with control", model_for=model_for)

    @torch.no_grad()
    def __call__(
        self,
        prompts: "str | Sequence[str]",
        conditions: Sequence[ConditionInput],
        num_images_per_condition: int = 1,
        seed: int = 0,
        seeds: Sequence[int] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        conditioning_scale: float | None = None,
        sampler: str | None = None,
        batch_size: int = 8,
        progress: bool = True,
        eta: float = 0.0,
        control_guidance: str | None = None,
    ) -> ControlPipelineOutput:
        """Generate ``len(conditions) * num_images_per_condition`` images (condition-major order).

        ``prompts``: one prompt for all conditions, or one per condition; a condition
        that carries its own prompt (from a manifest) uses it when ``prompts`` is empty.
        Image k of condition i gets seed ``seed + i * num_images_per_condition + k``.
        ``control_guidance`` (``joint`` / ``shared``, module docstring) defaults to the adapter's.
        For folders of many conditions use :func:`chexgen.generation.generate_to_folder`,
        which streams them to disk instead of returning them all.
        """
        settings = self.base.sampling_settings(sampler, num_inference_steps, guidance_scale, eta)
        per_condition = pair_prompts(prompts, conditions)
        if isinstance(num_images_per_condition, bool) or not isinstance(num_images_per_condition, int) \
                or num_images_per_condition < 1:
            raise ChexgenError(f"num_images_per_condition must be >= 1, got {num_images_per_condition!r}")
        order = [i for i in range(len(conditions)) for _ in range(num_images_per_condition)]
        all_seeds = image_seeds(len(order), seed, seeds, what=f"image(s) ({len(conditions)} condition(s) x "
                                                             f"{num_images_per_condition})")
        rendered = self.render_all(conditions)  # validate every condition up front
        images = self.generate_rendered([per_condition[i] for i in order], rendered[order],
                                        image_generators(all_seeds), settings,
                                        conditioning_scale=conditioning_scale, batch_size=batch_size,
                                        progress=progress, control_guidance=control_guidance)
        return ControlPipelineOutput(
            images=images, conditions=rendered[order], prompts=[per_condition[i] for i in order],
            seeds=all_seeds, condition_ids=[conditions[i].id for i in order],
        )


def pair_prompts(prompts: "str | Sequence[str] | None", conditions: Sequence[ConditionInput]) -> list[str]:
    """One prompt per condition: one prompt for all, one each, or each condition's own text."""
    if not conditions:
        raise ChexgenError("no conditions given")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts or [])
    if not prompts:
        missing = [c.id for c in conditions if not c.prompt]
        if missing:
            raise ChexgenError(f"no prompt for condition(s) {missing[:5]}; give a prompt or a manifest with text")
        return check_prompts([c.prompt for c in conditions])
    prompts = check_prompts(prompts)
    if len(prompts) == 1:
        return prompts * len(conditions)
    if len(prompts) != len(conditions):
        raise ChexgenError(f"{len(prompts)} prompts for {len(conditions)} conditions; give 1 prompt or one per condition")
    return prompts
