"""Stage-2 initialisation: load a stage-1 transformer into a model built for another resolution.

The paper trains at 256 px, then continues at 512 px. Everything learned
transfers; only two things are tied to stage 1:

* the position embedding: a fixed 2-D sin-cos table for the latent grid. It is
  not a trained weight (diffusers keeps it as a non-persistent buffer), so the
  stage-2 model simply keeps the table it computed for its own grid and scale;
  a stored copy in the source is ignored.
* the null caption (the learned "empty prompt" of classifier-free guidance):
  the official recipe re-initialises it for stage 2; ``reinit_null_caption``
  does the same, otherwise it is carried over.

Any other mismatch (depth, width, text width) is an error naming the tensors.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from chexgen.errors import ChexgenError

__all__ = ["read_transformer_weights", "load_stage1_weights"]

log = logging.getLogger(__name__)

_POS_EMBED_KEYS = ("backbone.pos_embed.pos_embed",)


def read_transformer_weights(source: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Transformer weights from a training checkpoint (``model.safetensors``), a pipeline folder
    (``transformer/``) or a transformer folder / ``.safetensors`` file."""
    p = Path(source)
    candidates = [
        p,
        p / "model.safetensors",
        p / "transformer" / "diffusion_pytorch_model.safetensors",
        p / "diffusion_pytorch_model.safetensors",
    ]
    for c in candidates:
        if c.is_file() and c.suffix == ".safetensors":
            return load_file(str(c))
    if p.is_dir():  # a run folder: take its newest checkpoint
        from chexgen.training.checkpoint import latest_checkpoint

        ckpt = latest_checkpoint(p)
        if ckpt is not None:
            return load_file(str(ckpt / "model.safetensors"))
    raise ChexgenError(
        f"{source}: no transformer weights found (expected a checkpoint folder with model.safetensors, "
        f"a run folder with checkpoints/, or a pipeline folder with transformer/)"
    )


def load_stage1_weights(model: nn.Module, source: str | os.PathLike, reinit_null_caption: bool = False) -> list[str]:
    """Load ``source`` into ``model`` except the pos-embed (and, by flag, the null caption).

    Returns the names of the tensors that were kept from ``model``'s own initialisation.
    """
    weights = read_transformer_weights(source)
    kept = [k for k in _POS_EMBED_KEYS if k in weights]
    for k in kept:
        weights.pop(k)
    if reinit_null_caption and "null_caption" in weights:
        weights.pop("null_caption")
        kept.append("null_caption")
    own = model.state_dict()
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in weights.items()
           if k in own and own[k].shape != v.shape]
    if bad:
        raise ChexgenError(f"{source}: tensors do not fit the stage-2 model: {'; '.join(bad[:4])}")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if k not in kept]
    if missing or unexpected:
        raise ChexgenError(f"{source}: weights do not match the model (missing {missing[:4]}, unexpected {unexpected[:4]})")
    log.info("stage-2 init from %s; re-initialised: %s", source, kept or "nothing")
    return kept
