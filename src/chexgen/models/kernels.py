"""Faster CPU kernels for the DiT blocks in reduced precision (bf16 / fp16), same maths and weights.

Profiled on the bundled demo DiT (batch 32 = 16 prompts x CFG, 64 image + 64 text tokens, one core
of an AVX512-BF16 CPU, thread CPU time): in bf16 the matrix products take 58 % of the forward, but
``scaled_dot_product_attention`` 21 % and the tanh GELU 11 %, although both are a small part of the
FLOPs. Two substitutions remove most of that, and change nothing in fp32 or on GPUs:

- :class:`ChexGenAttnProcessor`: for short sequences (<= 256 tokens) on the CPU in bf16 / fp16,
  attention as two batched matrix products and a softmax. PyTorch's flash kernel for the CPU is
  built for long sequences; at 64 tokens it was 2.6x slower forward and 4.4x slower forward +
  backward (its bf16 backward took a third of a bf16 training step). Everywhere else it runs
  diffusers' ``AttnProcessor2_0`` operations unchanged, so fp32 results are bitwise those of diffusers.
- :class:`FusedGELU`: in bf16 inference on the CPU, diffusers' ``GELU`` (linear then tanh GELU)
  runs as ONE oneDNN inner product with GELU as post-op (``torch.ops.mkldnn._linear_pointwise``,
  the op torch.compile's CPU backend emits): the element-wise tanh pass cost 3.3 ms per block,
  the fused post-op 0.3 ms; GELU is then applied to the fp32 accumulator before rounding. With
  autograd on, or when the op is missing, it is exactly diffusers' module.

A third change is exact everywhere: in inference (autograd off) the text path of a denoising loop is
computed once instead of at every step. The caption projection (:class:`CachedTextProjection`) and each
cross-attention's key / value projections of the text tokens (in :class:`ChexGenAttnProcessor`) remember
their last input and reuse the result while the input tensor holds the same data (same storage, shape,
strides and version counter, and the same weights at the same version). The sampler passes one text
tensor for the whole loop, so 14 % of the bundled DiT's FLOPs at batch 32 are skipped after step one.

:func:`use_fast_cpu_kernels` installs all three on a module (ChexGenDiT and ChexGenControlNet do it on
construction); parameter names, state dicts and saved configs do not change.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from diffusers.models.activations import GELU
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.embeddings import PixArtAlphaTextProjection
from torch import nn

__all__ = ["ChexGenAttnProcessor", "FusedGELU", "CachedTextProjection", "use_fast_cpu_kernels",
           "MATH_ATTENTION_MAX_TOKENS"]

log = logging.getLogger(__name__)

MATH_ATTENTION_MAX_TOKENS = 256  # query and key length up to which the two-matmul attention is used
_REDUCED = (torch.bfloat16, torch.float16)


def _data_key(x: torch.Tensor, *weights: torch.Tensor | None) -> tuple:
    """Identifies the data of ``x`` (and of ``weights``) while a reference to ``x`` is held: in-place writes
    bump the version counter, and storage that is still referenced cannot be reused by another tensor."""
    key = [x.untyped_storage().data_ptr(), x.storage_offset(), tuple(x.shape), tuple(x.stride()), x._version,
           x.dtype, x.device]
    for w in weights:
        if w is not None:
            key += [w.data_ptr(), w._version, w.dtype]
    return tuple(key)


class _Memo:
    """The last (input, result) of one inference computation; only used with autograd off."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.source: torch.Tensor | None = None  # keeps the input's storage alive while its key is stored
        self.value = None

    def get(self, x: torch.Tensor, *weights, compute):
        if torch.is_grad_enabled():
            self.key = self.source = self.value = None
            return compute()
        key = _data_key(x, *weights)
        if key != self.key:
            self.value = compute()
            self.key, self.source = key, x
        return self.value


