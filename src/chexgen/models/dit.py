"""ChexGenDiT: the PixArt-alpha-style diffusion transformer.

The heavy lifting is diffusers' :class:`~diffusers.PixArtTransformer2DModel`
(adaLN-single timestep conditioning, self-attention, cross-attention to text
tokens with a padding mask, learned sigma), kept under the attribute
``backbone`` with its own parameter names so that official PixArt / ChexGen
checkpoints map onto it key for key. This wrapper adds what PixArt keeps outside
the diffusers model:

- ``null_caption``: the learned "empty prompt" token embeddings used for
  classifier-free guidance and caption dropout (official ``y_embedder.y_embedding``);
- a plain-tensor ``forward(latents, timesteps, text_embeddings, text_mask)``;
- ``set_resolution`` to recompute the fixed 2-D sin-cos pos-embed for the
  256 -> 512 px curriculum;
- ``from_preset`` to build from the preset registry.

The model knows nothing about noise schedules or samplers.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import ModelMixin, PixArtTransformer2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import get_2d_sincos_pos_embed
from torch import nn

from chexgen.errors import ChexgenError
from chexgen.models.kernels import use_fast_cpu_kernels
from chexgen.models.presets import Preset, get_preset

__all__ = ["ChexGenDiT", "count_parameters"]


class ChexGenDiT(ModelMixin, ConfigMixin):
    """Text-conditioned latent diffusion transformer (PixArt-alpha DiT, epsilon + learned-range output).

    Args:
        sample_size: latent height/width the pos-embed is built for (64 at 512 px with an 8x VAE).
        patch_size: patch edge in latent pixels (2 for DiT-XL/2).
        in_channels: latent channels (4). Output has ``2 * in_channels`` if ``learn_sigma`` else ``in_channels``.
        hidden_size: transformer width (1152 for XL).
        depth: number of transformer blocks (28 for XL).
        num_heads: attention heads; ``hidden_size`` must be divisible by it.
        caption_channels: width of the text-encoder token embeddings (4096 for T5-XXL).
        max_text_len: text tokens per prompt (120); the shape of ``null_caption``.
        learn_sigma: predict IDDPM "learned_range" variance values next to epsilon.
        interpolation_scale: pos-embed scale (1.0 at 256 px, 2.0 at 512 px in the paper).
        null_caption_mask: ``"full"`` (the null caption attends to all its tokens; chexgen's own
            models) or ``"prompt"`` (it reuses the prompt's padding mask, as official checkpoints do).
        dropout: attention / MLP dropout.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int = 64,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        caption_channels: int = 4096,
        max_text_len: int = 120,
        learn_sigma: bool = True,
        interpolation_scale: float = 1.0,
        null_caption_mask: str = "full",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ChexgenError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        if sample_size % patch_size:
            raise ChexgenError(f"sample_size {sample_size} is not divisible by patch_size {patch_size}")
        if null_caption_mask not in ("full", "prompt"):
            raise ChexgenError(f"null_caption_mask must be 'full' or 'prompt', got {null_caption_mask!r}")
        self.backbone = PixArtTransformer2DModel(
            num_attention_heads=num_heads,
            attention_head_dim=hidden_size // num_heads,
            in_channels=in_channels,
            out_channels=2 * in_channels if learn_sigma else in_channels,
            num_layers=depth,
            dropout=dropout,
            cross_attention_dim=hidden_size,
            attention_bias=True,
            sample_size=sample_size,
            patch_size=patch_size,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
            interpolation_scale=interpolation_scale,
            # diffusers switches resolution/aspect-ratio micro-conditioning on when sample_size == 128;
            # PixArt-alpha 256/512 (and ChexGen) do not use it.
            use_additional_conditions=False,
            caption_channels=caption_channels,
        )
        self.null_caption = nn.Parameter(torch.randn(max_text_len, caption_channels) / caption_channels**0.5)
        self._init_weights()
        use_fast_cpu_kernels(self.backbone)  # bf16 CPU attention / GELU paths; identical maths (models/kernels.py)

    # ------------------------------------------------------------------ construction
    def _init_weights(self) -> None:
        """PixArt/DiT initialisation: xavier linears, zero adaLN-single output and final projection.

        Zeroing the timestep-to-modulation projection and the output layer makes an
        untrained model predict zero noise, the standard DiT starting point.
        """
        bb = self.backbone

        def _xavier(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        bb.apply(_xavier)
        w = bb.pos_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(bb.adaln_single.emb.timestep_embedder.linear_1.weight, std=0.02)
        nn.init.normal_(bb.adaln_single.emb.timestep_embedder.linear_2.weight, std=0.02)
        nn.init.normal_(bb.adaln_single.linear.weight, std=0.02)
        if bb.caption_projection is not None:
            nn.init.normal_(bb.caption_projection.linear_1.weight, std=0.02)
            nn.init.normal_(bb.caption_projection.linear_2.weight, std=0.02)
        for block in bb.transformer_blocks:
            # Cross-attention output starts at zero so text conditioning is learned from scratch.
            nn.init.zeros_(block.attn2.to_out[0].weight)
            nn.init.zeros_(block.attn2.to_out[0].bias)
        nn.init.zeros_(bb.proj_out.weight)
        nn.init.zeros_(bb.proj_out.bias)

    @classmethod
    def from_preset(cls, preset: "str | Preset", **overrides: Any) -> "ChexGenDiT":
        """Build a randomly initialised DiT for ``preset`` (name or Preset); kwargs override the preset."""
        return cls(**get_preset(preset).transformer_kwargs(**overrides))

    # ------------------------------------------------------------------ properties
    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def out_channels(self) -> int:
        return self.backbone.out_channels

    @property
    def max_text_len(self) -> int:
        return self.config.max_text_len

    @property
    def caption_channels(self) -> int:
        return self.config.caption_channels

    # ------------------------------------------------------------------ helpers
    def null_text(self, batch: int, mask_like: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Null-caption embeddings ``[batch, L, C]`` and mask ``[batch, L]`` for CFG / caption dropout.

        With ``null_caption_mask == "prompt"`` and ``mask_like`` given, the prompt's own
        padding mask is reused (official checkpoints were trained that way); otherwise
        every null token is attended.
        """
        emb = self.null_caption.unsqueeze(0).expand(batch, -1, -1)
        if self.config.null_caption_mask == "prompt" and mask_like is not None:
            mask = mask_like.to(device=emb.device).clone()
        else:
            mask = torch.ones(batch, self.config.max_text_len, dtype=torch.long, device=emb.device)
        return emb, mask

    def reset_null_caption(self, generator: torch.Generator | None = None) -> None:
        """Re-draw the learned null caption (the paper re-initialises it when the resolution changes)."""
        with torch.no_grad():
            fresh = torch.randn(self.null_caption.shape, generator=generator) / self.config.caption_channels**0.5
            self.null_caption.copy_(fresh.to(self.null_caption))

    def set_resolution(self, sample_size: int, interpolation_scale: float | None = None) -> None:
        """Rebuild the fixed 2-D sin-cos pos-embed for latents of ``sample_size`` (e.g. 32 -> 64).

        Used by the 256 -> 512 px curriculum; the pos-embed is not trained, so this
        only changes the buffer and the saved config.
        """
        if sample_size % self.config.patch_size:
            raise ChexgenError(f"sample_size {sample_size} is not divisible by patch_size {self.config.patch_size}")
        scale = float(self.config.interpolation_scale if interpolation_scale is None else interpolation_scale)
        pe = self.backbone.pos_embed
        grid = sample_size // self.config.patch_size
        table = get_2d_sincos_pos_embed(
            pe.pos_embed.shape[-1], grid, base_size=grid, interpolation_scale=scale, output_type="pt"
        )
        ref = pe.pos_embed
        pe.pos_embed = table.float().unsqueeze(0).to(device=ref.device, dtype=ref.dtype)
        pe.height = pe.width = grid
        pe.base_size = grid
        pe.interpolation_scale = scale
        self.backbone.height = self.backbone.width = sample_size
        self.backbone.register_to_config(sample_size=sample_size, interpolation_scale=scale)
        self.register_to_config(sample_size=sample_size, interpolation_scale=scale)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        text_embeddings: torch.Tensor,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict ``[B, 2C, h, w]``: epsilon in the first C channels, learned-range values in the next C.

        ``timesteps`` may be a scalar or ``[B]`` (long or float, 0..999). ``text_mask`` is
        ``[B, L]`` with 1 for real tokens; padding tokens receive no attention. Latents and text are
        cast to the model's dtype (fp32 latents into a bf16 model run in bf16); the output stays in it.
        """
        latents = latents.to(self.backbone.pos_embed.proj.weight.dtype)
        timesteps, text_embeddings, text_mask = prepare_dit_inputs(latents, timesteps, text_embeddings, text_mask)
        out = self.backbone(
            latents,
            encoder_hidden_states=text_embeddings,
            timestep=timesteps,
            encoder_attention_mask=text_mask,
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            return_dict=False,
        )[0]
        return out


def prepare_dit_inputs(latents: torch.Tensor, timesteps, text_embeddings: torch.Tensor,
                       text_mask: torch.Tensor | None):
    """Normalise DiT call arguments: scalar or ``[B]`` timesteps on the latents' device, text on its dtype."""
    b = latents.shape[0]
    if not torch.is_tensor(timesteps):
        timesteps = torch.tensor([timesteps], device=latents.device)
    timesteps = timesteps.to(latents.device)
    if timesteps.ndim == 0:
        timesteps = timesteps[None]
    if timesteps.shape[0] != b:
        timesteps = timesteps.expand(b)
    text_embeddings = text_embeddings.to(device=latents.device, dtype=latents.dtype)
    if text_mask is not None:
        text_mask = text_mask.to(latents.device)
    return timesteps, text_embeddings, text_mask


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (works on the meta device; buffers such as the pos-embed are not counted)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
