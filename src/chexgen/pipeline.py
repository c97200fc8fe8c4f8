"""ChexGenPipeline: prompts -> synthetic chest radiographs, saved and loaded as one folder.

Parts, as in diffusers pipelines: ``transformer`` (:class:`ChexGenDiT`), ``vae``
(:class:`RadiographVAE`), ``text_encoder`` (:class:`TextEncoder`, loaded on first
use so training from cached features never pays for it) and ``scheduler`` (the
default sampler's diffusers scheduler; each call builds a fresh one, since
schedulers carry state).

Folder layout written by :meth:`ChexGenPipeline.save_pretrained`::

    chexgen_config.json                  PipelineConfig (+ text encoder / VAE specs)
    transformer/config.json              ChexGenDiT config
    transformer/diffusion_pytorch_model.safetensors
    vae/                                 weights for gray / trained VAEs; else only a
                                         reference (hub id / path) in chexgen_config.json
    scheduler/scheduler_config.json

The text encoder is always a reference (kind + id/path + max_length), never copied.
Seeds: image k of prompt i gets ``seed + i * num_images_per_prompt + k`` unless
explicit ``seeds`` are given; every image has its own generator.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from chexgen import __version__
from chexgen.diffusion.samplers import SAMPLERS, denoise, get_sampler_spec, make_generators, make_scheduler
from chexgen.errors import ChexgenError
from chexgen.models.dit import ChexGenDiT
from chexgen.models.presets import Preset, TextEncoderSpec, VAESpec, get_preset
from chexgen.models.text_encoder import PROMPT_CLEANING, TextEmbeddings, TextEncoder, clean_prompt, load_text_encoder
from chexgen.models.vae import RadiographVAE
from chexgen.utils import atomic_write_json, sha256_file

__all__ = ["ChexGenPipeline", "PipelineConfig", "PipelineOutput", "CONFIG_NAME"]

CONFIG_NAME = "chexgen_config.json"
_WEIGHTS = "diffusion_pytorch_model.safetensors"


@dataclass
class PipelineConfig:
    """Everything besides weights that a saved pipeline needs to rebuild itself.

    preset: preset name it was built from (informational once saved).
    resolution: output image size in pixels (square).
    text_encoder / vae: specs; ``vae.name_or_path == "vae"`` means the weights are in the folder.
    default_sampler / num_inference_steps (None = the sampler's default) / guidance_scale: call defaults.
    prompt_cleaning: ``basic`` for chexgen models, ``official`` for converted official checkpoints.
    clip_latents: clamp predicted clean latents to ``[-c, c]`` while sampling (None = off); set it to
        about the largest absolute latent of the training data (the bundled demo model uses 5.0).
    """

    preset: str | None = None
    resolution: int = 128
    text_encoder: TextEncoderSpec = field(default_factory=TextEncoderSpec)
    vae: VAESpec = field(default_factory=VAESpec)
    default_sampler: str = "ddim"
    num_inference_steps: int | None = None
    guidance_scale: float = 4.0
    prompt_cleaning: str = "basic"
    clip_latents: float | None = None
    chexgen_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["text_encoder"] = self.text_encoder.to_dict()
        d["vae"] = self.vae.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PipelineConfig":
        kw = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        kw["text_encoder"] = TextEncoderSpec.from_dict(d.get("text_encoder", {}))
        kw["vae"] = VAESpec.from_dict(d.get("vae", {}))
        return cls(**kw)


@dataclass
class PipelineOutput:
    """Generated images ``[N, 1, H, W]`` float in [0, 1] (CPU), with the prompt and seed of each."""

    images: torch.Tensor
    prompts: list[str]
    seeds: list[int]


class ChexGenPipeline:
    """Text-to-radiograph latent diffusion pipeline (see the module docstring for the folder layout)."""

    def __init__(
        self,
        transformer: ChexGenDiT,
        vae: RadiographVAE,
        text_encoder: TextEncoder | None = None,
        scheduler=None,
        config: PipelineConfig | None = None,
    ) -> None:
        self.transformer = transformer.eval()
        self.vae = vae.eval()
        self._text_encoder = text_encoder
        self.config = config or PipelineConfig()
        self.scheduler = scheduler or make_scheduler(self.config.default_sampler)
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

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.config.resolution // self.vae.downsample_factor
        return (self.transformer.config.in_channels, s, s)

    def to(self, device=None, dtype: torch.dtype | None = None, text_encoder_device=None) -> "ChexGenPipeline":
        """Move transformer and VAE (and the text encoder, unless ``text_encoder_device`` keeps it elsewhere)."""
        kw = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        self.transformer.to(**kw)  # (diffusers warns on any dtype= keyword, even None)
        self.vae.to(**kw)
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
    ) -> "ChexGenPipeline":
        """Load a folder written by :meth:`save_pretrained`.

        ``text_encoder_name_or_path`` points the referenced encoder elsewhere (e.g. a local T5 copy).
        """
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
        scheduler = None
        if (root / "scheduler" / "scheduler_config.json").is_file():
            scheduler = make_scheduler(config.default_sampler)
        pipe = cls(transformer, vae, text_encoder, scheduler=scheduler, config=config)
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
        self.scheduler.save_pretrained(str(root / "scheduler"))
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
        return [clean_prompt(p, self.config.prompt_cleaning) for p in prompts]

    def encode_prompts(self, prompts: Sequence[str]) -> TextEmbeddings:
        """Token embeddings + mask of (cleaned) prompts, on the transformer's device."""
        emb = self.text_encoder.encode(self.clean(prompts))
        return emb.to(device=self.device, dtype=self.dtype)

    def check_inputs(self, prompts, num_images_per_prompt, seeds, sampler, num_inference_steps,
                     guidance_scale, batch_size) -> list[str]:
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ChexgenError("no prompts given")
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise ChexgenError(f"prompt {i} is empty; every prompt needs text (got {p!r})")
        if sampler not in SAMPLERS:
            raise ChexgenError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
        if num_images_per_prompt < 1:
            raise ChexgenError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
        if num_inference_steps is not None and num_inference_steps < 1:
            raise ChexgenError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if guidance_scale < 0:
            raise ChexgenError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if batch_size < 1:
            raise ChexgenError(f"batch_size must be >= 1, got {batch_size}")
        if seeds is not None and len(seeds) != len(prompts) * num_images_per_prompt:
            raise ChexgenError(
                f"{len(seeds)} seeds given for {len(prompts)} prompt(s) x {num_images_per_prompt} image(s)"
            )
        if self.config.prompt_cleaning not in PROMPT_CLEANING:
            raise ChexgenError(f"unknown prompt cleaning mode {self.config.prompt_cleaning!r}")
        return prompts

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
        sampler = sampler or self.config.default_sampler
        guidance = self.config.guidance_scale if guidance_scale is None else float(guidance_scale)
        steps = num_inference_steps
        if steps is None and sampler in SAMPLERS:
            steps = self.config.num_inference_steps or get_sampler_spec(sampler).default_steps
        prompts = self.check_inputs(prompts, num_images_per_prompt, seeds, sampler, steps, guidance, batch_size)
        n = len(prompts) * num_images_per_prompt
        all_prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        all_seeds = [int(s) for s in seeds] if seeds is not None else [seed + i for i in range(n)]
        if generator is None:
            gens = make_generators(all_seeds)
        elif isinstance(generator, torch.Generator):
            gens = [generator] * n
        else:
            gens = list(generator)
            if len(gens) != n:
                raise ChexgenError(f"{len(gens)} generators given for {n} images")

        unique = list(dict.fromkeys(prompts))
        enc = self.encode_prompts(unique)
        index = {p: i for i, p in enumerate(unique)}

        from tqdm.auto import tqdm

        images: list[torch.Tensor] = []
        bar = tqdm(total=n, desc=f"generating ({sampler}, {steps} steps)", unit="img", disable=not progress)
        for start in range(0, n, batch_size):
            sl = slice(start, min(start + batch_size, n))
            rows = torch.tensor([index[p] for p in all_prompts[sl]], device=enc.embeddings.device)
            images.append(self.generate_from_embeddings(
                enc[rows], gens[sl], sampler=sampler, num_inference_steps=steps, guidance_scale=guidance, eta=eta,
            ))
            bar.update(sl.stop - sl.start)
        bar.close()
        return PipelineOutput(images=torch.cat(images), prompts=all_prompts, seeds=all_seeds)

    @torch.no_grad()
    def sample_latents(
        self,
        cond: TextEmbeddings,
        generators: Sequence[torch.Generator],
        sampler: str = "ddim",
        num_inference_steps: int | None = None,
        guidance_scale: float = 4.0,
        eta: float = 0.0,
    ) -> torch.Tensor:
        """Clean latents for already-encoded prompts (one generator per row of ``cond``)."""
        cond = cond.to(device=self.device, dtype=self.dtype)
        uncond = self.transformer.null_text(len(cond), mask_like=cond.mask)
        return denoise(
            self.transformer,
            (cond.embeddings, cond.mask),
            (uncond[0].to(self.dtype), uncond[1]),
            generators,
            self.latent_shape,
            sampler=sampler,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            device=self.device,
            dtype=self.dtype,
            eta=eta,
            clip_latents=self.config.clip_latents,
        )

    @torch.no_grad()
    def generate_from_embeddings(self, cond: TextEmbeddings, generators: Sequence[torch.Generator],
                                 **kwargs: Any) -> torch.Tensor:
        """Images ``[B, 1, H, W]`` in [0, 1] on the CPU for already-encoded prompts."""
        latents = self.sample_latents(cond, generators, **kwargs)
        return self.vae.decode(latents).float().cpu()
