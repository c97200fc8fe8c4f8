"""Training configuration: dataclass defaults < preset defaults < YAML/TOML file < command line.

A run is described by one flat dataclass (:class:`TrainConfig` for the diffusion
transformer, :class:`VAETrainConfig` for the gray VAE). The layers are merged in
that order by :func:`resolve_config`, every value is coerced to the field's type
(so ``--set batch_size=8`` and ``batch_size: "8"`` in a file both give an int), and
unknown keys are errors that list the valid ones: a typo must never be ignored.

The resolved config is written next to every checkpoint (``config.yaml``), so a
run can always be rebuilt and resumed exactly (:func:`save_config`,
:func:`load_saved_config`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, TypeVar

import tomllib
import yaml

from chexgen.errors import ChexgenError
from chexgen.utils import atomic_write_text

__all__ = [
    "TrainConfig",
    "VAETrainConfig",
    "PRESET_TRAIN_DEFAULTS",
    "resolve_config",
    "read_config_file",
    "parse_overrides",
    "save_config",
    "load_saved_config",
    "config_to_dict",
    "add_config_arguments",
    "config_from_args",
]

C = TypeVar("C")


@dataclass
class LoopConfig:
    """Options every chexgen training loop shares (diffusion, VAE, ControlNet)."""

    output_dir: str = "runs/chexgen"
    seed: int = 0
    # optimisation (paper: AdamW lr 1e-4, weight decay 0.01, grad clip 1.0)
    batch_size: int = 32  # per process
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    lr_warmup_steps: int = 0
    # warmup-stable-decay: linear decay to 0 over the last N steps before max_steps (0 = constant LR)
    lr_decay_steps: int = 0
    # budget: stop at whichever comes first
    max_steps: int = 1000
    max_minutes: float | None = None
    # "auto" = bf16 on a GPU that supports it and on a CPU with AMX-BF16 / AVX512-BF16, else fp32 ("no");
    # master weights, optimizer state, EMA and the loss stay fp32 (chexgen.training.trainer.make_accelerator)
    mixed_precision: str = "auto"
    # exponential moving average of the weights; decay ramps up as (1+n)/(10+n) until ema_decay
    ema_decay: float = 0.9999
    gradient_checkpointing: bool = False
    num_workers: int = 0
    num_threads: int = 0  # torch CPU threads; 0 = torch's default
    # bookkeeping
    checkpoint_every: int = 500  # optimisation steps; 0 = only at the end
    keep_checkpoints: int = 2  # newest N kept; 0 = keep all
    log_every: int = 10
    sample_every: int = 0  # 0 = sample grid only at the end
    resume: bool = True  # continue from the newest checkpoint in output_dir if there is one
    progress: bool = True


@dataclass
class TrainConfig(LoopConfig):
    """``chexgen train``: a text-to-image diffusion transformer on cached (or on-the-fly) features."""

    preset: str = "tiny"
    data: str | None = None  # a `chexgen prepare` cache folder, or a manifest with encode_on_the_fly
    data_root: str | None = None  # with a manifest: refuse image paths resolving outside this folder
    vae: str | None = None  # folder of a trained VAE (chexgen train-vae) instead of the preset's
    transformer_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {num_layers: 2}
    # curriculum: start from a stage-1 checkpoint / pipeline folder at another resolution
    init_from: str | None = None
    reinit_null_caption: bool = False
    resolution: int | None = None  # None = the preset's (or the cache's) resolution
    caption_dropout: float = 0.1
    snr_gamma: float | None = None  # min-SNR weighting of the epsilon MSE (5 is usual); None = plain MSE
    latent_sampling: str = "sample"  # "sample" from the cached mean+std each step, or "mean"
    encode_on_the_fly: bool = False
    text_field: str = "auto"  # for on-the-fly encoding: impression | report | auto
    resize_policy: str = "crop"
    sample_prompts: list[str] = field(default_factory=lambda: [
        "No acute cardiopulmonary process.",
        "Large right pleural effusion.",
        "Cardiomegaly with pulmonary edema.",
        "Left upper lobe pneumonia.",
    ])
    sample_steps: int = 25
    sample_guidance: float = 4.0
    export: bool = True  # write a pipeline folder (output_dir/pipeline) from the EMA weights at the end
    # clamp of predicted clean latents stored in the exported pipeline (its sampling default); None = the
    # largest |latent| of the cache rounded up to 0.5 (off when encoding on the fly); 0 = off
    clip_latents: float | None = None


@dataclass
class VAETrainConfig(LoopConfig):
    """``chexgen train-vae``: the small 1-channel AutoencoderKL of the small presets."""

    preset: str = "tiny"
    data: str | None = None  # a manifest of images
    data_root: str | None = None  # refuse image paths resolving (symlinks followed) outside this folder
    init_from: str | None = None  # a RadiographVAE folder to fine-tune; None = random init
    resolution: int | None = None
    resize_policy: str = "crop"
    learning_rate: float = 4.5e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    kl_weight: float = 1e-6
    ssim_weight: float = 0.2
    l1_weight: float = 1.0
    scaling_samples: int = 512  # images encoded to set scaling_factor = 1 / std(latents)
    crop_size: int | None = None  # train on random square crops of this size (multiple of 8); None = whole image
    decoder_only: bool = False  # freeze the encoder (and its scaling_factor): the latent space stays the same
    checkpoint_every: int = 0


# Per-preset training defaults (the layer between dataclass defaults and the user's file).
PRESET_TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {"batch_size": 32, "ema_decay": 0.999, "checkpoint_every": 500, "lr_warmup_steps": 50},
    "small": {"batch_size": 32, "ema_decay": 0.9995, "checkpoint_every": 1000, "lr_warmup_steps": 200},
    "xl2-256": {"batch_size": 64, "ema_decay": 0.9999, "checkpoint_every": 2000, "lr_warmup_steps": 1000,
                "num_workers": 8},
    "xl2-512": {"batch_size": 16, "ema_decay": 0.9999, "checkpoint_every": 2000, "lr_warmup_steps": 1000,
                "num_workers": 8, "reinit_null_caption": True},
}


# --------------------------------------------------------------------------- files
def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml), TOML (.toml) or JSON file holding one mapping of config keys."""
    path = Path(path)
    if not path.is_file():
        raise ChexgenError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ChexgenError(f"{path}: cannot parse config ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ChexgenError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` strings (values read as YAML: 8, 1e-4, true, [a, b], {num_layers: 2})."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ChexgenError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


# --------------------------------------------------------------------------- coercion
def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ChexgenError:
                continue
        raise ChexgenError(f"config key {key!r}: cannot use {value!r} as {tp}")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ChexgenError(f"config key {key!r}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ChexgenError(f"config key {key!r}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ChexgenError(f"config key {key!r}: expected a number, got {value!r}") from None
        if not math.isfinite(number):  # nan / inf parse as floats but are never a usable setting
            raise ChexgenError(f"config key {key!r}: expected a finite number, got {value!r}")
        if tp is int:
            if number != int(number):
                raise ChexgenError(f"config key {key!r}: expected an integer, got {value!r}")
            return int(number)
        return number
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ChexgenError(f"config key {key!r}: expected a string, got {value!r}")
        return str(value)
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ChexgenError(f"config key {key!r}: expected a list, got {value!r}")
        (inner,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, inner, key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ChexgenError(f"config key {key!r}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _merge(cls: type, base: dict[str, Any], layer: Mapping[str, Any], source: str) -> None:
    types_ = _field_types(cls)
    for key, value in layer.items():
        k = key.replace("-", "_")
        if k not in types_:
            valid = ", ".join(sorted(types_))
            raise ChexgenError(f"{source}: unknown config key {key!r}; valid keys: {valid}")
        base[k] = _coerce(value, types_[k], k)


def resolve_config(
    cls: type[C],
    file: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    preset: str | None = None,
) -> C:
    """Build a config of type ``cls``: defaults, then preset defaults, then ``file``, then ``overrides``.

    ``preset`` (or a ``preset`` key in the file / overrides) selects the preset layer.
    Overrides whose value is ``None`` are ignored (argparse's "not given").
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    file_layer = read_config_file(file) if file else {}
    cli_layer = {k: v for k, v in (overrides or {}).items() if v is not None}
    values: dict[str, Any] = {}
    types_ = _field_types(cls)
    default_preset = next((f.default for f in fields(cls) if f.name == "preset"), None)
    preset_name = cli_layer.get("preset") or file_layer.get("preset") or preset or default_preset
    if preset_name is not None and "preset" in types_:
        values["preset"] = str(preset_name)
        defaults = PRESET_TRAIN_DEFAULTS.get(str(preset_name), {})
        _merge(cls, values, {k: v for k, v in defaults.items() if k in types_}, f"preset {preset_name}")
    _merge(cls, values, file_layer, str(file))
    _merge(cls, values, cli_layer, "command line")
    config = cls(**values)
    _validate(config)
    return config


def _validate(config: Any) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ChexgenError(f"config: {msg}")

    need(config.batch_size >= 1, f"batch_size must be >= 1, got {config.batch_size}")
    need(config.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1")
    need(config.learning_rate > 0, f"learning_rate must be > 0, got {config.learning_rate}")
    need(config.max_steps >= 1, f"max_steps must be >= 1, got {config.max_steps}")
    need(config.max_minutes is None or config.max_minutes > 0, "max_minutes must be > 0")
    need(0.0 <= config.ema_decay < 1.0, f"ema_decay must be in [0, 1), got {config.ema_decay}")
    need(config.mixed_precision in ("auto", "no", "fp32", "fp16", "bf16"),
         f"mixed_precision must be auto|no|fp32|fp16|bf16, got {config.mixed_precision!r}")
    need(config.num_workers >= 0, "num_workers must be >= 0")
    need(config.num_threads >= 0, "num_threads must be >= 0")
    need(config.seed >= 0, f"seed must be >= 0, got {config.seed}")
    for name in ("weight_decay", "adam_epsilon", "max_grad_norm", "lr_warmup_steps", "lr_decay_steps",
                 "checkpoint_every", "keep_checkpoints", "sample_every"):
        need(getattr(config, name) >= 0, f"{name} must be >= 0, got {getattr(config, name)}")
    need(config.lr_decay_steps <= config.max_steps,
         f"lr_decay_steps ({config.lr_decay_steps}) must be <= max_steps ({config.max_steps})")
    need(config.log_every >= 1, f"log_every must be >= 1, got {config.log_every}")
    for name in ("adam_beta1", "adam_beta2"):
        need(0.0 <= getattr(config, name) < 1.0, f"{name} must be in [0, 1), got {getattr(config, name)}")
    if isinstance(config, TrainConfig):
        need(0.0 <= config.caption_dropout < 1.0, f"caption_dropout must be in [0, 1), got {config.caption_dropout}")
        need(config.snr_gamma is None or config.snr_gamma > 0, f"snr_gamma must be > 0, got {config.snr_gamma}")
        need(config.latent_sampling in ("sample", "mean"),
             f"latent_sampling must be 'sample' or 'mean', got {config.latent_sampling!r}")
        need(config.text_field in ("auto", "impression", "report"),
             f"text_field must be auto|impression|report, got {config.text_field!r}")
    if isinstance(config, TrainConfig):
        need(config.sample_steps >= 1, f"sample_steps must be >= 1, got {config.sample_steps}")
        need(config.sample_guidance >= 0, f"sample_guidance must be >= 0, got {config.sample_guidance}")
        need(config.clip_latents is None or config.clip_latents >= 0,
             f"clip_latents must be >= 0, got {config.clip_latents}")
    if isinstance(config, VAETrainConfig):
        for name in ("kl_weight", "ssim_weight", "l1_weight", "scaling_samples"):
            need(getattr(config, name) >= 0, f"{name} must be >= 0, got {getattr(config, name)}")
    if isinstance(config, VAETrainConfig) and config.decoder_only:
        need(bool(config.init_from), "decoder_only fine-tunes an existing VAE's decoder: give init_from (--init-from)")
    if isinstance(config, VAETrainConfig) and config.crop_size is not None:
        need(config.crop_size >= 16 and config.crop_size % 8 == 0,
             f"crop_size must be a multiple of 8 and >= 16, got {config.crop_size}")
    if hasattr(config, "resize_policy"):
        need(config.resize_policy in ("crop", "pad"), f"resize_policy must be crop|pad, got {config.resize_policy!r}")


# --------------------------------------------------------------------------- saving
def config_to_dict(config: Any) -> dict[str, Any]:
    return {"config_class": type(config).__name__, **asdict(config)}


def save_config(config: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically)."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))


def load_saved_config(path: str | os.PathLike, cls: type[C] | None = None) -> C:
    """Read a config written by :func:`save_config` back into its dataclass."""
    data = read_config_file(path)
    name = data.pop("config_class", None)
    if cls is None:
        cls = {"TrainConfig": TrainConfig, "VAETrainConfig": VAETrainConfig}.get(name or "", TrainConfig)
    values: dict[str, Any] = {}
    _merge(cls, values, data, str(path))
    return cls(**values)


# --------------------------------------------------------------------------- command line
HELP: dict[str, str] = {
    "output_dir": "run folder: config.yaml, checkpoints/, logs/ (TensorBoard), samples/, the exported model",
    "seed": "seed of initialisation, data order and per-step noise",
    "batch_size": "images per process per micro-batch",
    "gradient_accumulation_steps": "micro-batches per optimisation step",
    "learning_rate": "AdamW learning rate",
    "weight_decay": "AdamW weight decay",
    "adam_beta1": "AdamW beta1",
    "adam_beta2": "AdamW beta2",
    "adam_epsilon": "AdamW epsilon",
    "max_grad_norm": "clip the gradient norm to this (0 = off)",
    "lr_warmup_steps": "linear LR warm-up steps, then constant",
    "lr_decay_steps": "decay the LR linearly to 0 over the last N steps before --max-steps (warmup-stable-decay: "
                      "a constant-LR run can be resumed with a higher --max-steps and this to anneal it; a run "
                      "stopped earlier by --max-minutes stops mid-decay); 0 = constant after warm-up",
    "max_steps": "stop after this many optimisation steps (in total, over resumes)",
    "max_minutes": "also stop after this much training wall time in this session (then checkpoint and export)",
    "mixed_precision": "auto (bf16 on a GPU that supports it and on a CPU with AMX-BF16 or AVX512-BF16, else fp32; "
                       "CHEXGEN_CPU_BF16=0 turns the CPU's bf16 off) | no or fp32 | bf16 | fp16; weights, optimizer "
                       "state, EMA and loss stay fp32",
    "ema_decay": "EMA decay of the exported weights (ramps up as (1+n)/(10+n))",
    "gradient_checkpointing": "recompute activations in backward to save memory",
    "num_threads": "torch CPU threads (0 = torch's default = all cores; 1 is often fastest for tiny models or "
                   "when other jobs share the cores)",
    "num_workers": "DataLoader worker processes (0 = load in the training process; best on few CPU cores)",
    "checkpoint_every": "write a checkpoint every N steps (0 = only at the end)",
    "keep_checkpoints": "keep only the newest N checkpoints (0 = all)",
    "log_every": "log losses to TensorBoard / the progress bar every N steps",
    "sample_every": "draw a sample grid every N steps (0 = only at the end)",
    "resume": "continue from the newest checkpoint in output_dir if there is one",
    "progress": "show progress bars",
    "preset": "model preset (chexgen presets lists them)",
    "data": "a `chexgen prepare` cache folder (or a manifest with --encode-on-the-fly / for train-vae)",
    "data_root": "with a manifest: refuse image paths that resolve (symlinks followed) outside this folder "
                 "(train-vae lists them as rejects; train --encode-on-the-fly stops); default: no confinement",
    "vae": "folder of a trained VAE (from chexgen train-vae) to sample and export with",
    "transformer_overrides": "YAML mapping of ChexGenDiT arguments overriding the preset, e.g. '{depth: 2}'",
    "init_from": "stage-2 start: a checkpoint, run or pipeline folder (pos-embed recomputed for the new resolution)",
    "reinit_null_caption": "with --init-from: re-initialise the null caption instead of loading it",
    "resolution": "image size in px (default: the cache's / preset's)",
    "caption_dropout": "probability of replacing a caption by the learned null caption (for CFG)",
    "snr_gamma": "min-SNR-gamma weighting of the epsilon MSE (Hang et al. 2023; 5 is the usual value): "
                 "timesteps with SNR > gamma get weight gamma/SNR, shifting effort to the noisy timesteps that "
                 "shape the coarse layout (faster convergence); unset = plain MSE, the paper's recipe",
    "latent_sampling": "sample: draw mean + std * noise from the cached moments each step; mean: use the mean",
    "encode_on_the_fly": "read images and captions from a manifest and encode each batch (slow; no cache)",
    "text_field": "caption source for on-the-fly encoding: auto (impression, else report) | impression | report",
    "resize_policy": "square fit of images: crop (center) | pad (black borders)",
    "sample_prompts": "prompts of the periodic sample grid",
    "sample_steps": "sampler steps for sample grids",
    "sample_guidance": "classifier-free guidance scale for sample grids",
    "export": "write an inference folder at the end from the EMA weights",
    "clip_latents": "clamp predicted clean latents to +-this while sampling, stored in the exported pipeline "
                    "(keeps a young model's images from saturating); default: the largest |latent| of the cache "
                    "rounded up to 0.5; 0 = off",
    "kl_weight": "weight of the KL term",
    "ssim_weight": "weight of the (1 - SSIM) term",
    "l1_weight": "weight of the L1 term",
    "crop_size": "train on random crops of this many px (e.g. 64 at 128 px: ~4x faster steps on CPU); "
                 "none = whole images",
    "scaling_samples": "images encoded at export to set scaling_factor = 1 / std(latents)",
    "decoder_only": "fine-tune only the decoder of --init-from's VAE: encoder, latent space and scaling_factor "
                    "stay as they are, so a diffusion model trained on its latents keeps working (a sharper "
                    "decoder for an existing pipeline, no retraining)",
}


def add_config_arguments(parser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One ``--option`` per config field (default None = "not given", so files and presets apply)."""
    import argparse

    parser.add_argument("--config", metavar="FILE", help="YAML / TOML / JSON file of config keys (CLI wins)")
    parser.add_argument("--set", dest="set_items", action="append", metavar="KEY=VALUE", default=[],
                        help="override any config key (value read as YAML); repeatable")
    unset = argparse.SUPPRESS  # absent from the namespace unless given (and no "(default: None)" in help)
    types_ = _field_types(cls)
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in fields(cls)}
    for name, tp in types_.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = f"{HELP.get(name, name)} (default: {defaults[name]!r})"
        if tp is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=unset, help=help_text)
        elif typing.get_origin(tp) is list:
            parser.add_argument(flag, dest=name, nargs="*", default=unset, help=help_text + " (none given = empty)")
        else:
            parser.add_argument(flag, dest=name, default=unset, metavar=name.split("_")[-1].upper(), help=help_text)


def config_from_args(args, cls: type[C], extra: Mapping[str, Any] | None = None) -> C:
    """Resolve a config from parsed arguments made by :func:`add_config_arguments`."""
    names = set(_field_types(cls))
    cli = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if "transformer_overrides" in cli and isinstance(cli["transformer_overrides"], str):
        cli["transformer_overrides"] = yaml.safe_load(cli["transformer_overrides"])
    cli.update({k: v for k, v in (extra or {}).items() if v is not None})
    cli.update(parse_overrides(getattr(args, "set_items", None)))
    return resolve_config(cls, file=getattr(args, "config", None), overrides=cli)
