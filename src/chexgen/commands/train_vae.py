"""``chexgen train-vae``: train or fine-tune the 1-channel VAE of the small presets."""

from __future__ import annotations

import argparse
from pathlib import Path

from chexgen.commands._types import nonneg_int
from chexgen.training.config import VAETrainConfig, add_config_arguments, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="?", default=None, help="manifest (JSONL / Parquet) of training images")
    parser.add_argument("--limit", type=nonneg_int, default=None, help="use only the first N records")
    add_config_arguments(parser, VAETrainConfig, skip=("data",))


def run(args: argparse.Namespace) -> int:
    from chexgen.training.trainer import make_accelerator, train
    from chexgen.training.vae_task import build_vae_task

    cfg = config_from_args(args, VAETrainConfig, extra={"data": args.data})
    task = build_vae_task(cfg, limit=args.limit)
    accelerator = make_accelerator(cfg)
    result = train(task, accelerator)
    if accelerator.is_main_process:
        print(result.summary())
        print(f"rejected: {task.rejected} records (listed in {Path(cfg.output_dir) / 'rejects.jsonl'})"
              if task.rejected else "rejected: no records")
        if result.export_dir:
            print(f"VAE: {result.export_dir}  (chexgen prepare --vae {result.export_dir}; chexgen train --vae ...)")
    return 1 if task.rejected else 0
