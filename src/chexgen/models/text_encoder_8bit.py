"""Memory options for the 4.7B-parameter T5 v1.1 XXL text encoder of official / paper-size models.

T5-XXL's encoder is about 19 GB in float32, 9.5 GB in bfloat16 and about 5 GB in
8-bit; the DiT-XL/2 next to it is 2.4 GB. Two ways to fit both:

1. **T5 on the CPU, DiT on the GPU** (no extra package)::

       pipe = ChexGenPipeline.from_pretrained("converted/")
       pipe.to("cuda", text_encoder_device="cpu")
       # optional, halves CPU memory (the lazy default loads float32 on the CPU):
       pipe.text_encoder = load_text_encoder(pipe.config.text_encoder, device="cpu", dtype=torch.bfloat16)

   Prompts are encoded once per call (a few seconds on CPU per batch), then the
   embeddings move to the GPU.

2. **T5 in 8-bit on the GPU** with bitsandbytes (``pip install bitsandbytes``)::

       pipe.to("cuda")  # first: quantized models must not be moved afterwards
       pipe.text_encoder = load_text_encoder_8bit(pipe.config.text_encoder)

   LLM.int8 keeps outlier features in 16 bit; embeddings differ slightly from the
   bf16 encoder's, so use it when GPU memory, not exact parity, is the constraint.
"""

from __future__ import annotations

import importlib.util

import torch

from chexgen.errors import ChexgenError
from chexgen.models.presets import TextEncoderSpec
from chexgen.models.text_encoder import TextEncoder

__all__ = ["load_text_encoder_8bit", "bitsandbytes_available"]

_CPU_HINT = ("or keep T5 on the CPU: pipe.to('cuda', text_encoder_device='cpu') "
             "(see chexgen.models.text_encoder_8bit)")


def bitsandbytes_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def load_text_encoder_8bit(spec: TextEncoderSpec, device: "str | torch.device" = "cuda") -> TextEncoder:
    """Load a T5 / HF encoder in 8-bit (bitsandbytes LLM.int8) on a CUDA ``device``."""
    if spec.kind not in ("t5", "hf"):
        raise ChexgenError(f"8-bit loading is for large T5 / HF encoders, not {spec.kind!r}")
    if not bitsandbytes_available():
        raise ChexgenError(f"8-bit text encoder needs the 'bitsandbytes' package (pip install bitsandbytes), {_CPU_HINT}")
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ChexgenError(f"8-bit text encoder needs a CUDA GPU (asked for {device}), {_CPU_HINT}")
    from transformers import AutoModel, AutoTokenizer, BitsAndBytesConfig, T5EncoderModel

    where = str(spec.name_or_path)
    cls = T5EncoderModel if spec.kind == "t5" else AutoModel
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        model = cls.from_pretrained(where, quantization_config=BitsAndBytesConfig(load_in_8bit=True),
                                    device_map={"": device.index or 0})
    except (OSError, ValueError) as err:
        raise ChexgenError(f"could not load the text encoder {where!r} in 8-bit ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}); pass a local folder when offline") from err
    return TextEncoder(model, tokenizer, spec)
