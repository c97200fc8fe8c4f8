"""Self-supervised ViT features for FD / KID / PRDC: RAD-DINO and DINOv2 through transformers.

* ``rad-dino``: ``microsoft/rad-dino``, a DINOv2 ViT-B/14 trained on chest radiographs (the features
  CheXGenBench computes FD, KID and precision / recall / density / coverage on);
* ``dinov2``: ``facebook/dinov2-base`` (or ``-small`` / ``-large`` / ``-giant``, any DINOv2 size), the
  natural-image standard for FD (FD_DINOv2).

Both load with transformers ``AutoModel`` + ``AutoImageProcessor`` from a hub id or a local folder
(``config.json``, weights, ``preprocessor_config.json``). Preprocessing is the model's own: each gray
image in [0, 1] becomes an 8-bit RGB image with three equal channels (what loading a radiograph with
PIL ``convert("RGB")`` gives) and goes through the processor, which resizes, centre-crops and
normalises with the mean / std of its ``preprocessor_config.json``. Features are ``pooler_output``:
the CLS token after the final layer norm, as CheXGenBench uses them.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from chexgen.errors import ChexgenError
from chexgen.evaluation.features import ExtractorOutput, FeatureExtractor

__all__ = ["HFVisionExtractor", "DINO_KINDS", "DEFAULT_DINO_WEIGHTS"]

DEFAULT_DINO_WEIGHTS = {"rad-dino": "microsoft/rad-dino", "dinov2": "facebook/dinov2-base"}
DINO_KINDS = tuple(DEFAULT_DINO_WEIGHTS)


def _crop_size(processor: Any) -> int:
    """The square side the processor's output has (its crop size, else its resize size)."""
    for attr in ("crop_size", "size"):
        value = getattr(processor, attr, None)
        if isinstance(value, int):
            return value
        for key in ("height", "shortest_edge", "width"):  # a dict, or transformers' SizeDict
            side = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
            if isinstance(side, int):
                return side
    return 224


class HFVisionExtractor(FeatureExtractor):
    """A transformers vision backbone with its own image processor (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, processor: Any, name: str, source: str,
                 device: "str | torch.device" = "cpu") -> None:
        super().__init__(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.name = name
        self.source = source
        self.dim = int(getattr(model.config, "hidden_size", 0) or 0)
        # load images at the processor's output size, so its own resize / crop is the only resampling
        self.input_size = _crop_size(processor)

    @classmethod
    def from_pretrained(cls, kind: str, weights: str | None = None, device: "str | torch.device" = "cpu"
                        ) -> "HFVisionExtractor":
        """``kind`` ``rad-dino`` / ``dinov2``; ``weights`` a hub id or local folder (default: the kind's hub id)."""
        if kind not in DEFAULT_DINO_WEIGHTS:
            raise ChexgenError(f"unknown ViT feature kind {kind!r}; expected one of {', '.join(DINO_KINDS)}")
        source = weights or DEFAULT_DINO_WEIGHTS[kind]
        if os.path.exists(source) and not os.path.isfile(os.path.join(source, "preprocessor_config.json")):
            raise ChexgenError(f"--weights {source}: expected a transformers folder with config.json, the weights "
                               "and preprocessor_config.json")
        from transformers import AutoImageProcessor, AutoModel

        try:
            processor = AutoImageProcessor.from_pretrained(source)
            model = AutoModel.from_pretrained(source)
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ChexgenError(f"could not load {kind} features from {source!r} ({first}); offline, pass a local "
                               f"folder with --weights or put {source} in the Hugging Face cache") from None
        return cls(model, processor, name=kind, source=source, device=device)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        rgb = (images.clamp(0, 1) * 255).round().to(torch.uint8)[:, 0].cpu().numpy()
        batch = [np.repeat(im[:, :, None], 3, axis=2) for im in rgb]
        out = self.processor(images=batch, return_tensors="pt")
        return out["pixel_values"].float()

    def forward(self, x: torch.Tensor) -> ExtractorOutput:
        out = self.model(pixel_values=x)
        pooled = getattr(out, "pooler_output", None)
        feats = pooled if pooled is not None else out.last_hidden_state[:, 0]
        return ExtractorOutput(features=feats)

    def describe(self) -> dict:
        return {**super().describe(), "weights": self.source, "features": "pooler_output (CLS after layer norm)",
                "model_class": type(self.model).__name__}
