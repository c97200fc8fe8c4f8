"""VAE reconstructions of the real images as a "generator": the upper bound of a latent diffusion model.

A latent diffusion model can at best make images its VAE can decode. Encoding each prompt's real
source image and decoding a posterior sample gives images that are as faithful as that VAE allows;
a benchmark puts them beside the generators as a ceiling for fidelity metrics (and a floor for
diversity and privacy: they are near copies of the real images).

The engine hands a backend prompts and seeds, not records. The plan gives image ``k`` of prompt
``i`` the seed ``seed + i * n + k`` (:mod:`chexgen.generation.plan`), so this backend, built with the
same prompt items, ``seed`` and ``n``, recovers ``i`` from the seed and checks that the prompt it got
is prompt ``i``'s. The posterior sample ``mean + std * noise`` draws its noise from the image's own
seed, so reconstructions follow the same seed rule as generated images.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from chexgen.errors import ChexgenError
from chexgen.generation.backends.base import GeneratedBatch, GeneratorBackend
from chexgen.generation.prompts import PromptItem

__all__ = ["VAEReconstructionBackend"]


class VAEReconstructionBackend(GeneratorBackend):
    """Encode-decode of each prompt's source image with a chexgen pipeline's gray VAE (see module docstring)."""

    name = "vae-reconstruction"

    def __init__(self, vae, resolution: int, items: Sequence[PromptItem], root: "str | os.PathLike",
                 seed: int, num_images_per_prompt: int, model_name: str, vae_sha256: str | None = None) -> None:
        self.vae = vae.eval()
        self._resolution = int(resolution)
        self.items = list(items)
        self.root = Path(root)
        self.seed = int(seed)
        self.n = int(num_images_per_prompt)
        self.model_name = model_name
        self.vae_sha256 = vae_sha256
        for it in self.items:
            rec = it.source
            if rec is None or rec.image is None:
                raise ChexgenError(f"{it.where or 'prompt'}: a VAE reconstruction needs the prompt's source record "
                                   "with an image")
            path = rec.resolve(rec.image, self.root)
            if not path.is_file():
                raise ChexgenError(f"{it.where} (record {rec.id}): image not found: {path}")

    @classmethod
    def from_pipeline_folder(cls, folder: "str | os.PathLike", items: Sequence[PromptItem],
                             root: "str | os.PathLike", seed: int, num_images_per_prompt: int,
                             device: str = "cpu") -> "VAEReconstructionBackend":
        """The VAE stored in a chexgen pipeline folder (``vae/``), at the pipeline's resolution."""
        import json

        from chexgen.models.vae import RadiographVAE
        from chexgen.pipelines.base import CONFIG_NAME, PipelineConfig
        from chexgen.utils import sha256_file

        root_dir = Path(folder)
        cfg_path = root_dir / CONFIG_NAME
        if not cfg_path.is_file():
            raise ChexgenError(f"{root_dir}: not a chexgen pipeline folder (no {CONFIG_NAME})")
        config = PipelineConfig.from_dict(json.loads(cfg_path.read_text(encoding="utf-8")))
        weights = root_dir / "vae" / "diffusion_pytorch_model.safetensors"
        if not weights.is_file():
            raise ChexgenError(f"{root_dir}: the pipeline keeps no VAE weights in vae/ (a hub VAE reference); "
                               "VAE reconstructions need the weights in the folder")
        vae = RadiographVAE.from_pretrained(root_dir / "vae", spec=config.vae).float().to(device)
        return cls(vae, config.resolution, items, root, seed, num_images_per_prompt,
                   model_name=str(root_dir.resolve()), vae_sha256=sha256_file(weights))

    @property
    def resolution(self) -> int:
        return self._resolution

    def settings(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_name, "vae_sha256": self.vae_sha256,
                "posterior": "mean + std * noise from the image's seed"}

    def _item(self, prompt: str, seed: int) -> PromptItem:
        i = (int(seed) - self.seed) // self.n
        if not 0 <= i < len(self.items) or self.items[i].prompt != prompt:
            raise ChexgenError(f"seed {seed} / prompt {prompt!r} is not one of this backend's planned images "
                               "(build it with the run's prompts, seed and images per prompt)")
        return self.items[i]

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], seeds: Sequence[int], conditions=None) -> GeneratedBatch:
        from chexgen.data.imageio import fit_square, load_gray

        if conditions is not None:
            raise ChexgenError("VAE reconstructions take no masks / boxes")
        arrays = []
        for prompt, seed in zip(prompts, seeds):
            rec = self._item(prompt, seed).source
            arrays.append(fit_square(load_gray(rec.resolve(rec.image, self.root)), self._resolution, "crop"))
        x = torch.from_numpy(np.stack(arrays)).float()[:, None]
        p = next(self.vae.parameters())
        mean, std = self.vae.encode_moments(x.to(device=p.device, dtype=p.dtype))
        noise = torch.stack([torch.randn(mean.shape[1:], generator=torch.Generator().manual_seed(int(s)))
                             for s in seeds]).to(device=mean.device, dtype=mean.dtype)
        images = self.vae.decode(mean + std * noise).float().clamp(0, 1).cpu()
        return GeneratedBatch(images[:, 0].numpy())
