"""One generation job from options to folder: what ``chexgen generate`` runs.

:func:`run_generation` checks every option and input before the output folder is created,
loads the model (a chexgen pipeline folder, an untrained preset, the bundled demo model, or a diffusers
pipeline by folder or hub id: :mod:`chexgen.generation.backends.select` tells which), adds the
ControlNet adapter when masks / boxes are given, renders the prompts through the model's prompt
template, sets up the processes (``accelerate launch`` / ``torchrun`` shard the plan; a CPU machine
gets gloo processes) and runs the engine.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chexgen.errors import ChexgenError
from chexgen.generation.conditions import ConditionOptions, read_conditions
from chexgen.generation.engine import GenerationResult, generate_to_folder
from chexgen.generation.prompts import PromptItem, prompts_from_texts, read_prompts

__all__ = ["GenerateOptions", "run_generation", "collect_prompts"]

log = logging.getLogger(__name__)


@dataclass
class GenerateOptions:
    """Everything a generation job needs (the options of ``chexgen generate``; see its ``--help``).

    texts / prompts_file (+ column, manifest, demographic): the prompts, given directly or in a file.
    model (a folder or a hub id) / backend (None = read off the model) / preset / text_encoder / device /
    precision (auto | fp32 | bf16 | fp16, for chexgen and diffusers models alike, see
    :mod:`chexgen.models.precision`; dtype, a torch dtype name, overrides it for diffusers models): the generator. prompt_template: how prompts are built from the records (see
    :mod:`chexgen.generation.templates`). control_model / conditions / conditioning_scale / control_guidance
    (``joint`` | ``shared``; ``None``: the adapter's default): spatial control.
    sampler / steps / guidance / negative_prompt (None = the model's defaults), num_images_per_prompt,
    batch_size, seed: sampling. out / bits / image_format (png, dicom, both) / watermark / progress: output.
    """

    out: Path
    texts: list[str] = field(default_factory=list)
    prompts_file: Path | None = None
    column: str | None = None
    manifest: bool = False
    demographic: bool = False
    model: "Path | str | None" = None
    backend: str | None = None
    preset: str | None = None
    text_encoder: str | None = None
    device: str | None = None
    precision: str = "auto"
    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    num_images_per_prompt: int = 1
    batch_size: int = 8
    seed: int = 0
    bits: int = 8
    image_format: str = "png"
    watermark: bool = True
    progress: bool = True
    control_model: Path | None = None
    conditions: ConditionOptions = field(default_factory=ConditionOptions)
    conditioning_scale: float = 1.0
    control_guidance: str | None = None
    prompt_template: str | None = None
    negative_prompt: str | None = None
    dtype: str | None = None


def collect_prompts(opts: GenerateOptions, required: bool = True) -> list[PromptItem]:
    """The job's prompts: given directly or read from ``prompts_file`` (not both)."""
    if opts.texts and opts.prompts_file:
        raise ChexgenError("give prompts directly (PROMPT / --prompt) or with --prompts FILE, not both")
    if opts.texts:
        items = prompts_from_texts(opts.texts, where="prompt number")
    elif opts.prompts_file is not None:
        items = read_prompts(opts.prompts_file, column=opts.column, manifest=opts.manifest or None,
                             demographic=opts.demographic)
    elif required:
        raise ChexgenError("no prompts: give PROMPT, --prompt TEXT or --prompts FILE")
    else:
        items = []
    if opts.prompt_template is not None and items:
        from chexgen.generation.templates import apply_template

        if opts.demographic:
            raise ChexgenError("give --demographic-prompts or --prompt-template, not both")
        items = apply_template(items, opts.prompt_template)
    return items


def _use_cpu(device: str | None) -> bool:
    """Whether accelerate should set up CPU processes (gloo) rather than one GPU per process.

    accelerate only forms a multi-process CPU group when asked for CPU explicitly, so ask
    whenever CUDA is absent (e.g. ``torchrun --nproc_per_node 2`` on a CPU machine).
    """
    import torch

    if device is not None:
        return torch.device(device).type == "cpu"
    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.cuda.is_available()


def _load_pipeline(opts: GenerateOptions):
    from chexgen.assets import demo_pipeline_dir
    from chexgen.pipelines import ChexGenPipeline

    if opts.preset is not None:
        if opts.model is not None:
            raise ChexgenError("give --model or --preset, not both")
        from chexgen.models.presets import get_preset

        get_preset(opts.preset)  # unknown name -> error listing the presets
        return ChexGenPipeline.from_preset(opts.preset), f"preset:{opts.preset} (untrained)"
    model = opts.model
    if model is None:
        model = demo_pipeline_dir()
        if not (model / "chexgen_config.json").is_file():
            raise ChexgenError(
                "no --model given and no bundled demo model is installed; pass --model FOLDER (a pipeline "
                "folder from `chexgen train`, `chexgen demo` or `chexgen convert-official`)"
            )
    pipe = ChexGenPipeline.from_pretrained(model, text_encoder_name_or_path=opts.text_encoder)
    return pipe, str(Path(model).resolve())


def _control_model(opts: GenerateOptions) -> Path | None:
    """The adapter folder: ``control_model``, else the bundled adapter when no model was given."""
    from chexgen.assets import demo_control_dir

    if opts.control_model is not None:
        return Path(opts.control_model)
    if not opts.conditions.requested:
        return None
    if opts.model is None and opts.preset is None and (demo_control_dir() / "config.json").is_file():
        return demo_control_dir()
    raise ChexgenError("--masks / --boxes need --control-model (an adapter from chexgen train-control); "
                       "the bundled demo adapter is the default only when --model is not given")


def _model_source(opts: GenerateOptions):
    """The checked model source of ``--model`` (None: a preset or the bundled model, both chexgen)."""
    from chexgen.generation.backends.select import detect_backend

    if opts.model is None:
        if opts.backend not in (None, "chexgen"):
            raise ChexgenError(f"--backend {opts.backend} needs --model (a folder or a hub id)")
        return None
    return detect_backend(opts.model, opts.backend)


def _templated(backend, opts: GenerateOptions):
    if opts.prompt_template is None:
        return backend
    from chexgen.generation.templates import TemplatedBackend, parse_template

    return TemplatedBackend(backend, parse_template(opts.prompt_template))


def _run_diffusers(opts: GenerateOptions, source, out: Path) -> GenerationResult:
    """A diffusers pipeline: no chexgen-only options, prompts checked, then load and run the engine."""
    from accelerate import PartialState

    from chexgen.generation.backends.diffusers import DiffusersBackend, diffusers_dtype

    chexgen_only = [flag for flag, given in (
        ("--preset", opts.preset is not None), ("--sampler", opts.sampler is not None),
        ("--text-encoder", opts.text_encoder is not None), ("--control-model", opts.control_model is not None),
        ("--masks/--boxes", opts.conditions.requested)) if given]
    if chexgen_only:
        raise ChexgenError(f"{', '.join(chexgen_only)}: chexgen pipelines only; a diffusers pipeline uses its own "
                           "scheduler and text encoder")
    items = collect_prompts(opts)
    state = PartialState(cpu=_use_cpu(opts.device))
    device = opts.device or str(state.device)
    dtype = diffusers_dtype(opts.precision, opts.dtype, device)
    backend = DiffusersBackend.load(source.diffusers, device=device, dtype=dtype,
                                    progress=opts.progress, steps=opts.steps, guidance=opts.guidance,
                                    negative_prompt=opts.negative_prompt)
    return generate_to_folder(
        _templated(backend, opts), items, out, num_images_per_prompt=opts.num_images_per_prompt, seed=opts.seed,
        bits=opts.bits, batch_size=opts.batch_size, rank=state.process_index, world=state.num_processes,
        barrier=state.wait_for_everyone if state.num_processes > 1 else None, progress=opts.progress,
        image_format=opts.image_format, watermark=opts.watermark,
    )


def run_generation(opts: GenerateOptions) -> GenerationResult:
    """Run one generation job (see the module docstring); returns this process's counts."""
    from chexgen.generation.backends import ChexGenBackend
    from chexgen.pipelines import ChexGenControlPipeline
    from chexgen.pipelines.base import resolve_sampling

    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise ChexgenError(f"--out {out} exists and is not a folder")
    if opts.bits not in (8, 16):
        raise ChexgenError(f"--bits must be 8 or 16, got {opts.bits}")
    if opts.image_format not in ("png", "dicom", "both"):
        raise ChexgenError(f"--format must be png, dicom or both, got {opts.image_format!r}")
    if opts.image_format != "png":
        from chexgen.release.dicom import require_dicom_writer

        require_dicom_writer()
    control_dir = _control_model(opts)
    if control_dir is not None and opts.preset is not None:
        raise ChexgenError("--preset cannot be combined with --control-model")
    if control_dir is not None and not opts.conditions.requested:
        raise ChexgenError("--control-model needs conditions: give --masks and/or --boxes")
    source = _model_source(opts)
    if source is not None and source.backend == "diffusers":
        return _run_diffusers(opts, source, out)
    if opts.negative_prompt is not None or opts.dtype is not None:
        raise ChexgenError("negative_prompt / dtype: diffusers pipelines only (chexgen models take precision "
                           "and guide with the null caption)")
    items = collect_prompts(opts, required=control_dir is None)
    rejects: list[dict[str, Any]] = []
    conditions = read_conditions(opts.conditions, rejects) if control_dir is not None else None

    from accelerate import PartialState

    from chexgen.models.precision import resolve_precision

    resolve_precision(opts.precision)  # an unknown name fails before the model is loaded
    pipe, model_name = _load_pipeline(opts)
    sampling = resolve_sampling(pipe.config, opts.sampler, opts.steps, opts.guidance)
    state = PartialState(cpu=_use_cpu(opts.device))
    pipe.to(opts.device or str(state.device), precision=opts.precision)
    pipe.text_encoder  # load now: a broken reference fails before anything is written
    control = None
    if control_dir is not None:
        control = ChexGenControlPipeline.from_pretrained(control_dir, base=pipe)
    backend = _templated(ChexGenBackend(pipe, sampling, model_name=model_name, control=control,
                                        conditioning_scale=opts.conditioning_scale,
                                        control_guidance=opts.control_guidance), opts)
    return generate_to_folder(
        backend, items, out, num_images_per_prompt=opts.num_images_per_prompt, seed=opts.seed, bits=opts.bits,
        batch_size=opts.batch_size, conditions=conditions, rank=state.process_index, world=state.num_processes,
        barrier=state.wait_for_everyone if state.num_processes > 1 else None, progress=opts.progress,
        rejects=rejects, image_format=opts.image_format, watermark=opts.watermark,
    )
