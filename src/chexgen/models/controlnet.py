"""ControlNet adapter for the ChexGen DiT (ControlNet-Transformer, as PixArt's ControlT2IDiT).

The base :class:`~chexgen.models.dit.ChexGenDiT` stays frozen. The adapter holds
trainable copies of the base's first ``N`` transformer blocks (13 for DiT-XL/2,
as the official control checkpoint) and two zero-initialised linear
projections:

- the condition (a mask / box image encoded by the pipeline's VAE) is embedded
  by the *base* model's own patch embedding (``backbone.pos_embed``: patchify
  projection + the same 2-D sin-cos position table), giving tokens ``c``;
- control block 0 runs ``copied_block(x + before_proj(c))`` where ``x`` is the
  output of base block 0; control block ``j > 0`` runs ``copied_block(c)`` on the
  previous control output;
- each control block's output goes through its ``after_proj`` and, times
  ``conditioning_scale``, is added to the input of base block ``j + 1``;
- base blocks ``N + 1 ..`` and the output layer run unchanged.

Because ``before_proj`` and ``after_proj`` start at zero, a new adapter adds
exact zeros: the controlled model's output equals the base model's output bit
for bit, and training starts from the base model's behaviour.

Parameter names follow the official checkpoint so its keys map one to one:
``controlnet.{i}.copied_block.*`` (diffusers block names inside, the same
mapping as the base blocks), ``controlnet.0.before_proj`` and
``controlnet.{i}.after_proj`` (see :data:`OFFICIAL_KEY_LAYOUT`). The official
``base_model.*`` keys belong to the base DiT, not to this module.

The forward re-runs diffusers' ``PixArtTransformer2DModel.forward`` step for
step with the backbone's own submodules (``pos_embed``, ``adaln_single``,
``caption_projection``, ``transformer_blocks``, ``norm_out``,
``scale_shift_table``, ``proj_out``), inserting the control residuals; a test
pins it to the base model's output.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import BasicTransformerBlock
from torch import nn

from chexgen.errors import ChexgenError
from chexgen.models.dit import prepare_dit_inputs
from chexgen.models.kernels import use_fast_cpu_kernels

__all__ = [
    "ControlBlock",
    "ChexGenControlNet",
    "ControlledDiT",
    "default_num_control_blocks",
    "controlled_forward",
    "load_controlnet",
    "split_trainable",
    "OFFICIAL_KEY_LAYOUT",
    "CONDITION_PALETTE_ID",
    "OFFICIAL_BINARY_PALETTE_ID",
    "SUPPORTED_PALETTES",
]

logger = logging.getLogger(__name__)

# Official ControlT2IDiT parameter names -> names in this module (identical by construction).
OFFICIAL_KEY_LAYOUT = {
    "controlnet.{i}.copied_block.<block keys>": "controlnet.{i}.copied_block.<diffusers block keys>",
    "controlnet.0.before_proj.{weight,bias}": "controlnet.0.before_proj.{weight,bias}",
    "controlnet.{i}.after_proj.{weight,bias}": "controlnet.{i}.after_proj.{weight,bias}",
}
# Saved with every adapter so a model is never fed conditions drawn with another palette.
CONDITION_PALETTE_ID = "chexgen-gray16-v1"
# The official SIIM control model saw binary masks: finding white (1.0), background black.
OFFICIAL_BINARY_PALETTE_ID = "official-binary-mask"
SUPPORTED_PALETTES = (CONDITION_PALETTE_ID, OFFICIAL_BINARY_PALETTE_ID)


def default_num_control_blocks(depth: int) -> int:
    """13 blocks for depth 28 (the official DiT-XL/2 adapter); half the depth for smaller models."""
    if depth < 2:
        raise ChexgenError(f"a ControlNet adapter needs a base model with at least 2 blocks, got depth {depth}")
    return min(13, depth // 2)


class ControlBlock(nn.Module):
    """One control block: a copy of a base block plus zero-initialised projections.

    Only block 0 has ``before_proj`` (it mixes the condition tokens into the
    base hidden states); every block has ``after_proj`` (its residual for the base).
    """

    def __init__(self, block: BasicTransformerBlock, index: int, hidden_size: int) -> None:
        super().__init__()
        self.index = index
        self.copied_block = block
        if index == 0:
            self.before_proj = nn.Linear(hidden_size, hidden_size)
            nn.init.zeros_(self.before_proj.weight)
            nn.init.zeros_(self.before_proj.bias)
        self.after_proj = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.after_proj.weight)
        nn.init.zeros_(self.after_proj.bias)


class ChexGenControlNet(ModelMixin, ConfigMixin):
    """The trainable half of a controlled DiT: ``num_blocks`` control blocks (see module docstring).

    Build it from a base model with :meth:`from_transformer` (copies the base
    blocks); the constructor arguments describe the block shape so that
    ``from_pretrained`` can rebuild it without the base model.

    Args:
        num_blocks: control blocks (13 for DiT-XL/2).
        base_depth: depth of the base model it was made for (checked when attached).
        hidden_size: block width (``hidden_size``, ``num_heads`` and ``cross_attention_dim`` are the
            block geometry and must match the base).
        num_heads: attention heads.
        cross_attention_dim: width of the text tokens after the caption projection.
        dropout: block setting, as the base's ``PixArtTransformer2DModel`` (so are ``activation_fn``,
            ``attention_bias``, ``norm_eps`` and ``num_embeds_ada_norm``).
        activation_fn: feed-forward activation.
        attention_bias: whether attention projections have a bias.
        norm_eps: layer-norm epsilon.
        num_embeds_ada_norm: adaLN embedding count.
        palette: id of the condition palette the adapter was trained with.
        fit_policy: how stored images (and their conditions) were squared in training.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        num_blocks: int = 13,
        base_depth: int = 28,
        hidden_size: int = 1152,
        num_heads: int = 16,
        cross_attention_dim: int = 1152,
        dropout: float = 0.0,
        activation_fn: str = "gelu-approximate",
        attention_bias: bool = True,
        norm_eps: float = 1e-6,
        num_embeds_ada_norm: int = 1000,
        palette: str = CONDITION_PALETTE_ID,
        fit_policy: str = "crop",
    ) -> None:
        super().__init__()
        if not 1 <= num_blocks < base_depth:
            raise ChexgenError(f"num_blocks must be in 1..{base_depth - 1} for a depth-{base_depth} base, got {num_blocks}")
        blocks = []
        for i in range(num_blocks):
            block = BasicTransformerBlock(
                hidden_size,
                num_heads,
                hidden_size // num_heads,
                dropout=dropout,
                cross_attention_dim=cross_attention_dim,
                activation_fn=activation_fn,
                num_embeds_ada_norm=num_embeds_ada_norm,
                attention_bias=attention_bias,
                norm_type="ada_norm_single",
                norm_elementwise_affine=False,
                norm_eps=norm_eps,
            )
            blocks.append(ControlBlock(block, i, hidden_size))
        self.controlnet = nn.ModuleList(blocks)
        self.gradient_checkpointing = False
        use_fast_cpu_kernels(self)  # bf16 CPU attention / GELU paths; identical maths (models/kernels.py)

    @classmethod
    def from_transformer(cls, transformer: nn.Module, num_blocks: int | None = None, **config: Any) -> "ChexGenControlNet":
        """A fresh adapter for ``transformer`` (a ChexGenDiT or its diffusers backbone).

        Control block ``i`` starts as an exact copy of base block ``i``; the
        projections start at zero. ``num_blocks`` defaults to
        :func:`default_num_control_blocks` of the base depth.
        """
        backbone = _backbone(transformer)
        bc = backbone.config
        depth = bc.num_layers
        n = default_num_control_blocks(depth) if num_blocks is None else int(num_blocks)
        adapter = cls(
            num_blocks=n,
            base_depth=depth,
            hidden_size=bc.num_attention_heads * bc.attention_head_dim,
            num_heads=bc.num_attention_heads,
            cross_attention_dim=bc.cross_attention_dim,
            dropout=bc.dropout,
            activation_fn=bc.activation_fn,
            attention_bias=bc.attention_bias,
            norm_eps=bc.norm_eps,
            num_embeds_ada_norm=bc.num_embeds_ada_norm,
            **config,
        )
        for i, ctrl in enumerate(adapter.controlnet):
            ctrl.copied_block.load_state_dict(backbone.transformer_blocks[i].state_dict())
        ref = next(backbone.parameters())
        nn.Module.to(adapter, device=ref.device, dtype=ref.dtype)  # plain move; the base fixes the dtype
        return adapter

    @property
    def num_blocks(self) -> int:
        return len(self.controlnet)

    def check_compatible(self, transformer: nn.Module) -> None:
        """Raise a clear error when this adapter was made for a differently shaped base model."""
        bc = _backbone(transformer).config
        hidden = bc.num_attention_heads * bc.attention_head_dim
        got = (bc.num_layers, hidden, bc.num_attention_heads, bc.cross_attention_dim)
        want = (self.config.base_depth, self.config.hidden_size, self.config.num_heads, self.config.cross_attention_dim)
        if got != want:
            raise ChexgenError(
                f"ControlNet adapter was made for a base with (depth, hidden, heads, cross_dim) = {want}, "
                f"but the model has {got}"
            )

    def _run(self, module: nn.Module, *args: Any) -> torch.Tensor:
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(module, *args)
        return module(*args)


