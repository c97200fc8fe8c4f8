"""``chexgen convert-official``: an official ChexGen ``.pth`` -> a chexgen pipeline folder.

The work is :func:`chexgen.pipelines.convert_official.convert_official_checkpoint`; this
module only parses and reports.
"""

from __future__ import annotations

import argparse

from chexgen.commands._types import positive_float, positive_int
from chexgen.pipelines.convert_official import DTYPES, OFFICIAL_CONTROL_PALETTE, convert_official_checkpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="Official ChexGen .pth file (PhysioNet release).")
    parser.add_argument("--out", required=True, help="New pipeline folder to write.")
    parser.add_argument("--control", action="store_true",
                        help="The checkpoint is a ControlNet (ControlT2IDiT) checkpoint: base_model.* + controlnet.*.")
    parser.add_argument("--use-non-ema", action="store_true",
                        help="Use 'state_dict' instead of the EMA weights 'state_dict_ema' (official sampling uses EMA).")
    parser.add_argument("--resolution", type=positive_int, default=None,
                        help="Image size in px the checkpoint was trained at: needed only when it has no saved "
                             "pos_embed (otherwise read from it and checked); 256 and 512 set the official "
                             "pos-embed scale 1.0 / 2.0.")
    parser.add_argument("--num-heads", type=positive_int, default=None,
                        help="Attention heads (default: width / 72, i.e. 16 for DiT-XL/2).")
    parser.add_argument("--pos-embed-scale", type=positive_float, default=None, metavar="SCALE",
                        help="Pos-embed interpolation scale the checkpoint was trained with (default: 1.0 at 256 px, "
                             "2.0 at 512 px, otherwise read off the checkpoint's saved pos_embed).")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="auto",
                        help="Weight dtype to save (auto = as stored in the checkpoint).")
    parser.add_argument("--text-encoder", default=None,
                        help="T5 v1.1 XXL hub id or local folder to reference (default: google/t5-v1_1-xxl).")
    parser.add_argument("--vae", default=None,
                        help="SD VAE hub id or local folder to reference (default: stabilityai/sd-vae-ft-ema).")
    parser.add_argument("--no-hash", action="store_true",
                        help="Skip the SHA-256 of the checkpoint recorded for provenance (saves time on big files).")


def run(args: argparse.Namespace) -> int:
    result = convert_official_checkpoint(
        args.checkpoint, args.out, control=args.control, use_ema=not args.use_non_ema,
        resolution=args.resolution, num_heads=args.num_heads, pos_embed_scale=args.pos_embed_scale,
        dtype=args.dtype, text_encoder=args.text_encoder, vae=args.vae, hash_checkpoint=not args.no_hash,
    )
    arch = result.architecture
    print(f"wrote {result.out_dir} ({result.weights}, {result.num_parameters / 1e6:.1f}M parameters, "
          f"depth {arch['depth']}, width {arch['hidden_size']}, {arch['resolution']} px, "
          f"pos-embed scale {arch['interpolation_scale']})")
    if result.controlnet_dir is not None:
        print(f"control adapter: {result.controlnet_dir} (palette '{OFFICIAL_CONTROL_PALETTE}')")
    print(f"official sampling: ChexGenPipeline.from_pretrained({str(result.out_dir)!r})(prompts, sampler='official')")
    return 0
