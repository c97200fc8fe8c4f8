"""``bench.yaml``: what ``chexgen benchmark`` compares, on what, with which measures.

Example (paths relative to the file; unknown keys are errors)::

    out: runs/bench                       # generated images, features, report, leaderboard
    real: data/mimic_test.jsonl           # the real test manifest: prompts + reference images
    split: test                           # optional: only records of this split
    train: data/mimic_train.jsonl         # optional: memorisation / re-identification reference
    max_prompts: 1000
    images_per_prompt: 4                  # MS-SSIM diversity needs >= 2
    seed: 0
    batch_size: 8
    watermark: false                      # default: generated images carry no invisible watermark (see below)
    precision: auto                       # generation: auto (bf16 where fast) | fp32 | bf16 | fp16; per model too
    models:
      - {name: chexgen, backend: chexgen, model: runs/t2i/pipeline, sampler: ddim, steps: 100}
      - {name: roentgen-v2, backend: diffusers, model: stanfordmimi/RoentGen-v2,
         prompt_template: roentgen-v2, steps: 75, guidance: 3, precision: fp16}
      - {name: vae-upper-bound, backend: vae-reconstruction, model: runs/t2i/pipeline}
      - {name: untrained, backend: chexgen, preset: tiny}
    extractors:
      - {name: xrv, kind: xrv, weights: densenet121-res224-all}
      - {name: clip, kind: clip, weights: "ViT-L-14:openai"}
      - {name: rad-dino, kind: rad-dino}            # microsoft/rad-dino
      - {name: phantom, kind: classifier, weights: src/chexgen/assets/demo/classifier}
    reid: {weights: checkpoints/ResNet-50_epoch11_data_handling_RPN.pth, threshold: 0.5}

Backends: ``chexgen`` (a pipeline folder, or ``preset`` for an untrained model), ``diffusers`` (a
folder or hub id), ``vae-reconstruction`` (the VAE of a chexgen pipeline folder re-encoding each
prompt's real image: the upper bound), ``auto`` (read off the folder; the default).

Precision: each model generates in its ``precision`` (else the config's ``precision``, default ``auto``:
bf16 on a CPU or GPU with fast bf16, as ``chexgen generate``); ``dtype`` is the old diffusers-only
spelling. VAE reconstructions and every feature extractor run in fp32, so that scores do not depend
on the machine.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from chexgen.errors import ChexgenError

__all__ = ["ModelEntry", "ExtractorEntry", "ReIDEntry", "BenchmarkConfig", "load_config", "BENCH_BACKENDS",
           "EXTRACTOR_KINDS"]

BENCH_BACKENDS = ("auto", "chexgen", "diffusers", "vae-reconstruction", "monai")
EXTRACTOR_KINDS = ("xrv", "clip", "inception", "rad-dino", "dinov2", "classifier")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class ModelEntry:
    """One generator: its name (a folder name under ``out/models``), backend, source and sampling settings."""

    name: str
    backend: str = "auto"
    model: str | None = None  # folder (relative to the config file) or hub id
    preset: str | None = None  # chexgen backend: an untrained model of this preset
    preset_seed: int = 0
    prompt_template: str | None = None  # see chexgen.generation.templates
    sampler: str | None = None  # chexgen models only
    steps: int | None = None
    guidance: float | None = None
    negative_prompt: str | None = None  # diffusers only
    precision: str | None = None  # auto | fp32 | bf16 | fp16 for generation; None = the benchmark's
    dtype: str | None = None  # diffusers only: the old spelling of precision (a torch dtype name)
    revision: str | None = None  # diffusers hub models
    text_encoder: str | None = None  # chexgen models: load the referenced text encoder from here
    batch_size: int | None = None  # default: the benchmark's


@dataclass
class ExtractorEntry:
    """A feature extractor every set is described with (name = its column suffix, e.g. FD-rad-dino)."""

    name: str
    kind: str
    weights: str | None = None
    random_init: bool = False  # xrv / clip / inception only: a pipeline check, numbers mean nothing
    image_size: int | None = None  # classifier input size (default: the classifier's own)


@dataclass
class ReIDEntry:
    """The patient re-identification network (:mod:`chexgen.evaluation.reid`)."""

    weights: str
    threshold: float = 0.5


@dataclass
class BenchmarkConfig:
    """Everything one benchmark run needs (see the module docstring); paths already resolved."""

    real: str
    models: list[ModelEntry]
    extractors: list[ExtractorEntry]
    out: str = "benchmark"
    split: str | None = None
    train: str | None = None
    train_split: str | None = None
    max_prompts: int | None = None
    images_per_prompt: int = 2
    seed: int = 0
    batch_size: int = 8
    device: str | None = None
    precision: str = "auto"  # generation of every model that names none (features are always fp32)
    # generated images are evaluation artefacts: the invisible watermark (PSNR ~40 dB) would perturb the
    # synthetic side only, biasing SSIM-based diversity, memorisation and pixel comparisons; true marks them
    watermark: bool = False
    reid: ReIDEntry | None = None
    bootstrap: int = 200  # draws for per-prompt / per-image metrics
    distribution_bootstrap: int = 20  # draws for FD / KID / PRDC (each a full recompute)
    level: float = 0.95
    knn_k: int = 5  # PRDC neighbourhood (CheXGenBench uses 5)
    kid_subsets: int = 100
    analysis_size: int = 128  # px of the copies used for MS-SSIM, memorisation, re-ID and figures
    tsne: bool = True
    tsne_max: int = 500  # per set
    grid_prompts: int = 6
    min_finding_images: int = 4  # a finding gets a breakdown row with at least this many images on each side
    title: str = "chexgen benchmark"
    source: str | None = None  # the YAML file it came from

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _build(cls, data: Any, where: str, required: tuple[str, ...] = ()):
    if not isinstance(data, dict):
        raise ChexgenError(f"{where}: expected a mapping of settings, got {type(data).__name__}")
    known = _fields(cls)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ChexgenError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    missing = [k for k in required if data.get(k) in (None, "")]
    if missing:
        raise ChexgenError(f"{where}: missing {', '.join(missing)}")
    for key, value in data.items():
        _check_type(key, value, known[key], where)
    return cls(**data)


def _check_type(key: str, value: Any, f: dataclasses.Field, where: str) -> None:
    if value is None:
        return
    kind = str(f.type)
    checks = (("bool", bool), ("int", int), ("float", (int, float)), ("str", str))
    for name, types in checks:
        if kind.startswith(name):
            ok = isinstance(value, types) and (name == "bool" or not isinstance(value, bool))
            if not ok:
                raise ChexgenError(f"{where}: {key} must be a {'number' if name == 'float' else name}, got {value!r}")
            return


def _path(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p))


def _model_path(base: Path, value: str | None) -> str | None:
    """A folder relative to the config file when it exists there; otherwise kept (a hub id)."""
    if value is None:
        return None
    candidate = Path(_path(base, value))
    return str(candidate) if candidate.exists() or value.startswith((".", "/", "~")) else value


def load_config(path: "str | Path", out: "str | Path | None" = None) -> BenchmarkConfig:
    """Read and check ``bench.yaml`` (see the module docstring); ``out`` overrides its ``out``."""
    p = Path(path)
    if not p.is_file():
        raise ChexgenError(f"benchmark config {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ChexgenError(f"{p}: not readable YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ChexgenError(f"{p}: expected a mapping at the top level")
    data = dict(data)
    base = p.resolve().parent
    models_raw = data.pop("models", None)
    extractors_raw = data.pop("extractors", None)
    reid_raw = data.pop("reid", None)
    if not isinstance(models_raw, list) or not models_raw:
        raise ChexgenError(f"{p}: 'models' must list at least one model")
    if not isinstance(extractors_raw, list) or not extractors_raw:
        raise ChexgenError(f"{p}: 'extractors' must list at least one feature extractor")
    models = [_build(ModelEntry, m, f"{p}: models[{i}]", ("name",)) for i, m in enumerate(models_raw)]
    extractors = [_build(ExtractorEntry, e, f"{p}: extractors[{i}]", ("name", "kind"))
                  for i, e in enumerate(extractors_raw)]
    reid = _build(ReIDEntry, reid_raw, f"{p}: reid", ("weights",)) if reid_raw is not None else None
    cfg = _build(BenchmarkConfig, {**data, "models": models, "extractors": extractors, "reid": reid}, str(p),
                 ("real",))
    cfg.source = str(p.resolve())
    cfg.real = _path(base, cfg.real)
    cfg.train = _path(base, cfg.train)
    cfg.out = str(Path(out)) if out is not None else _path(base, cfg.out)
    for m in cfg.models:
        m.model = _model_path(base, m.model)
        m.text_encoder = _model_path(base, m.text_encoder)
    for e in cfg.extractors:
        if e.kind in ("classifier", "inception") or e.kind == "xrv" and e.weights and e.weights.endswith(
                (".pt", ".pth", ".pkl")):
            e.weights = _path(base, e.weights)
        elif e.weights is not None:
            e.weights = _model_path(base, e.weights)
    if cfg.reid is not None:
        cfg.reid.weights = _path(base, cfg.reid.weights)
    check_config(cfg, str(p))
    return cfg


def check_config(cfg: BenchmarkConfig, where: str = "benchmark config") -> None:
    """Values that need no file or model to check: names, backends, kinds, counts."""
    from chexgen.models.precision import normalise_precision

    try:
        cfg.precision = normalise_precision(cfg.precision)
    except ChexgenError as err:
        raise ChexgenError(f"{where}: {err}") from None
    names: set[str] = set()
    for i, m in enumerate(cfg.models):
        w = f"{where}: models[{i}] ({m.name})"
        if not _NAME.match(m.name) or m.name in names:
            raise ChexgenError(f"{w}: a model name must be unique and made of letters, digits, . _ + -")
        names.add(m.name)
        if m.backend not in BENCH_BACKENDS:
            raise ChexgenError(f"{w}: unknown backend {m.backend!r}; expected one of {', '.join(BENCH_BACKENDS)}")
        if (m.model is None) == (m.preset is None):
            raise ChexgenError(f"{w}: give exactly one of model (a folder or hub id) and preset")
        if m.preset is not None and m.backend not in ("auto", "chexgen"):
            raise ChexgenError(f"{w}: preset is for chexgen models only")
        if m.precision is not None:
            try:
                m.precision = normalise_precision(m.precision)
            except ChexgenError as err:
                raise ChexgenError(f"{w}: {err}") from None
            if m.dtype is not None and normalise_precision(m.dtype) != m.precision:
                raise ChexgenError(f"{w}: dtype {m.dtype} contradicts precision {m.precision}; give precision only")
    ext_names: set[str] = set()
    for i, e in enumerate(cfg.extractors):
        w = f"{where}: extractors[{i}] ({e.name})"
        if not _NAME.match(e.name) or e.name in ext_names:
            raise ChexgenError(f"{w}: an extractor name must be unique and made of letters, digits, . _ + -")
        ext_names.add(e.name)
        if e.kind not in EXTRACTOR_KINDS:
            raise ChexgenError(f"{w}: unknown kind {e.kind!r}; expected one of {', '.join(EXTRACTOR_KINDS)}")
        if e.kind == "classifier" and not e.weights:
            raise ChexgenError(f"{w}: a classifier extractor needs weights (its folder or file)")
    for key in ("images_per_prompt", "batch_size", "grid_prompts", "min_finding_images", "kid_subsets", "knn_k",
                "analysis_size", "tsne_max"):
        if int(getattr(cfg, key)) < 1:
            raise ChexgenError(f"{where}: {key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.max_prompts is not None and cfg.max_prompts < 2:
        raise ChexgenError(f"{where}: max_prompts must be >= 2, got {cfg.max_prompts}")
    if not 0 < cfg.level < 1:
        raise ChexgenError(f"{where}: level must be within (0, 1), got {cfg.level}")
    if cfg.reid is not None and not 0 <= cfg.reid.threshold <= 1:
        raise ChexgenError(f"{where}: reid threshold must be within [0, 1], got {cfg.reid.threshold}")
