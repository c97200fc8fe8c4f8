"""``chexgen downstream augment|pretrain|fairness --config CFG.yaml``: paper-style downstream experiments.

``chexgen downstream classifier --real M --output DIR`` trains and saves one classifier (e.g. the
phantom classifier the demo evaluates with), loadable by ``chexgen evaluate --features DIR``.
"""

from __future__ import annotations

import argparse
import logging

from chexgen.commands._types import nonneg_float, nonneg_int, positive_float, positive_int

__all__ = ["add_arguments", "run"]

log = logging.getLogger(__name__)


def _floats(text: str) -> list[float]:
    return [nonneg_float(t) for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    return [nonneg_int(t) for t in text.split(",") if t.strip()]


def _strs(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", choices=("augment", "pretrain", "fairness", "classifier"),
                        help="augment: real vs real + k x synthetic; pretrain: pretrain on synthetic, fine-tune on real "
                             "fractions / k-shot; fairness: subgroup metrics, real vs synthetic, parity mitigation; "
                             "classifier: train one multi-label classifier on --real (train / val / test splits) and "
                             "save it to --output as a folder `chexgen evaluate --features` loads.")
    parser.add_argument("--config", default=None, help="YAML experiment config (keys as in ExperimentConfig); "
                        "options below override it.")
    o = parser.add_argument_group("overrides")
    o.add_argument("--task", default=None, choices=("classification", "segmentation", "detection", "regression"),
                   help="Downstream task (default from config, else classification).")
    o.add_argument("--real", default=None, help="Real manifest with split train / val / test.")
    o.add_argument("--synthetic", default=None, help="Synthetic manifest (e.g. written by `chexgen generate`).")
    o.add_argument("--synthetic-test", default=None, help="Fairness: synthetic test manifest (default: the synthetic "
                   "records with split 'test', else all of them).")
    o.add_argument("--output", default=None, help="Results folder (resumable: finished seeds are skipped).")
    o.add_argument("--classes", type=_strs, default=None, help="Comma-separated label names (classification) or box "
                   "labels (detection); default: those present in the real train split.")
    o.add_argument("--mask", default=None, help="Segmentation mask name in the manifest.")
    o.add_argument("--seeds", type=_ints, default=None, help="Comma-separated seeds, e.g. 0,1,2,3,4.")
    o.add_argument("--real-fraction", type=positive_float, default=None, help="Fraction of the real train split used.")
    o.add_argument("--multipliers", type=_floats, default=None, help="Augment: synthetic multiples k, e.g. 1,2.")
    o.add_argument("--pretrain-multiplier", type=positive_float, default=None, help="Pretrain: synthetic set size as a "
                   "multiple of the real train split.")
    o.add_argument("--fractions", type=_floats, default=None, help="Pretrain: real fractions to fine-tune on.")
    o.add_argument("--shots", type=_ints, default=None, help="Pretrain: k-shot budgets, e.g. 1,5,10.")
    o.add_argument("--image-size", type=positive_int, default=None, help="Network input side in pixels.")
    o.add_argument("--arch", default=None, help="Backbone override (densenet121, resnet18/34/50, densenet-tiny).")
    o.add_argument("--init", default=None, help="auto (ImageNet if cached, else scratch) | imagenet | scratch | "
                   "PATH: a state-dict file, or a classifier folder saved by `chexgen downstream classifier` "
                   "(its backbone, with a fresh head).")
    o.add_argument("--epochs", type=positive_int, default=None, help="Training epochs per run.")
    o.add_argument("--batch-size", type=positive_int, default=None, help="Batch size.")
    o.add_argument("--lr", type=positive_float, default=None, help="AdamW learning rate.")
    o.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N.")
    o.add_argument("--num-threads", type=nonneg_int, default=None, help="torch CPU threads (1 is often fastest on a busy machine).")
    o.add_argument("--progress", action="store_true", help="Show per-epoch progress bars.")


def _run_classifier(args: argparse.Namespace) -> int:
    from chexgen.downstream.classifier import train_classifier
    from chexgen.downstream.trainer import TrainConfig
    from chexgen.errors import ChexgenError

    if not args.real or not args.output:
        raise ChexgenError("downstream classifier needs --real MANIFEST and --output DIR")
    cfg = TrainConfig(progress=args.progress)
    for key, value in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr),
                       ("device", args.device), ("num_threads", args.num_threads)):
        if value is not None:
            setattr(cfg, key, value)
    seed = args.seeds[0] if args.seeds else 0
    saved = train_classifier(args.real, args.output, classes=args.classes, arch=args.arch or "resnet18",
                             image_size=args.image_size or 128, init=args.init or "auto", train_config=cfg, seed=seed)
    metrics = saved["test_metrics"]
    print(f"classifier ({saved['arch']}, {saved['init']} init) saved to {args.output}; "
          f"test macro AUROC {metrics.get('auroc_macro', float('nan')):.3f}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.experiment == "classifier":
        return _run_classifier(args)
    from chexgen.downstream.config import load_config
    from chexgen.downstream.experiments import run_experiment

    overrides = {
        "experiment": args.experiment,
        "task": args.task,
        "real": args.real,
        "synthetic": args.synthetic,
        "synthetic_test": args.synthetic_test,
        "output": args.output,
        "classes": args.classes,
        "mask": args.mask,
        "seeds": args.seeds,
        "real_fraction": args.real_fraction,
        "multipliers": args.multipliers,
        "pretrain_multiplier": args.pretrain_multiplier,
        "fractions": args.fractions,
        "shots": args.shots,
        "image_size": args.image_size,
        "arch": args.arch,
        "init": args.init,
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "train.lr": args.lr,
        "train.device": args.device,
        "train.num_threads": args.num_threads,
        "train.progress": True if args.progress else None,
    }
    cfg = load_config(args.config, overrides)
    result = run_experiment(cfg)
    print(result["table_markdown"])
    print(f"results in {cfg.output}")
    return 0
