"""``chexgen generate``: prompts (and masks / boxes) -> synthetic radiograph PNGs + a synthetic manifest.

Parses the options and calls :func:`chexgen.generation.run_generation`, which checks every input
before the output folder is created. Under ``accelerate launch`` or ``torchrun`` the images are
sharded across processes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from chexgen.diffusion.samplers import DEFAULT_STEPS, SAMPLERS
from chexgen.models.precision import PRECISION_HELP, PRECISIONS
from chexgen.pipelines.control import CONTROL_GUIDANCE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("prompts (one of)")
    src.add_argument("text", nargs="*", default=[], metavar="PROMPT",
                     help="Prompt(s) given directly, e.g. chexgen generate \"Small left pleural effusion.\" --out x")
    src.add_argument("--prompt", action="append", default=None, metavar="TEXT",
                     help="A prompt (repeat the option for several).")
    src.add_argument("--prompts", type=Path, default=None, metavar="FILE",
                     help="Prompt file: .txt (one per line), .csv (see --column), .json (list), .jsonl, "
                          "or a chexgen manifest (.parquet, or .jsonl with --manifest).")
    src.add_argument("--column", default=None,
                     help="CSV column / JSON field / manifest field holding the prompt "
                          "(default: 'prompt'; for manifests the impression, else the report).")
    src.add_argument("--manifest", action="store_true",
                     help="Read --prompts as a chexgen manifest; labels and demographics of each record are "
                          "copied to its synthetic records.")
    src.add_argument("--demographic-prompts", action="store_true",
                     help="With a manifest: prefix prompts with sex/age/race the way official ChexGen prompts do.")
    m = parser.add_argument_group("model")
    m.add_argument("--model", default=None, metavar="FOLDER_OR_HUB_ID",
                   help="A chexgen pipeline folder (chexgen_config.json: from chexgen train, demo or "
                        "convert-official), a diffusers text-to-image pipeline folder (model_index.json) or a hub id "
                        "such as stanfordmimi/RoentGen-v2 (read from the local Hugging Face cache when "
                        "HF_HUB_OFFLINE=1). Default: the bundled demo model, if installed.")
    m.add_argument("--backend", choices=("chexgen", "diffusers", "monai"), default=None,
                   help="Force the backend instead of reading it off --model (a mismatch is an error; MONAI "
                        "bundles are refused with the reason).")
    m.add_argument("--prompt-template", default=None, metavar="TEMPLATE",
                   help="Build each prompt from its manifest record, e.g. '{age} year old {race} {sex}. "
                        "{impression}' or a named template (roentgen-v2, impression). Fields: {impression} (the "
                        "prompt text), {report}, {sex} (male/female/other), {Sex}, {age} (whole years), {race}, "
                        "{view}. A field a record lacks is an error before anything is generated.")
    m.add_argument("--negative-prompt", default=None,
                   help="Diffusers pipelines: the negative prompt (default: the pipeline's own, usually none).")
    m.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"),
                   help="Deprecated spelling of --precision (float32 = fp32, bfloat16 = bf16, float16 = fp16), "
                        "kept for old scripts; --precision now applies to diffusers pipelines too.")
    m.add_argument("--preset", default=None,
                   help="Instead of --model, build an UNTRAINED model from this preset (smoke tests; images are "
                        "noise). See `chexgen presets`.")
    m.add_argument("--text-encoder", default=None, metavar="PATH_OR_ID",
                   help="Load the model's text encoder from here instead (e.g. a local T5 v1.1 XXL copy).")
    m.add_argument("--device", default=None,
                   help="torch device (default: this process's accelerator under accelerate/torchrun, else cuda "
                        "if available, else cpu).")
    m.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP + " Images of one seed "
                   "are identical within a precision; bf16 and fp32 images of a seed differ slightly "
                   "(docs/concepts/samplers-precision.md).")
    s = parser.add_argument_group("sampling")
    s.add_argument("--num-images-per-prompt", "-n", type=int, default=1, help="Images per prompt.")
    s.add_argument("--batch-size", type=int, default=8, help="Images per forward pass (per process).")
    s.add_argument("--seed", type=int, default=0,
                   help="Base seed; image k of prompt i uses seed + i * num_images_per_prompt + k.")
    s.add_argument("--sampler", default=None,
                   help=f"Sampler of chexgen models: {', '.join(SAMPLERS)} (default: the model's own; the bundled "
                        "demo model stores dpmsolver++sde, 10 steps). Diffusers pipelines always use their own "
                        "scheduler.")
    s.add_argument("--steps", type=int, default=None,
                   help="Sampling steps (default: the model's own, else the sampler's: "
                        + ", ".join(f"{k} {v}" for k, v in DEFAULT_STEPS.items())
                        + "; a diffusers pipeline's documented default, e.g. 50 for Stable Diffusion).")
    s.add_argument("--guidance", type=float, default=None,
                   help="Classifier-free guidance scale (default: the model's own, 4.0 unless it stores another; a "
                        "diffusers pipeline's documented default, e.g. 7.5 for Stable Diffusion).")
    o = parser.add_argument_group("output")
    o.add_argument("--out", type=Path, required=True,
                   help="Output folder: images/*.png, manifest.jsonl, generation.json. Rerunning resumes.")
    o.add_argument("--bits", type=int, default=8, choices=(8, 16), help="Bit depth of the PNG / DICOM pixels.")
    o.add_argument("--format", dest="image_format", default="png", choices=("png", "dicom", "both"),
                   help="Image files: PNG (images/), synthetic Secondary Capture DICOM (images/*.dcm; needs the "
                        "'release' extra), or both (PNG in images/, DICOM in dicom/).")
    o.add_argument("--no-watermark", action="store_true",
                   help="Do not embed the invisible watermark (chexgen id + image hash) in each image; the opt-out "
                        "is recorded in every image's provenance. `chexgen verify` reads the watermark back.")
    o.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    g = parser.add_argument_group(
        "spatial control",
        "Place findings where a mask or a box says (with --control-model, or the bundled adapter). One image "
        "per condition (times --num-images-per-prompt); prompts: one for all conditions, one per condition, or "
        "the manifest's own text. A condition that cannot be used (bad row, empty or out-of-frame geometry) is "
        "listed in OUT/rejects.jsonl and the rest are generated; the exit code is then 1.",
    )
    g.add_argument("--control-model", type=Path, metavar="DIR",
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
                   help="binarise non-binary masks at this fraction (0..1) of their maximum (unset: a non-binary "
                        "mask is an error)")
    g.add_argument("--mask-size", type=int, nargs=2, metavar=("W", "H"), default=(1024, 1024),
                   help="image size the RLE strings refer to")
    g.add_argument("--include-empty-masks", action="store_true",
                   help="keep RLE rows of -1 (no finding) as blank conditions instead of skipping them")
    g.add_argument("--boxes", metavar="PATH",
                   help="boxes as COCO JSON, CSV (image_id,label,x0,y0,x1,y1[,width,height]; NIH BBox_List and "
                        "VinDr-CXR layouts too) or a chexgen manifest (.jsonl/.parquet, with its masks and text)")
    g.add_argument("--conditioning-scale", type=float, default=1.0,
                   help="strength of the control residuals (0 = ignore the condition)")
    g.add_argument("--control-guidance", choices=CONTROL_GUIDANCE, default=None,
                   help="classifier-free guidance with a condition: joint = the condition goes into the conditional "
                        "branch only, so guidance amplifies it with the text; shared = both branches see it "
                        "(default: what the adapter's control_info.json says, else shared)")
    g.add_argument("--max-conditions", type=int, default=None, metavar="N",
                   help="use only the first N conditions")


def _options(args: argparse.Namespace):
    from chexgen.generation import ConditionOptions, GenerateOptions
    from chexgen.generation.conditions import parse_mask_classes

    conditions = ConditionOptions(
        masks=args.masks, boxes=args.boxes, mask_class=args.mask_class,
        mask_classes=parse_mask_classes(args.mask_classes), mask_threshold=args.mask_threshold,
        mask_size=tuple(args.mask_size), include_empty_masks=args.include_empty_masks,
        max_conditions=args.max_conditions,
    )
    precision = args.precision
    if args.dtype is not None:
        import sys

        from chexgen.errors import ChexgenError
        from chexgen.models.precision import normalise_precision

        alias = normalise_precision(args.dtype)
        if precision not in ("auto", alias):
            raise ChexgenError(f"--dtype {args.dtype} contradicts --precision {precision}; give --precision only")
        print(f"chexgen generate: --dtype is deprecated; use --precision {alias}", file=sys.stderr)
        precision = alias
    return GenerateOptions(
        out=args.out, texts=list(args.text or []) + list(args.prompt or []), prompts_file=args.prompts,
        column=args.column, manifest=args.manifest, demographic=args.demographic_prompts, model=args.model,
        backend=args.backend, prompt_template=args.prompt_template, negative_prompt=args.negative_prompt,
        preset=args.preset, text_encoder=args.text_encoder, device=args.device, precision=precision,
        sampler=args.sampler,
        steps=args.steps, guidance=args.guidance, num_images_per_prompt=args.num_images_per_prompt,
        batch_size=args.batch_size, seed=args.seed, bits=args.bits, image_format=args.image_format,
        watermark=not args.no_watermark, progress=not args.no_progress,
        control_model=args.control_model, conditions=conditions, conditioning_scale=args.conditioning_scale,
        control_guidance=args.control_guidance,
    )


def run(args: argparse.Namespace) -> int:
    from chexgen.generation import run_generation

    result = run_generation(_options(args))
    rank, world = result.rank, result.world
    prefix = f"process {rank + 1}/{world}: " if world > 1 else ""
    print(f"{prefix}generated {result.generated} image(s), skipped {result.skipped} already present "
          f"-> {args.out}", flush=True)
    if rank == 0:
        print(f"manifest: {args.out / 'manifest.jsonl'}", flush=True)
        if result.rejected:
            print(f"rejected {len(result.rejected)} condition(s): see {args.out / 'rejects.jsonl'}", flush=True)
    return 1 if result.rejected else 0