def _backbone(transformer: nn.Module):
    return getattr(transformer, "backbone", transformer)


def controlled_forward(
    transformer: nn.Module,
    adapter: ChexGenControlNet | None,
    latents: torch.Tensor,
    timesteps: torch.Tensor | int | float,
    text_embeddings: torch.Tensor,
    text_mask: torch.Tensor | None,
    control_latents: torch.Tensor | None,
    conditioning_scale: float = 1.0,
) -> torch.Tensor:
    """ChexGenDiT's prediction ``[B, 2C, h, w]`` with the adapter's residuals added.

    ``control_latents`` (``[B, C, h, w]``, the VAE latents of the condition images)
    must have the latents' shape. With ``adapter`` or ``control_latents`` ``None``,
    or ``conditioning_scale == 0``, this is exactly the base model's forward.
    """
    bb = _backbone(transformer)
    cfg = bb.config
    latents = latents.to(bb.pos_embed.proj.weight.dtype)  # the model's dtype (fp32 sampler latents into bf16)
    timesteps, text_embeddings, text_mask = prepare_dit_inputs(latents, timesteps, text_embeddings, text_mask)
    use_control = adapter is not None and control_latents is not None and conditioning_scale != 0
    if use_control and control_latents.shape != latents.shape:
        raise ChexgenError(
            f"control latents {tuple(control_latents.shape)} must match the noisy latents {tuple(latents.shape)}; "
            "render the condition at the model resolution and encode it with the same VAE"
        )

    # --- as PixArtTransformer2DModel.forward: masks to additive biases ----------------------------
    encoder_attention_mask = None
    if text_mask is not None:
        encoder_attention_mask = ((1 - text_mask.to(latents.dtype)) * -10000.0).unsqueeze(1)

    batch = latents.shape[0]
    height, width = latents.shape[-2] // cfg.patch_size, latents.shape[-1] // cfg.patch_size
    hidden = bb.pos_embed(latents)
    t_mod, embedded_t = bb.adaln_single(
        timesteps, {"resolution": None, "aspect_ratio": None}, batch_size=batch, hidden_dtype=hidden.dtype
    )
    context = text_embeddings
    if bb.caption_projection is not None:
        context = bb.caption_projection(context).view(batch, -1, hidden.shape[-1])

    def run_base(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and bb.gradient_checkpointing:
            return bb._gradient_checkpointing_func(block, x, None, context, encoder_attention_mask, t_mod, None, None)
        return block(x, attention_mask=None, encoder_hidden_states=context,
                     encoder_attention_mask=encoder_attention_mask, timestep=t_mod)

    blocks = bb.transformer_blocks
    hidden = run_base(blocks[0], hidden)
    n_ctrl = adapter.num_blocks if use_control else 0
    if use_control:
        # The condition is embedded by the base's own (frozen) patch embedding + pos-embed.
        ctrl = bb.pos_embed(control_latents.to(dtype=latents.dtype))
        for j, cblock in enumerate(adapter.controlnet):
            if j == 0:
                ctrl = hidden + cblock.before_proj(ctrl)
            ctrl = adapter._run(cblock.copied_block, ctrl, None, context, encoder_attention_mask, t_mod)
            residual = cblock.after_proj(ctrl)
            hidden = run_base(blocks[j + 1], hidden + conditioning_scale * residual)
    for block in blocks[1 + n_ctrl:]:
        hidden = run_base(block, hidden)

    # --- as PixArtTransformer2DModel.forward: output modulation, projection, unpatchify -----------
    shift, scale = (bb.scale_shift_table[None] + embedded_t[:, None].to(bb.scale_shift_table.device)).chunk(2, dim=1)
    hidden = bb.norm_out(hidden)
    hidden = hidden * (1 + scale.to(hidden.device)) + shift.to(hidden.device)
    hidden = bb.proj_out(hidden).squeeze(1)
    p, c_out = cfg.patch_size, bb.out_channels
    hidden = hidden.reshape(-1, height, width, p, p, c_out)
    hidden = torch.einsum("nhwpqc->nchpwq", hidden)
    return hidden.reshape(-1, c_out, height * p, width * p)


class ControlledDiT(nn.Module):
    """A frozen base DiT plus a trainable adapter, with ChexGenDiT's forward plus control inputs.

    ``forward(latents, timesteps, text_embeddings, text_mask, control_latents,
    conditioning_scale=None)``; ``conditioning_scale`` defaults to the attribute
    set at construction. ``null_text`` is forwarded to the base so caption dropout
    and classifier-free guidance work unchanged. Freezing the base is part of
    construction (``requires_grad_(False)``, eval mode kept by :meth:`train`).
    """

    def __init__(self, transformer: nn.Module, adapter: ChexGenControlNet, conditioning_scale: float = 1.0,
                 freeze_base: bool = True) -> None:
        super().__init__()
        adapter.check_compatible(transformer)
        self.transformer = transformer
        self.controlnet = adapter
        self.conditioning_scale = float(conditioning_scale)
        self.freeze_base = freeze_base
        if freeze_base:
            self.transformer.requires_grad_(False)
            self.transformer.eval()

    def train(self, mode: bool = True) -> "ControlledDiT":
        super().train(mode)
        if self.freeze_base:
            self.transformer.eval()  # frozen base: no dropout, as at sampling
        return self

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations of base and control blocks in backward (diffusers' mechanism)."""
        self.transformer.enable_gradient_checkpointing()
        self.controlnet.enable_gradient_checkpointing()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def null_text(self, batch: int, mask_like: torch.Tensor | None = None):
        return self.transformer.null_text(batch, mask_like)

    @property
    def config(self):  # the base model's config (sample_size, in_channels, ...) for callers that read it
        return self.transformer.config

    def forward(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor | int | float,
        text_embeddings: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        control_latents: torch.Tensor | None = None,
        conditioning_scale: float | None = None,
    ) -> torch.Tensor:
        scale = self.conditioning_scale if conditioning_scale is None else float(conditioning_scale)
        return controlled_forward(self.transformer, self.controlnet, latents, timesteps, text_embeddings,
                                  text_mask, control_latents, scale)


def load_controlnet(path: str, transformer: nn.Module | None = None, **kwargs: Any) -> ChexGenControlNet:
    """Load an adapter folder (``config.json`` + safetensors); check it against ``transformer`` if given."""
    if not os.path.isfile(os.path.join(str(path), "config.json")):
        raise ChexgenError(f"{path}: ControlNet adapter folder not found (expected config.json + weights)")
    adapter = ChexGenControlNet.from_pretrained(path, **kwargs)
    if adapter.config.palette not in SUPPORTED_PALETTES:
        raise ChexgenError(
            f"{path}: adapter was trained with condition palette {adapter.config.palette!r}; this chexgen draws "
            f"{' or '.join(map(repr, SUPPORTED_PALETTES))}"
        )
    if transformer is not None:
        adapter.check_compatible(transformer)
    return adapter


def split_trainable(modules: Sequence[nn.Module]) -> tuple[int, int]:
    """(trainable, frozen) parameter counts over ``modules`` (for logs and tests)."""
    trainable = frozen = 0
    for m in modules:
        for p in m.parameters():
            if p.requires_grad:
                trainable += p.numel()
            else:
                frozen += p.numel()
    return trainable, frozen
