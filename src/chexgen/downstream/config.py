"""Experiment configuration: one YAML file (plus command-line overrides) per experiment.

Example (all keys optional except ``real``)::

    experiment: augment          # augment | pretrain | fairness
    task: classification         # classification | segmentation | detection | regression
    real: data/real/manifest.jsonl        # split column: train / val / test
    synthetic: out/synthetic/manifest.jsonl
    classes: [Cardiomegaly, Pleural Effusion]
    image_size: 224
    seeds: [0, 1, 2, 3, 4]
    real_fraction: 0.1
    multipliers: [1, 2]
    train: {epochs: 10, batch_size: 16, lr: 1.0e-4}

Unknown keys are errors (a typo should not silently fall back to a default). The resolved
config, with every default filled in, is written next to the results.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chexgen.data.labels import LABELS, normalize_label_name
from chexgen.data.manifest import Record, read_manifest
from chexgen.downstream.data import TASKS, SampleSpec
from chexgen.downstream.models import ModelSpec
from chexgen.downstream.trainer import TrainConfig
from chexgen.errors import ChexgenError

__all__ = ["ExperimentConfig", "load_config", "Cohort", "load_cohort", "label_from_prompts", "EXPERIMENTS"]

EXPERIMENTS = ("augment", "pretrain", "fairness")

log = logging.getLogger(__name__)


@dataclass
class ExperimentConfig:
    """Everything one downstream experiment needs; see the module docstring for the YAML form."""

    experiment: str = "augment"
    task: str = "classification"
    real: str = ""
    synthetic: str | None = None
    synthetic_test: str | None = None  # fairness: default = synthetic records with split 'test', else all
    output: str = "downstream_results"
    classes: list[str] = field(default_factory=list)  # default: classes with positives in the real train split
    mask: str = "*pneumothorax"  # mask name or glob (phantom: finding_N_pneumothorax)
    image_size: int = 224
    arch: str | None = None
    width: int = 0
    init: str = "auto"
    uncertain_as: float = 1.0
    augment_images: bool = True
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    real_fraction: float = 1.0
    # augment
    multipliers: list[float] = field(default_factory=lambda: [1.0, 2.0])
    # pretrain
    pretrain_multiplier: float = 1.0
    pretrain_epochs: int | None = None
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 0.5, 1.0])
    shots: list[int] = field(default_factory=list)
    baselines: list[str] = field(default_factory=lambda: ["imagenet", "scratch"])
    gradcam_cases: int = 4
    # synthetic records without labels get them read from their prompt (provenance.prompt,
    # else impression / report): "missing" (only unlabelled records), "always" or "never"
    labels_from_prompts: str = "missing"
    # fairness
    attributes: list[str] = field(default_factory=lambda: ["sex", "age_band", "race"])
    intersections: bool = True
    parity_attributes: list[str] = field(default_factory=lambda: ["sex", "age_band"])
    min_group_size: int = 10
    train: TrainConfig = field(default_factory=TrainConfig)

    def check(self) -> None:
        if self.experiment not in EXPERIMENTS:
            raise ChexgenError(f"config 'experiment': expected one of {EXPERIMENTS}, got {self.experiment!r}")
        if self.task not in TASKS:
            raise ChexgenError(f"config 'task': expected one of {TASKS}, got {self.task!r}")
        if not self.real:
            raise ChexgenError("config 'real': a real manifest is required")
        if self.experiment in ("augment", "fairness", "pretrain") and not self.synthetic:
            raise ChexgenError(f"config 'synthetic': experiment {self.experiment!r} needs a synthetic manifest")
        if self.experiment == "fairness" and self.task != "classification":
            raise ChexgenError("fairness experiments are defined for task 'classification' (weighted F1 / AUROC)")
        if not self.seeds:
            raise ChexgenError("config 'seeds': give at least one seed")
        if self.labels_from_prompts not in ("missing", "always", "never"):
            raise ChexgenError(f"config 'labels_from_prompts': expected missing / always / never, got {self.labels_from_prompts!r}")
        if not 0 < self.real_fraction <= 1:
            raise ChexgenError(f"config 'real_fraction': expected (0, 1], got {self.real_fraction}")
        if self.task == "classification":
            self.classes = [normalize_label_name(c) for c in self.classes]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def sample_spec(self, augment: bool = False) -> SampleSpec:
        return SampleSpec(
            task=self.task, image_size=self.image_size, classes=tuple(self.classes), mask_name=self.mask,
            uncertain_as=self.uncertain_as, augment=augment and self.augment_images,
        )

    def model_spec(self, init: str | None = None) -> ModelSpec:
        n = len(self.classes) if self.task in ("classification", "detection") else 1
        return ModelSpec(task=self.task, num_outputs=n, image_size=self.image_size, arch=self.arch,
                         init=init or self.init, width=self.width)


def _build(data: dict[str, Any], where: str) -> ExperimentConfig:
    known = {f.name for f in dataclasses.fields(ExperimentConfig)}
    unknown = set(data) - known
    if unknown:
        raise ChexgenError(f"{where}: unknown key(s) {sorted(unknown)}; expected some of {sorted(known)}")
    data = dict(data)
    train = data.pop("train", None) or {}
    if isinstance(train, TrainConfig):
        train = dataclasses.asdict(train)
    tknown = {f.name for f in dataclasses.fields(TrainConfig)}
    if set(train) - tknown:
        raise ChexgenError(f"{where}: unknown train key(s) {sorted(set(train) - tknown)}; expected some of {sorted(tknown)}")
    return ExperimentConfig(**data, train=TrainConfig(**train))


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read a YAML config (or start from defaults) and apply ``overrides`` (``train.lr`` style keys allowed).

    Relative manifest and output paths in the file resolve against the file's folder.
    """
    data: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ChexgenError(f"{path}: config not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ChexgenError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ChexgenError(f"{path}: expected a mapping of config keys")
        base = path.parent
        for key in ("real", "synthetic", "synthetic_test", "output"):
            if data.get(key) and not Path(data[key]).is_absolute():
                data[key] = str(base / data[key])
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key.startswith("train."):
            data.setdefault("train", {})[key[6:]] = value
        else:
            data[key] = value
    cfg = _build(data, str(path or "<config>"))
    cfg.check()
    return cfg


@dataclass
class Cohort:
    """Real splits and the synthetic pool, each with the folder its paths resolve against."""

    train: list[Record]
    val: list[Record]
    test: list[Record]
    real_root: Path
    synthetic: list[Record]
    synthetic_root: Path | None
    synthetic_test: list[Record]
    synthetic_test_root: Path | None


def _prompt_of(r: Record) -> str | None:
    prompt = (r.provenance or {}).get("prompt")
    return prompt if isinstance(prompt, str) and prompt.strip() else (r.impression or r.report)


def label_from_prompts(records: list[Record], mode: str = "missing") -> list[Record]:
    """Fill synthetic records' labels from the text they were generated from (the paper's
    "labels from the prompts"), using chexgen's report label extractor."""
    if mode == "never":
        return records
    from chexgen.curation.extractor import extract_labels

    filled = 0
    for r in records:
        if (mode == "always" or not any(v is not None for v in r.labels.values())) and _prompt_of(r):
            r.labels = extract_labels(_prompt_of(r))
            filled += 1
    if filled:
        log.info("labels of %d synthetic records read from their prompts", filled)
    return records


def load_cohort(cfg: ExperimentConfig) -> Cohort:
    """Read the manifests, split the real one and fill ``cfg.classes`` if it was left empty."""
    real_path = Path(cfg.real)
    real = read_manifest(real_path)
    train = [r for r in real if r.split == "train"]
    val = [r for r in real if r.split == "val"]
    test = [r for r in real if r.split == "test"]
    if not train or not test:
        raise ChexgenError(f"{real_path}: needs records with split 'train' and 'test' (found {len(train)} / {len(test)})")
    synth: list[Record] = []
    synth_root = None
    if cfg.synthetic:
        sp = Path(cfg.synthetic)
        synth, synth_root = read_manifest(sp), sp.parent
    synth = label_from_prompts(synth, cfg.labels_from_prompts)
    stest, stest_root = [], synth_root
    if cfg.synthetic_test:
        sp = Path(cfg.synthetic_test)
        stest, stest_root = label_from_prompts(read_manifest(sp), cfg.labels_from_prompts), sp.parent
    elif synth:
        stest = [r for r in synth if r.split == "test"]
        if stest:
            synth = [r for r in synth if r.split != "test"]
        else:
            stest = list(synth)

    if not cfg.classes:
        if cfg.task == "classification":
            cfg.classes = [c for c in LABELS if c != "No Finding" and any(r.labels.get(c) == 1 for r in train)]
        elif cfg.task == "detection":
            cfg.classes = sorted({b.label for r in train for b in r.boxes})
        if cfg.task in ("classification", "detection") and not cfg.classes:
            raise ChexgenError(f"{real_path}: no positive labels / boxes in the train split; set 'classes'")
    return Cohort(train, val, test, real_path.parent, synth, synth_root, stest, stest_root)
