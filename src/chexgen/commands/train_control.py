"""``chexgen train-control``: train a ControlNet adapter for mask / box guided synthesis on a frozen base."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from chexgen.training.config import add_config_arguments
    from chexgen.training.control_task import ControlTrainConfig

    parser.add_argument("data", nargs="?", default=None,
                        help="a `chexgen prepare --conditions` cache folder (condition latents included)")
    add_config_arguments(parser, ControlTrainConfig, skip=("data", "data_root", "encode_on_the_fly", "init_from",
                                                           "reinit_null_caption", "transformer_overrides", "vae",
                                                           "preset", "text_field", "resolution", "resize_policy",
                                                           "sample_prompts"))


def run(args: argparse.Namespace) -> int:
    from chexgen.training.config import config_from_args
    from chexgen.training.control_task import ControlTrainConfig, build_control_task
    from chexgen.training.trainer import make_accelerator, train

    cfg = config_from_args(args, ControlTrainConfig, extra={"data": args.data})
    accelerator = make_accelerator(cfg)
    task = build_control_task(cfg)
    if accelerator.is_main_process:
        from chexgen.models.controlnet import split_trainable

        trainable, frozen = split_trainable([task.model])
        print(f"adapter: {task.model.controlnet.num_blocks} control blocks, {trainable / 1e6:.2f}M trainable "
              f"parameters; base frozen ({frozen / 1e6:.2f}M)")
    result = train(task, accelerator)
    if accelerator.is_main_process:
        print(result.summary())
        if result.final_checkpoint:
            print(f"checkpoint: {result.final_checkpoint}")
        if result.export_dir:
            print(f"adapter: {result.export_dir}  (chexgen generate --control-model {result.export_dir} "
                  f"--masks ... | --boxes ...)")
    return 0
