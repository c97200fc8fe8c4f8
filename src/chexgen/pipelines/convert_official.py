"""An official ChexGen ``.pth`` -> a chexgen pipeline folder (``chexgen convert-official``).

:func:`convert_official_checkpoint` reads the checkpoint safely
(:mod:`chexgen.models.official`: key mapping, architecture, pos-embed check),
and writes a folder ``ChexGenPipeline.from_pretrained`` loads. The folder
references the text encoder (T5 v1.1 XXL, 120 tokens) and the VAE
(``stabilityai/sd-vae-ft-ema``) by id or path; neither is downloaded or loaded
here, so conversion runs offline and needs memory for the DiT weights only
(memory-mapped checkpoint, meta-device model, tensors assigned, never copied twice).

Layering note: writing a *pipeline* folder needs the pipeline class, which sits
one layer above ``models``; it is imported inside the function only. This module
belongs with the pipelines once they are a package.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from chexgen.errors import ChexgenError

__all__ = ["OFFICIAL_CONTROL_PALETTE", "DTYPES", "ConversionResult", "convert_official_checkpoint",
           "reference_specs"]

#: Condition palette id written into converted official control adapters. The official
#: control model was trained on binary masks (finding = white, background = black), not on
#: chexgen's gray class palette, so chexgen's loader refuses it until that rendering exists.
OFFICIAL_CONTROL_PALETTE = "official-binary-mask"

DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class ConversionResult:
    """What :func:`convert_official_checkpoint` wrote."""

    out_dir: Path
    architecture: dict[str, Any]
    preset: str | None
    weights: str
    num_parameters: int
    controlnet_dir: Path | None
    checkpoint_sha256: str | None


def _reference_vae(spec):
    """A RadiographVAE with the SD VAE architecture on the meta device: no weights, no download.

    The pipeline object needs a VAE to be built; an ``sd`` VAE is saved as a
    reference only, so the placeholder never holds or writes weights.
    """
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL

    from chexgen.models.vae import RadiographVAE

    with init_empty_weights():
        ae = AutoencoderKL(
            in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512), layers_per_block=2,
            latent_channels=spec.latent_channels, scaling_factor=spec.scaling_factor or 0.18215,
        )
    return RadiographVAE(ae, spec)


def reference_specs(arch, text_encoder: str | None, vae: str | None):
    """Preset name, text encoder spec and VAE spec for an official model of ``arch``."""
    from chexgen.models.presets import get_preset

    name = f"xl2-{arch.resolution}"
    try:
        preset = get_preset(name)
    except ChexgenError:
        preset = get_preset("xl2-256")
        name = None
    te = preset.text_encoder
    te = replace(te, max_length=arch.max_text_len, embed_dim=arch.caption_channels,
                 name_or_path=text_encoder or te.name_or_path)
    vae_spec = replace(preset.vae, name_or_path=vae or preset.vae.name_or_path)
    if vae and vae.startswith((".", "/", "~")) and not Path(vae).expanduser().exists():
        raise ChexgenError(f"VAE folder {vae} does not exist")
    xl = preset.transformer
    if name is not None and (arch.depth, arch.hidden_size, arch.num_heads) != (
            xl["depth"], xl["hidden_size"], xl["num_heads"]):
        name = None  # not the paper size (e.g. a test model): no preset name
    return name, te, vae_spec


def convert_official_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    control: bool = False,
    use_ema: bool = True,
    resolution: int | None = None,
    num_heads: int | None = None,
    pos_embed_scale: float | None = None,
    dtype: str = "auto",
    text_encoder: str | None = None,
    vae: str | None = None,
    hash_checkpoint: bool = True,
) -> ConversionResult:
    """Convert an official checkpoint into a chexgen pipeline folder at ``out_dir``.

    Writes ``transformer/`` (safetensors + config, ``null_caption_mask="prompt"``),
    ``scheduler/``, ``chexgen_config.json`` (T5 + SD VAE references, official
    prompt cleaning, provenance in ``extra``) and, for ``control``, ``controlnet/``
    (the adapter, in :class:`~chexgen.models.controlnet.ChexGenControlNet` layout).

    ``pos_embed_scale`` overrides the pos-embed interpolation scale; by default it
    follows the resolution (1.0 at 256 px, 2.0 at 512 px) and is read off the
    checkpoint's saved ``pos_embed`` at any other resolution.
    """
    from chexgen.models.official import load_official_transformer
    from chexgen.pipelines import ChexGenPipeline, PipelineConfig
    from chexgen.utils import sha256_file

    if dtype not in DTYPES:
        raise ChexgenError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    checkpoint = Path(checkpoint)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ChexgenError(f"--out {out}: folder exists and is not empty; choose a new folder")

    model, arch, control_weights = load_official_transformer(
        checkpoint, use_ema=use_ema, resolution=resolution, num_heads=num_heads,
        interpolation_scale=pos_embed_scale, control=control, dtype=DTYPES[dtype],
    )
    preset, te_spec, vae_spec = reference_specs(arch, text_encoder, vae)
    digest = sha256_file(checkpoint) if hash_checkpoint else None
    weights = "state_dict_ema" if use_ema else "state_dict"
    config = PipelineConfig(
        preset=preset, resolution=arch.resolution, text_encoder=te_spec, vae=vae_spec,
        prompt_cleaning="official", guidance_scale=4.0,
        extra={"source": "official", "checkpoint": checkpoint.name, "checkpoint_sha256": digest,
               "weights": weights, "architecture": arch.to_dict(), "official_sampler": "official",
               "control": bool(control)},
    )
    pipe = ChexGenPipeline(model, _reference_vae(vae_spec), text_encoder=None, config=config)

    # Write into a sibling temp folder and rename at the end: a crash never leaves a half pipeline.
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(tmp, save_vae_weights=False)
    controlnet_dir = None
    if control_weights is not None:
        adapter = _official_adapter(model, control_weights)
        adapter.save_pretrained(str(tmp / "controlnet"), safe_serialization=True)
        controlnet_dir = out / "controlnet"
    if out.exists():
        out.rmdir()  # empty (checked above)
    tmp.rename(out)
    n_params = sum(p.numel() for p in model.parameters())
    return ConversionResult(out_dir=out, architecture=arch.to_dict(), preset=preset, weights=weights,
                            num_parameters=n_params, controlnet_dir=controlnet_dir, checkpoint_sha256=digest)


def _official_adapter(model, control_weights: dict[str, torch.Tensor]):
    """The official control blocks as a :class:`ChexGenControlNet` (meta init, weights assigned)."""
    from accelerate import init_empty_weights

    from chexgen.models.controlnet import ChexGenControlNet
    from chexgen.models.official import assign_weights

    blocks = {int(k.split(".")[1]) for k in control_weights if k.startswith("controlnet.")}
    n = max(blocks) + 1 if blocks else 0
    if sorted(blocks) != list(range(n)):
        raise ChexgenError(f"official control blocks are not numbered 0..{n - 1}: {sorted(blocks)}")
    bb = model.backbone.config
    with init_empty_weights():
        adapter = ChexGenControlNet(
            num_blocks=n, base_depth=bb.num_layers,
            hidden_size=bb.num_attention_heads * bb.attention_head_dim, num_heads=bb.num_attention_heads,
            cross_attention_dim=bb.cross_attention_dim, palette=OFFICIAL_CONTROL_PALETTE,
        )
    assign_weights(adapter, control_weights, [], what="official control weights")
    adapter.check_compatible(model)
    return adapter.eval()
