"""ChexGenPipeline: prompts -> synthetic chest radiographs, saved and loaded as one folder.

Parts, as in diffusers pipelines: ``transformer`` (:class:`ChexGenDiT`), ``vae``
(:class:`RadiographVAE`), ``text_encoder`` (:class:`TextEncoder`, loaded on first
use so training from cached features never pays for it) and the noise schedule
(``noise_schedule``, saved as the default sampler's diffusers scheduler config and read back on
load; each call builds a fresh scheduler on it, since schedulers carry state). Defaults, input
checks, seeds, batching and latent clipping live in :mod:`chexgen.pipelines.base`.

Folder layout written by :meth:`ChexGenPipeline.save_pretrained`::

    chexgen_config.json                  PipelineConfig (+ text encoder / VAE specs)
    transformer/config.json              ChexGenDiT config
    transformer/diffusion_pytorch_model.safetensors
    vae/                                 weights for gray / trained VAEs; else only a
                                         reference (hub id / path) in chexgen_config.json
    scheduler/scheduler_config.json

The text encoder is always a reference (kind + id/path + max_length), never copied.
Seeds: image k of prompt i gets ``seed + i * num_images_per_prompt + k`` unless
explicit ``seeds`` are given; every image has its own generator. Images of one seed are
bitwise identical for the same batch size; across batch sizes they agree to within one grey
level of an 8-bit PNG (matrix products round differently for other batch shapes).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from chexgen import __version__
from chexgen.diffusion.schedule import NoiseSchedule
from chexgen.errors import ChexgenError
from chexgen.models.dit import ChexGenDiT
from chexgen.models.precision import resolve_precision
from chexgen.models.presets import Preset, TextEncoderSpec, VAESpec, get_preset
from chexgen.models.text_encoder import PROMPT_CLEANING, TextEmbeddings, TextEncoder, clean_prompt, load_text_encoder
from chexgen.models.vae import RadiographVAE
from chexgen.pipelines.base import (
    CONFIG_NAME,
    DiffusionPipelineBase,
    PipelineConfig,
    check_prompts,
    image_generators,
    image_seeds,
    read_noise_schedule,
)
from chexgen.utils import atomic_write_json, sha256_file

__all__ = ["ChexGenPipeline", "PipelineConfig", "PipelineOutput", "CONFIG_NAME"]

_WEIGHTS = "diffusion_pytorch_model.safetensors"


def _precision_dtype(precision: str, dtype: torch.dtype | None, device) -> torch.dtype:
    """``precision`` resolved for ``device``; it must agree with an explicit ``dtype``."""
    resolved = resolve_precision(precision, device)
    if dtype is not None and dtype != resolved:
        raise ChexgenError(f"precision {precision!r} means {resolved} here, but dtype {dtype} was also given; "
                           "give one of them")
    return resolved


@dataclass
class PipelineOutput:
    """Generated images ``[N, 1, H, W]`` float in [0, 1] (CPU), with the prompt and seed of each."""

    images: torch.Tensor
    prompts: list[str]
    seeds: list[int]


class ChexGenPipeline(DiffusionPipelineBase):
    """Text-to-radiograph latent diffusion pipeline (see the module docstring for the folder layout)."""

    def __init__(
        self,
        transformer: ChexGenDiT,
        vae: RadiographVAE,
        text_encoder: TextEncoder | None = None,
        config: PipelineConfig | None = None,
        noise_schedule: NoiseSchedule | None = None,
    ) -> None:
        self.transformer = transformer.eval()
        self.vae = vae.eval()
        self._text_encoder = text_encoder
        self.config = config or PipelineConfig()
        self.noise_schedule = noise_schedule or NoiseSchedule()
        self.source_path: Path | None = None
        self._text_encoder_device: torch.device | None = None
        if self.transformer.config.sample_size * vae.downsample_factor != self.config.resolution:
            raise ChexgenError(
                f"transformer sample_size {self.transformer.config.sample_size} x VAE factor "
                f"{vae.downsample_factor} does not match resolution {self.config.resolution}"
            )

    # ------------------------------------------------------------------ parts
    @property
    def text_encoder(self) -> TextEncoder:
        """The frozen text encoder, loaded from ``config.text_encoder`` on first access."""
        if self._text_encoder is None:
            self._text_encoder = load_text_encoder(self.config.text_encoder, device=self._text_encoder_device)
        return self._text_encoder

    @text_encoder.setter
    def text_encoder(self, value: TextEncoder | None) -> None:
        self._text_encoder = value

    def to(self, device=None, dtype: torch.dtype | None = None, text_encoder_device=None,
           precision: str | None = None) -> "ChexGenPipeline":
        """Move transformer and VAE (and the text encoder, unless ``text_encoder_device`` keeps it elsewhere).

        ``precision`` (``auto | fp32 | bf16 | fp16``, see :mod:`chexgen.models.precision`) sets the
        compute dtype of transformer and VAE for the (new) device; ``dtype`` sets it directly. The text
        encoder always stays fp32 (it runs once per prompt).
        """
        if precision is not None:
            dtype = _precision_dtype(precision, dtype, device if device is not None else self.device)
        kw = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        # plain nn.Module moves: diffusers' ModelMixin.to warns on any dtype= keyword, even None
        torch.nn.Module.to(self.transformer, **kw)
        torch.nn.Module.to(self.vae, **kw)
        te_device = text_encoder_device if text_encoder_device is not None else device
        self._text_encoder_device = torch.device(te_device) if te_device is not None else None
        if self._text_encoder is not None and te_device is not None:
            self._text_encoder.to(te_device)
        return self

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(
        cls,
        name: "str | Preset",
        seed: int = 0,
        text_encoder: TextEncoder | None = None,
        resolution: int | None = None,
        vae_spec: VAESpec | None = None,
        text_encoder_spec: TextEncoderSpec | None = None,
        **transformer_overrides: Any,
    ) -> "ChexGenPipeline":
        """A randomly initialised pipeline (training start, tests).

        ``resolution``, ``vae_spec`` and ``text_encoder_spec`` replace the preset's;
        keyword arguments override the transformer (e.g. ``depth=1, hidden_size=32, num_heads=2``).
        Tiny test pipeline: ``from_preset("tiny", resolution=32, depth=1, hidden_size=32, num_heads=2)``.
        """
        preset = get_preset(name)
        changes: dict[str, Any] = {}
        if resolution is not None:
            changes["resolution"] = int(resolution)
        if vae_spec is not None:
            changes["vae"] = vae_spec
        if text_encoder_spec is not None:
            changes["text_encoder"] = text_encoder_spec
        if changes:
            preset = dataclasses.replace(preset, **changes)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            transformer = ChexGenDiT.from_preset(preset, **transformer_overrides)
            vae = RadiographVAE.from_spec(preset.vae)
        config = PipelineConfig(preset=preset.name, resolution=preset.resolution,
                                text_encoder=preset.text_encoder, vae=preset.vae)
        return cls(transformer, vae, text_encoder, config=config)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: "str | torch.device | None" = None,
        text_encoder: TextEncoder | None = None,
        text_encoder_name_or_path: str | None = None,
        torch_dtype: torch.dtype | None = None,
        precision: str | None = None,
    ) -> "ChexGenPipeline":
        """Load a folder written by :meth:`save_pretrained`.

        ``text_encoder_name_or_path`` points the referenced encoder elsewhere (e.g. a local T5 copy).
        ``precision`` (``auto | fp32 | bf16 | fp16``) or ``torch_dtype`` sets the compute dtype of
        transformer and VAE, resolved for ``device`` (``auto``: bf16 where the CPU / GPU has a fast bf16
        path, else fp32); with neither, they compute in fp32 whatever the stored dtype.
        """
        if precision is not None:
            torch_dtype = _precision_dtype(precision, torch_dtype, device)
        root = Path(path).expanduser()
        cfg_path = root / CONFIG_NAME
        if not root.is_dir():
            raise ChexgenError(f"model folder {root} does not exist")
        if not cfg_path.is_file():
            raise ChexgenError(f"{root} is not a chexgen pipeline folder: {CONFIG_NAME} is missing")
        try:
            config = PipelineConfig.from_dict(json.loads(cfg_path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError) as err:
            raise ChexgenError(f"{cfg_path}: not a valid chexgen config ({err})") from err
        if text_encoder_name_or_path:
            config.text_encoder = dataclasses.replace(config.text_encoder, name_or_path=text_encoder_name_or_path)
        if not (root / "transformer" / _WEIGHTS).is_file():
            raise ChexgenError(f"{root / 'transformer'} has no {_WEIGHTS}")
        transformer = ChexGenDiT.from_pretrained(str(root / "transformer"), torch_dtype=torch_dtype)
        vae_spec = config.vae
        if vae_spec.name_or_path == "vae" or (root / "vae" / "config.json").is_file():
            vae = RadiographVAE.from_pretrained(root / "vae", spec=vae_spec)
        else:
            vae = RadiographVAE.from_spec(vae_spec)
        if torch_dtype is not None:
            vae.to(dtype=torch_dtype)
        else:
            # Weights may be stored in half precision (the bundled demo model is); compute in fp32 unless
            # asked otherwise, since half-precision convolutions are slow or missing on CPUs.
            for module in (transformer, vae):
                if any(p.dtype != torch.float32 for p in module.parameters()):
                    module.float()  # nn.Module.float: diffusers' .to(dtype=) warns even when nothing is kept
        pipe = cls(transformer, vae, text_encoder, config=config, noise_schedule=read_noise_schedule(root))
        pipe.source_path = root
        if device is not None:
            pipe.to(device)
        return pipe

    def save_pretrained(self, directory: str | os.PathLike, save_vae_weights: bool | None = None,
                        dtype: torch.dtype | None = None) -> Path:
        """Write the pipeline folder (see module docstring); returns its path.

        VAE weights are written for gray VAEs (or when ``save_vae_weights``); an SD VAE
        loaded from a hub id stays a reference. ``dtype`` (e.g. ``torch.float16``) stores the
        weights in that precision without changing this pipeline's own modules;
        :meth:`from_pretrained` computes in fp32 unless told otherwise.
        """
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        transformer = copy.deepcopy(self.transformer).to(dtype=dtype) if dtype is not None else self.transformer
        transformer.save_pretrained(str(root / "transformer"), safe_serialization=True)
        write_vae = save_vae_weights if save_vae_weights is not None else self.config.vae.kind == "gray"
        vae_spec = self.config.vae
        if write_vae:
            vae = copy.deepcopy(self.vae).to(dtype=dtype) if dtype is not None else self.vae
            vae.save_pretrained(root / "vae")
            vae_spec = dataclasses.replace(vae_spec, name_or_path="vae", subfolder=None,
                                           scaling_factor=self.vae.scaling_factor)
        # The model's training noise schedule as a plain diffusers DDPMScheduler config (learned-range
        # variance): what from_pretrained reads the schedule back from, loadable by diffusers itself, and
        # independent of the sampler (each call builds its own scheduler on this schedule).
        from diffusers import DDPMScheduler

        s = self.noise_schedule
        DDPMScheduler(num_train_timesteps=s.num_train_timesteps, beta_start=s.beta_start, beta_end=s.beta_end,
                      beta_schedule="linear", prediction_type=s.prediction_type, variance_type="learned_range",
                      clip_sample=False).save_pretrained(str(root / "scheduler"))
        config = dataclasses.replace(self.config, vae=vae_spec, chexgen_version=__version__)
        atomic_write_json(root / CONFIG_NAME, config.to_dict())
        return root

    def checkpoint_sha256(self) -> str | None:
        """SHA-256 of the transformer weights file this pipeline was loaded from (None if never saved)."""
        if self.source_path is None:
            return None
        f = self.source_path / "transformer" / _WEIGHTS
        return sha256_file(f) if f.is_file() else None

    # ------------------------------------------------------------------ inference
    def clean(self, prompts: Sequence[str]) -> list[str]:
        """The prompts after the model's prompt cleaning (``config.prompt_cleaning``)."""
        return [clean_prompt(p, self.config.prompt_cleaning) for p in prompts]

    def encode_prompts(self, prompts: Sequence[str]) -> TextEmbeddings:
        """Token embeddings + mask of (cleaned) prompts, on the transformer's device."""
        emb = self.text_encoder.encode(self.clean(prompts))
        return emb.to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def __call__(
        self,
        prompts: "str | Sequence[str]",
        num_images_per_prompt: int = 1,
        seed: int = 0,
        seeds: Sequence[int] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        sampler: str | None = None,
        batch_size: int = 8,
        progress: bool = True,
        generator: "torch.Generator | list[torch.Generator] | None" = None,
        eta: float = 0.0,
    ) -> PipelineOutput:
        """Generate ``len(prompts) * num_images_per_prompt`` images (prompt-major order).

        ``generator`` (one, or one per image) replaces seed-based generators, diffusers-style;
        a single generator is shared, so results then depend on the batch layout.
        """
        settings = self.sampling_settings(sampler, num_inference_steps, guidance_scale, eta)
        prompts = check_prompts(prompts)
        if self.config.prompt_cleaning not in PROMPT_CLEANING:
            raise ChexgenError(f"unknown prompt cleaning mode {self.config.prompt_cleaning!r}")
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int) \
                or num_images_per_prompt < 1:
            raise ChexgenError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt!r}")
        all_prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        all_seeds = image_seeds(len(all_prompts), seed, seeds,
                                what=f"image(s) ({len(prompts)} prompt(s) x {num_images_per_prompt})")
        gens = image_generators(all_seeds, generator)
        images = self.generate_batches(all_prompts, gens, settings, batch_size=batch_size, progress=progress)
        return PipelineOutput(images=images, prompts=all_prompts, seeds=all_seeds)

    @torch.no_grad()
    def sample_latents(
        self,
        cond: TextEmbeddings,
        generators: Sequence[torch.Generator],
        sampler: str | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        eta: float = 0.0,
    ) -> torch.Tensor:
        """Clean latents for already-encoded prompts (one generator per row of ``cond``)."""
        settings = self.sampling_settings(sampler, num_inference_steps, guidance_scale, eta)
        return self.denoise_latents(self.transformer, cond, generators, settings)

    @torch.no_grad()
    def generate_from_embeddings(self, cond: TextEmbeddings, generators: Sequence[torch.Generator],
                                 **kwargs: Any) -> torch.Tensor:
        """Images ``[B, 1, H, W]`` in [0, 1] on the CPU for already-encoded prompts."""
        return self.decode_latents(self.sample_latents(cond, generators, **kwargs))
