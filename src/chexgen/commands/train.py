"""``chexgen train``: train (or continue) a text-to-image diffusion transformer."""

from __future__ import annotations

import argparse
import logging

from chexgen.training.config import TrainConfig, add_config_arguments, config_from_args

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="?", default=None,
                        help="a `chexgen prepare` cache folder (or a manifest with --encode-on-the-fly)")
    add_config_arguments(parser, TrainConfig, skip=("data",))


def run(args: argparse.Namespace) -> int:
    from chexgen.training.diffusion_task import build_text_to_image_task
    from chexgen.training.trainer import make_accelerator, train

    cfg = config_from_args(args, TrainConfig, extra={"data": args.data})
    accelerator = make_accelerator(cfg)
    result = train(build_text_to_image_task(cfg), accelerator)
    if accelerator.is_main_process:
        print(result.summary())
        if result.final_checkpoint:
            print(f"checkpoint: {result.final_checkpoint}")
        if result.export_dir:
            print(f"pipeline: {result.export_dir}  (chexgen generate --model {result.export_dir})")
    return 0
