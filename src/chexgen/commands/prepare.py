"""``chexgen prepare``: cache VAE latent moments, text embeddings (and condition latents) of a manifest."""

from __future__ import annotations

import argparse
import logging
import os

from chexgen.commands._types import nonneg_int, positive_int

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", help="manifest (JSONL / Parquet) with image paths and report / impression text")
    parser.add_argument("--out", required=True, help="cache folder (created; re-running resumes)")
    parser.add_argument("--preset", default="tiny", help="model preset: fixes resolution, VAE and text encoder")
    parser.add_argument("--vae", default=None, help="folder of a trained VAE (chexgen train-vae) instead of the preset's")
    parser.add_argument("--resolution", type=positive_int, default=None, help="image size in px (default: the preset's)")
    parser.add_argument("--resize-policy", choices=("crop", "pad"), default="crop",
                        help="square fit: center crop, or pad with black borders")
    parser.add_argument("--text-field", choices=("auto", "impression", "report"), default="auto",
                        help="caption source: auto = impression if present, else report")
    from chexgen.models.text_encoder import PROMPT_CLEANING

    parser.add_argument("--prompt-cleaning", choices=PROMPT_CLEANING, default="basic",
                        help="caption normalisation before tokenising (must match inference)")
    parser.add_argument("--no-std", action="store_true",
                        help="store only the latent mean (half the size; train with --latent-sampling mean)")
    parser.add_argument("--conditions", action="store_true",
                        help="also cache a 'control' condition latent (masks / boxes rendered as one image) per record")
    parser.add_argument("--condition-kinds", default="anatomy,finding",
                        help="with --conditions: mask classes drawn, comma-separated from anatomy (lungs, heart, ribs) "
                             "and finding; 'finding' trains an adapter that expects finding masks alone")
    from chexgen.data.conditions import CONDITION_STYLES

    parser.add_argument("--condition-style", choices=CONDITION_STYLES, default="both",
                        help="with --conditions: draw masks and boxes together (both), only masks, only boxes, or "
                             "alternate (masks for half the records, boxes for the other half; one adapter for both)")
    parser.add_argument("--num-shards", type=positive_int, default=None,
                        help="split the manifest across N writer processes (default: $WORLD_SIZE or 1)")
    parser.add_argument("--shard-index", type=nonneg_int, default=None, help="this writer's index (default: $RANK or 0)")
    parser.add_argument("--shard-size", type=positive_int, default=1024, help="records per safetensors shard file")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images encoded per VAE / text-encoder call")
    parser.add_argument("--num-workers", type=nonneg_int, default=min(4, max(0, (os.cpu_count() or 1) - 1)),
                        help="image decoding worker processes")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    parser.add_argument("--data-root", default=None, metavar="DIR",
                        help="refuse image / mask paths that resolve (symlinks followed) outside DIR; they are "
                             "listed as rejects (default: no confinement)")
    parser.add_argument("--limit", type=nonneg_int, default=None, help="only the first N records (for a quick try)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from chexgen.training.prepare import PrepareOptions, prepare_manifest

    result = prepare_manifest(PrepareOptions(
        manifest=args.manifest, out=args.out, preset=args.preset, vae=args.vae, resolution=args.resolution,
        resize_policy=args.resize_policy, text_field=args.text_field, prompt_cleaning=args.prompt_cleaning,
        store_std=not args.no_std, conditions=args.conditions,
        condition_kinds=tuple(k.strip() for k in args.condition_kinds.split(",") if k.strip()),
        condition_style=args.condition_style, num_shards=args.num_shards, shard_index=args.shard_index,
        shard_size=args.shard_size, batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
        limit=args.limit, data_root=args.data_root, progress=not args.no_progress,
    ))
    s = result.summary
    print(f"writer {result.shard_index}/{result.num_shards}: encoded {s.written}, rejected {s.rejected} "
          f"new, already done {s.skipped_done}, {s.shards} shard(s)")
    listed = result.index_path.with_name("rejects.jsonl") if s.index_written else s.rejects_file
    print(f"rejected: {s.rejected_total} records (listed in {listed})" if s.rejected_total
          else "rejected: no records")
    print(f"index: {result.index_path}" if s.index_written
          else "index: waiting for the other writers (the last one to finish writes index.json)")
    return result.exit_code
