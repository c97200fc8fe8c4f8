"""Spatial-control options of ``chexgen generate`` (masks, boxes, a ControlNet adapter).

Kept apart from the generate command so that command stays about prompts:
``add_control_arguments(parser)`` adds one argument group, ``control_requested(args)``
says whether any of it was given, and :func:`generate_with_control` does the work
(read conditions, pair them with prompts, sample with guidance applied through the
control branch, write images + conditions + masks + COCO boxes + manifest).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Sequence

from chexgen.errors import ChexgenError

__all__ = ["add_control_arguments", "control_requested", "read_condition_inputs", "generate_with_control"]

log = logging.getLogger(__name__)


def add_control_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "spatial control",
        "Place findings where a mask or a box says (with --control-model, or the bundled adapter). "
        "One image per condition (times "
        "--num-images-per-prompt); prompts: one for all conditions, one per condition, or the manifest's own text.",
    )
    g.add_argument("--control-model", metavar="DIR",
                   help="ControlNet adapter folder (from chexgen train-control); its base is --model, else the base "
                        "recorded in the adapter's control_info.json. Default with --masks/--boxes and no --model: "
                        "the bundled demo model's adapter")
    g.add_argument("--masks", metavar="PATH",
                   help="a folder of mask PNGs (binary, or label maps with --mask-classes) or a SIIM-style RLE CSV "
                        "(ImageId, EncodedPixels)")
    g.add_argument("--mask-class", default="Pneumothorax",
                   help="class of binary masks (palette name or alias, e.g. Pneumothorax, lungs, ribs, Nodule)")
    g.add_argument("--mask-classes", metavar="V=NAME,...",
                   help="read mask PNGs as label maps: pixel value -> class, e.g. '1=lungs,2=heart,3=Nodule'")
    g.add_argument("--mask-threshold", type=float, default=None,
                   help="binarise non-binary masks at this fraction of their maximum (unset: a non-binary mask is an error)")
    g.add_argument("--mask-size", type=int, nargs=2, metavar=("W", "H"), default=(1024, 1024),
                   help="image size the RLE strings refer to")
    g.add_argument("--include-empty-masks", action="store_true",
                   help="keep RLE rows of -1 (no finding) as blank conditions instead of skipping them")
    g.add_argument("--boxes", metavar="PATH",
                   help="boxes as COCO JSON, CSV (image_id,label,x0,y0,x1,y1[,width,height]; NIH BBox_List and "
                        "VinDr-CXR layouts too) or a chexgen manifest (.jsonl/.parquet, with its masks and text)")
    g.add_argument("--conditioning-scale", type=float, default=1.0,
                   help="strength of the control residuals (0 = ignore the condition)")
    g.add_argument("--max-conditions", type=int, default=None, metavar="N",
                   help="use only the first N conditions")


def control_requested(args: argparse.Namespace) -> bool:
    return any(getattr(args, k, None) for k in ("control_model", "masks", "boxes"))


def _parse_classes(text: str | None) -> dict[int, str] | None:
    if not text:
        return None
    out = {}
    for part in text.split(","):
        try:
            value, name = part.split("=", 1)
            out[int(value)] = name.strip()
        except ValueError:
            raise ChexgenError(f"--mask-classes: expected 'VALUE=NAME' pairs, got {part!r}") from None
    return out


def read_condition_inputs(args: argparse.Namespace):
    """The :class:`ConditionInput` list described by the control options (masks and boxes merged by id)."""
    from chexgen.data.condition_sources import merge_conditions, read_box_file, read_mask_folder, read_rle_csv

    groups = []
    if args.masks:
        path = Path(args.masks)
        if path.is_dir():
            groups.append(read_mask_folder(path, class_name=args.mask_class,
                                           classes=_parse_classes(args.mask_classes), threshold=args.mask_threshold))
        elif path.name.lower().endswith((".csv", ".csv.gz")):
            w, h = args.mask_size
            groups.append(read_rle_csv(path, class_name=args.mask_class, width=w, height=h,
                                       include_empty=args.include_empty_masks, limit=args.max_conditions))
        else:
            raise ChexgenError(f"--masks {path}: expected a folder of PNG masks or an RLE .csv(.gz)")
    if args.boxes:
        groups.append(read_box_file(args.boxes))
    if not groups:
        raise ChexgenError("--control-model needs conditions: give --masks and/or --boxes")
    conditions = merge_conditions(*groups)
    if args.max_conditions is not None:
        conditions = conditions[: args.max_conditions]
    return conditions


def generate_with_control(
    args: argparse.Namespace,
    prompts: Sequence[str],
    out: "str | Path",
    model: str | None = None,
    seed: int = 0,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    sampler: str | None = None,
    batch_size: int = 8,
    images_per_condition: int = 1,
    bits: int = 8,
    device: str | None = None,
    progress: bool = True,
    base_pipeline: Any = None,
) -> int:
    """Run a mask / box guided generation from parsed control options; returns the number of images."""
    from chexgen import __version__
    from chexgen.control_outputs import write_controlled_outputs
    from chexgen.control_pipeline import ChexGenControlPipeline
    from chexgen.utils import sha256_file

    if not args.control_model:
        raise ChexgenError("--masks / --boxes need --control-model (an adapter from chexgen train-control); "
                           "the bundled demo adapter is the default only when --model is not given")
    conditions = read_condition_inputs(args)
    import torch

    base = base_pipeline if base_pipeline is not None else model
    base_kwargs = {}
    if base_pipeline is None and getattr(args, "text_encoder", None):
        base_kwargs["text_encoder_name_or_path"] = args.text_encoder
    if device is None and base_pipeline is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = ChexGenControlPipeline.from_pretrained(args.control_model, base=base, device=device, **base_kwargs)
    if args.conditioning_scale < 0:
        raise ChexgenError(f"--conditioning-scale must be >= 0, got {args.conditioning_scale}")
    result = pipe(list(prompts), conditions, num_images_per_condition=images_per_condition, seed=seed,
                  num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                  conditioning_scale=args.conditioning_scale, sampler=sampler, batch_size=batch_size,
                  progress=progress)
    cfg = pipe.base.config
    used_sampler = sampler or cfg.default_sampler
    from chexgen.diffusion.samplers import get_sampler_spec

    weights = Path(args.control_model) / "diffusion_pytorch_model.safetensors"
    provenance = {
        "model": str(pipe.base.source_path or model),
        "checkpoint_sha256": pipe.base.checkpoint_sha256(),
        "control_model": str(args.control_model),
        "control_sha256": sha256_file(weights) if weights.is_file() else None,
        "conditioning_scale": args.conditioning_scale,
        "sampler": used_sampler,
        "steps": num_inference_steps or cfg.num_inference_steps or get_sampler_spec(used_sampler).default_steps,
        "guidance": cfg.guidance_scale if guidance_scale is None else guidance_scale,
        "chexgen_version": __version__,
    }
    write_controlled_outputs(out, result, conditions, provenance, policy=pipe.fit_policy, bits=bits,
                             palette=pipe.controlnet.config.palette)
    log.info("wrote %d controlled images to %s", result.images.shape[0], out)
    return int(result.images.shape[0])