class ChexGenAttnProcessor:
    """diffusers attention processor: two-matmul attention for short reduced-precision CPU inputs, and the
    text tokens' keys / values computed once per denoising loop (attention modules with extra norms, a
    residual or a rescale go to diffusers' ``AttnProcessor2_0``)."""

    def __init__(self) -> None:
        self._sdpa = AttnProcessor2_0()
        self._text = _Memo()  # cross-attention keys / values of the text tokens

    @staticmethod
    def _plain(attn: Attention) -> bool:
        """Whether ``attn`` uses only what PixArt blocks use (no extra norms, residual or rescale)."""
        return (attn.spatial_norm is None and attn.group_norm is None and not attn.norm_cross
                and attn.norm_q is None and attn.norm_k is None and not attn.residual_connection
                and attn.rescale_output_factor == 1.0)

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs):
        if hidden_states.ndim != 3 or args or kwargs or not self._plain(attn):
            return self._sdpa(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        b = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            key, value = attn.to_k(context), attn.to_v(context)
        else:
            key, value = self._text.get(context, attn.to_k.weight, attn.to_k.bias, attn.to_v.weight, attn.to_v.bias,
                                        compute=lambda: (attn.to_k(context), attn.to_v(context)))
        heads = attn.heads
        d = key.shape[-1] // heads
        query = query.view(b, -1, heads, d).transpose(1, 2)
        key = key.view(b, -1, heads, d).transpose(1, 2)
        value = value.view(b, -1, heads, d).transpose(1, 2)
        short = max(hidden_states.shape[1], context.shape[1]) <= MATH_ATTENTION_MAX_TOKENS
        if hidden_states.device.type == "cpu" and query.dtype in _REDUCED and short:
            scores = (query * (d ** -0.5)) @ key.transpose(-1, -2)  # [b, heads, n, m]
            if attention_mask is not None:
                # PixArt's additive text mask [b, 1, m] (or [b, n, m]); broadcast over heads
                mask = attention_mask if attention_mask.ndim == 4 else attention_mask.unsqueeze(1)
                scores = scores + mask.to(scores.dtype)
            out = scores.softmax(dim=-1) @ value  # softmax accumulates in fp32 on the CPU
        else:  # exactly AttnProcessor2_0's attention (fp32, GPUs, long sequences)
            if attention_mask is not None:
                attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], b)
                attention_mask = attention_mask.view(b, heads, -1, attention_mask.shape[-1])
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                                 is_causal=False)
        out = out.transpose(1, 2).reshape(b, -1, heads * d).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))


_FUSED_STATE = {"ok": None}  # None = untested, True / False after the first call


def _fused_available() -> bool:
    return _FUSED_STATE["ok"] is not False and torch.backends.mkldnn.is_available() \
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class FusedGELU(GELU):
    """diffusers ``GELU`` (``proj`` linear, then GELU) with a fused oneDNN path for bf16 CPU inference."""

    @classmethod
    def from_module(cls, module: GELU) -> "FusedGELU":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.proj = module.proj  # the same Linear: parameter names and storage are unchanged
        new.approximate = module.approximate
        new.train(module.training)
        return new

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        w = self.proj.weight
        if (hidden_states.device.type == "cpu" and hidden_states.dtype == torch.bfloat16 and w.dtype == torch.bfloat16
                and not (torch.is_grad_enabled() and (hidden_states.requires_grad or w.requires_grad))
                and _fused_available()):
            try:
                out = torch.ops.mkldnn._linear_pointwise(hidden_states, w, self.proj.bias, "gelu", [],
                                                         self.approximate)
                _FUSED_STATE["ok"] = True
                return out
            except (RuntimeError, NotImplementedError) as err:  # a torch build without the op's kernel
                _FUSED_STATE["ok"] = False
                log.debug("fused oneDNN linear+GELU unavailable (%s); using separate ops", err)
        return super().forward(hidden_states)


class CachedTextProjection(PixArtAlphaTextProjection):
    """PixArt's caption projection that reuses its last result for the same text in inference."""

    @classmethod
    def from_module(cls, module: PixArtAlphaTextProjection) -> "CachedTextProjection":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.linear_1, new.act_1, new.linear_2 = module.linear_1, module.act_1, module.linear_2  # same parameters
        new.train(module.training)
        new._memo = _Memo()
        return new

    def forward(self, caption: torch.Tensor) -> torch.Tensor:
        return self._memo.get(caption, self.linear_1.weight, self.linear_1.bias, self.linear_2.weight,
                              self.linear_2.bias, compute=lambda: super(CachedTextProjection, self).forward(caption))


def use_fast_cpu_kernels(module: nn.Module) -> nn.Module:
    """Install :class:`ChexGenAttnProcessor` on every diffusers ``Attention``, :class:`FusedGELU` for every
    diffusers ``GELU`` and :class:`CachedTextProjection` for PixArt's caption projection inside ``module``
    (in place; returns ``module``)."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is GELU:
                setattr(parent, name, FusedGELU.from_module(child))
            elif type(child) is PixArtAlphaTextProjection:
                setattr(parent, name, CachedTextProjection.from_module(child))
            elif isinstance(child, Attention) and not isinstance(child.processor, ChexGenAttnProcessor):
                child.set_processor(ChexGenAttnProcessor())
    return module
