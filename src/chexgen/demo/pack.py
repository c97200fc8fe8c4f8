"""Pack training outputs into a demo model folder (what ``chexgen demo --pack-*`` runs)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from chexgen.errors import ChexgenError

__all__ = ["pack_demo_model", "PACK_SAMPLER", "PACK_STEPS"]

# The sampling default a packed demo model stores: the cheapest setting of benchmarks/sampler_quality.py
# within the best one's AUROC and FID confidence intervals (40 model calls per image; IDDPM-50 needed 100).
PACK_SAMPLER, PACK_STEPS = "dpmsolver++sde", 10


def _half_safetensors(src: Path, dst: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(src))
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}, str(dst))


def _pack_control(control_dir: Path, pipe, dst: Path) -> None:
    """fp16 copy of an adapter trained on ``pipe`` with its base named relative to itself."""
    import dataclasses

    import torch

    from chexgen.models.controlnet import load_controlnet
    from chexgen.pipelines.control import ControlInfo

    adapter = load_controlnet(str(control_dir), transformer=pipe.transformer)
    info = ControlInfo.read(control_dir) or ControlInfo(base_model="")
    trained_on = info.base_checkpoint_sha256
    if trained_on and pipe.checkpoint_sha256() and trained_on != pipe.checkpoint_sha256():
        raise ChexgenError(f"{control_dir}: adapter was trained on base weights {trained_on[:12]}..., not on the "
                           f"pipeline being packed ({pipe.checkpoint_sha256()[:12]}...); retrain it on this base")
    adapter.to(torch.float16).save_pretrained(str(dst), safe_serialization=True)
    dataclasses.replace(info, base_model="../pipeline", data=Path(info.data).name if info.data else None).write(dst)


def _swap_vae(pipe, vae_dir: Path) -> None:
    """Give ``pipe`` the VAE in ``vae_dir`` after checking it makes the same latents (a new decoder only)."""
    import torch

    from chexgen.models.vae import RadiographVAE

    vae = RadiographVAE.from_pretrained(str(vae_dir)).to(dtype=torch.float32)
    old, new = pipe.vae.autoencoder.state_dict(), vae.autoencoder.state_dict()
    # compared in fp16: a pipeline packed before holds the fp16 copy of the encoder the VAE was tuned from
    differ = [k for k in old if k.startswith(("encoder.", "quant_conv."))
              and (k not in new or old[k].shape != new[k].shape or not torch.equal(old[k].half(), new[k].half()))]
    if differ or vae.scaling_factor != pipe.vae.scaling_factor:
        raise ChexgenError(f"{vae_dir}: this VAE's encoder or scaling_factor differs from the pipeline's "
                           f"({len(differ)} encoder tensors, scaling {vae.scaling_factor:.4f} vs "
                           f"{pipe.vae.scaling_factor:.4f}), so its latents are not the ones the DiT was trained on; "
                           f"fine-tune the pipeline's own VAE with chexgen train-vae --decoder-only")
    pipe.vae = vae.to(device=pipe.device).eval()


def _forget_source_paths(folder: Path) -> None:
    """Drop diffusers' ``_name_or_path`` (the folder the weights were loaded from, a path on the packing
    machine) from every ``config.json`` under ``folder``: a packed model names no local paths."""
    import json

    from chexgen.utils import atomic_write_json

    for path in sorted(folder.rglob("config.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "_name_or_path" in data:
            data.pop("_name_or_path")
            atomic_write_json(path, data)


def pack_demo_model(pipeline_dir: str | os.PathLike, classifier_dir: str | os.PathLike,
                    prevalence: str | os.PathLike, dest: str | os.PathLike, clip_latents: float | None = 5.0,
                    sampler: str = PACK_SAMPLER, steps: int = PACK_STEPS, guidance: float | None = None,
                    control_dir: str | os.PathLike | None = None,
                    vae_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Assemble a demo model folder from training outputs, weights stored in fp16.

    The pipeline's sampling defaults become ``sampler`` / ``steps`` (and ``guidance`` when given) with
    latent clipping at ``clip_latents`` (what ``chexgen generate`` then uses with this model).

    ``dest`` gets ``pipeline/`` (DiT + gray VAE + scheduler, text encoder as a reference),
    ``classifier/``, ``prevalence.yaml`` and, with ``control_dir`` (a ``chexgen train-control``
    adapter trained on this pipeline), ``control/`` whose ``control_info.json`` names
    ``../pipeline`` as its base; the model card is written separately. ``vae_dir`` replaces the
    pipeline's VAE by one with the same encoder and scaling factor (``chexgen train-vae
    --decoder-only``); any other VAE is refused, since the DiT would not know its latents. Written into a
    temporary folder that replaces ``dest`` at the end, so a failure leaves ``dest`` as it was.
    """
    import shutil
    import tempfile

    import torch

    from chexgen.downstream.classifier import load_classifier
    from chexgen.pipelines import ChexGenPipeline

    dest = Path(dest)
    pipe = ChexGenPipeline.from_pretrained(pipeline_dir)
    if vae_dir is not None:
        _swap_vae(pipe, Path(vae_dir))
    pipe.config.clip_latents = clip_latents
    pipe.config.default_sampler = sampler
    pipe.config.num_inference_steps = steps
    if guidance is not None:
        pipe.config.guidance_scale = float(guidance)
    load_classifier(classifier_dir)  # fails early on a broken classifier folder
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        pipe.save_pretrained(tmp / "pipeline", dtype=torch.float16)
        (tmp / "classifier").mkdir()
        shutil.copy2(Path(classifier_dir) / "config.json", tmp / "classifier" / "config.json")
        _half_safetensors(Path(classifier_dir) / "model.safetensors", tmp / "classifier" / "model.safetensors")
        shutil.copy2(prevalence, tmp / "prevalence.yaml")
        if control_dir is not None:
            _pack_control(Path(control_dir), pipe, tmp / "control")
        _forget_source_paths(tmp)
        keep = [p for p in ("MODEL_CARD.md",) if (dest / p).is_file()]
        for name in keep:  # the hand-written card survives a re-pack
            shutil.copy2(dest / name, tmp / name)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    sizes = {str(p.relative_to(dest)): p.stat().st_size for p in sorted(dest.rglob("*")) if p.is_file()}
    return {"dest": str(dest), "bytes": sum(sizes.values()), "files": sizes}
