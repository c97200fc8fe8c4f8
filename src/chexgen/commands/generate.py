"""``chexgen generate``: prompts -> synthetic radiograph PNGs + a synthetic manifest.

Thin layer over :mod:`chexgen.generation` and :class:`chexgen.ChexGenPipeline`.
Everything that can be wrong with the input (prompts, sampler, model folder) is
checked before the output folder is created. Under ``accelerate launch`` or
``torchrun`` the images are sharded across processes.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from chexgen.errors import ChexgenError

logger = logging.getLogger("chexgen.generate")

SAMPLER_NAMES = ("ddim", "iddpm", "dpmsolver++", "official")  # = chexgen.diffusion.SAMPLERS (kept light here)


def demo_model_path() -> Path:
    """The bundled demo pipeline folder inside the installed package (see chexgen.demo)."""
    from chexgen.demo import bundled_model_dir

    return bundled_model_dir() / "pipeline"


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
    m.add_argument("--model", type=Path, default=None,
                   help="Pipeline folder (from save_pretrained, chexgen train or chexgen convert-official). "
                        "Default: the bundled demo model, if installed.")
    m.add_argument("--preset", default=None,
                   help="Instead of --model, build an UNTRAINED model from this preset (smoke tests; images are "
                        "noise). See `chexgen presets`.")
    m.add_argument("--text-encoder", default=None, metavar="PATH_OR_ID",
                   help="Load the model's text encoder from here instead (e.g. a local T5 v1.1 XXL copy).")
    m.add_argument("--device", default=None,
                   help="torch device (default: this process's accelerator under accelerate/torchrun, else cuda "
                        "if available, else cpu).")
    s = parser.add_argument_group("sampling")
    s.add_argument("--num-images-per-prompt", "-n", type=int, default=1, help="Images per prompt.")
    s.add_argument("--batch-size", type=int, default=8, help="Images per forward pass (per process).")
    s.add_argument("--seed", type=int, default=0,
                   help="Base seed; image k of prompt i uses seed + i * num_images_per_prompt + k.")
    s.add_argument("--sampler", default=None,
                   help=f"One of {', '.join(SAMPLER_NAMES)} (default: the model's, normally ddim).")
    s.add_argument("--steps", type=int, default=None,
                   help="Sampling steps (default: the sampler's: ddim 100, iddpm 100, dpmsolver++ 20, official 100).")
    s.add_argument("--guidance", type=float, default=None,
                   help="Classifier-free guidance scale (default: the model's own, 4.0 unless it stores another).")
    o = parser.add_argument_group("output")
    o.add_argument("--out", type=Path, required=True,
                   help="Output folder: images/*.png, manifest.jsonl, generation.json. Rerunning resumes.")
    o.add_argument("--bits", type=int, default=8, choices=(8, 16), help="PNG bit depth.")
    o.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    try:  # mask / box control lives in its own module (spatial-control engineer)
        from chexgen.commands._control_options import add_control_arguments
    except ImportError:  # pragma: no cover
        return
    add_control_arguments(parser)


def _collect_prompts(args, required: bool = True):
    from chexgen.generation import PromptItem, read_prompts

    direct = list(getattr(args, "text", None) or []) + list(args.prompt or [])
    if direct and args.prompts:
        raise ChexgenError("give prompts directly (PROMPT / --prompt) or with --prompts FILE, not both")
    if direct:
        items = []
        for i, p in enumerate(direct):
            if not p or not p.strip():
                raise ChexgenError(f"prompt number {i + 1} on the command line is empty")
            items.append(PromptItem(p.strip(), None, f"prompt {i + 1}"))
        return items
    if args.prompts is not None:
        return read_prompts(args.prompts, column=args.column, manifest=args.manifest or None,
                            demographic=args.demographic_prompts)
    if required:
        raise ChexgenError("no prompts: give PROMPT, --prompt TEXT or --prompts FILE")
    return []


def _run_control(args) -> int:
    """Mask / box guided generation (see chexgen.commands._control_options)."""
    from chexgen.commands._control_options import generate_with_control

    if args.preset is not None:
        raise ChexgenError("--preset cannot be combined with --control-model")
    items = _collect_prompts(args, required=False)
    if not args.control_model and args.model is None:  # the bundled demo model's adapter, when installed
        bundled = demo_model_path().parent / "control"
        if (bundled / "config.json").is_file():
            args.control_model = str(bundled)
    n = generate_with_control(
        args, [i.prompt for i in items], args.out, model=str(args.model) if args.model else None,
        seed=args.seed, num_inference_steps=args.steps, guidance_scale=args.guidance, sampler=args.sampler,
        batch_size=args.batch_size, images_per_condition=args.num_images_per_prompt, bits=args.bits,
        device=args.device, progress=not args.no_progress,
    )
    print(f"generated {n} controlled image(s) -> {args.out}", flush=True)
    return 0


def _check_numbers(args) -> None:
    if args.sampler is not None and args.sampler not in SAMPLER_NAMES:
        raise ChexgenError(f"unknown sampler {args.sampler!r}; expected one of {', '.join(SAMPLER_NAMES)}")
    if args.num_images_per_prompt < 1:
        raise ChexgenError(f"--num-images-per-prompt must be >= 1, got {args.num_images_per_prompt}")
    if args.batch_size < 1:
        raise ChexgenError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.steps is not None and args.steps < 1:
        raise ChexgenError(f"--steps must be >= 1, got {args.steps}")
    if args.guidance is not None and args.guidance < 0:
        raise ChexgenError(f"--guidance must be >= 0, got {args.guidance}")
    if args.out.exists() and not args.out.is_dir():
        raise ChexgenError(f"--out {args.out} exists and is not a folder")


def _load_pipeline(args):
    from chexgen.pipeline import ChexGenPipeline

    if args.preset is not None:
        if args.model is not None:
            raise ChexgenError("give --model or --preset, not both")
        from chexgen.models.presets import get_preset

        get_preset(args.preset)  # unknown name -> error listing the presets
        pipe = ChexGenPipeline.from_preset(args.preset)
        return pipe, f"preset:{args.preset} (untrained)"
    model = args.model
    if model is None:
        model = demo_model_path()
        if not (model / "chexgen_config.json").is_file():
            raise ChexgenError(
                "no --model given and no bundled demo model is installed; pass --model FOLDER (a pipeline "
                "folder from `chexgen train`, `chexgen demo` or `chexgen convert-official`)"
            )
    pipe = ChexGenPipeline.from_pretrained(model, text_encoder_name_or_path=args.text_encoder)
    return pipe, str(Path(model).resolve())


def _use_cpu(device: str | None) -> bool:
    """Whether accelerate should set up CPU processes (gloo) rather than one GPU per process.

    accelerate only forms a multi-process CPU group when asked for CPU explicitly, so
    ask whenever CUDA is absent (e.g. ``torchrun --nproc_per_node 2`` on a CPU machine).
    """
    import os

    import torch

    if device is not None:
        return torch.device(device).type == "cpu"
    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.cuda.is_available()


def run(args: argparse.Namespace) -> int:
    _check_numbers(args)
    try:
        from chexgen.commands._control_options import control_requested
    except ImportError:  # pragma: no cover
        control_requested = None
    if control_requested is not None and control_requested(args):
        return _run_control(args)
    items = _collect_prompts(args)

    from accelerate import PartialState

    from chexgen.diffusion.samplers import get_sampler_spec
    from chexgen.generation import GenerationSettings, generate_to_folder, prompts_digest

    pipe, model_name = _load_pipeline(args)
    sampler = args.sampler or pipe.config.default_sampler
    steps = args.steps or pipe.config.num_inference_steps or get_sampler_spec(sampler).default_steps
    guidance = pipe.config.guidance_scale if args.guidance is None else args.guidance
    state = PartialState(cpu=_use_cpu(args.device))
    device = args.device or str(state.device)
    pipe.to(device)
    pipe.text_encoder  # load now (bf16 T5 on GPU): a broken reference fails before anything is written
    settings = GenerationSettings(
        model=model_name,
        checkpoint_sha256=pipe.checkpoint_sha256(),
        sampler=sampler,
        steps=int(steps),
        guidance=float(guidance),
        seed=args.seed,
        num_images_per_prompt=args.num_images_per_prompt,
        bits=args.bits,
        resolution=pipe.config.resolution,
        prompts_sha256=prompts_digest(items),
    )
    counts = generate_to_folder(
        pipe, items, args.out, settings, batch_size=args.batch_size,
        rank=state.process_index, world=state.num_processes,
        barrier=state.wait_for_everyone if state.num_processes > 1 else None,
        progress=not args.no_progress,
    )
    rank = f"process {state.process_index + 1}/{state.num_processes}: " if state.num_processes > 1 else ""
    print(f"{rank}generated {counts['generated']} image(s), skipped {counts['skipped']} already present "
          f"-> {args.out}", flush=True)
    if state.is_main_process:
        print(f"manifest: {args.out / 'manifest.jsonl'}", flush=True)
    return 0
