"""Tiny randomly initialised diffusers text-to-image pipelines saved to folders (for backend / benchmark tests).

* :func:`make_tiny_sd_pipeline`: ``StableDiffusionPipeline`` = tiny ``UNet2DConditionModel`` +
  ``AutoencoderKL`` + ``CLIPTextModel`` with a real ``CLIPTokenizer`` over a byte-level vocabulary
  written here (every byte's character, with and without ``</w>``, no merges), 32 px;
* :func:`make_tiny_pixart_pipeline`: ``PixArtAlphaPipeline`` = tiny ``PixArtTransformer2DModel`` +
  ``AutoencoderKL`` + the tiny random T5 of ``conftest.make_tiny_t5``, 32 px (the watermark's minimum).

Each builds in well under a second and samples 2 steps in about a second on one CPU core.
"""

from __future__ import annotations

import json
from pathlib import Path


def _byte_chars() -> list[str]:
    """The 256 printable characters byte-level BPE maps bytes to (GPT-2 / CLIP convention)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def write_clip_tokenizer(directory: Path, max_length: int = 64):
    """A real ``CLIPTokenizer`` over a 514-token byte vocabulary (no merges: one token per character)."""
    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for c in _byte_chars():
            vocab[c + suffix] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=max_length)


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 8), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         norm_num_groups=4, sample_size=32)


def make_tiny_sd_pipeline(directory: Path, seed: int = 0) -> Path:
    """Save a tiny random ``StableDiffusionPipeline`` (32 px images, DDIM scheduler) to ``directory``."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    directory = Path(directory)
    tok = write_clip_tokenizer(directory.parent / f"{directory.name}-tokenizer-src")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                                norm_num_groups=4, attention_head_dim=2)
    text = CLIPTextModel(CLIPTextConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
        hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1, vocab_size=len(tok),
        max_position_embeddings=64, projection_dim=16))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=_tiny_vae(), text_encoder=text, tokenizer=tok, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(directory))
    return directory


def make_tiny_pixart_pipeline(directory: Path, t5_dir: Path, seed: int = 0) -> Path:
    """Save a tiny random ``PixArtAlphaPipeline`` (32 px, DPM-Solver++, tiny T5 from ``t5_dir``) to ``directory``."""
    import torch
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel
    from transformers import AutoTokenizer, T5EncoderModel

    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        sample_size=16, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=2, caption_channels=32,
        in_channels=4, cross_attention_dim=16, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6)
    pipe = PixArtAlphaPipeline(tokenizer=AutoTokenizer.from_pretrained(str(t5_dir)),
                               text_encoder=T5EncoderModel.from_pretrained(str(t5_dir)), vae=_tiny_vae(),
                               transformer=transformer, scheduler=DPMSolverMultistepScheduler())
    pipe.save_pretrained(str(directory))
    return Path(directory)
