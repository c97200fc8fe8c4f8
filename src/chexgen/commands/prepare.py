"""``chexgen prepare``: cache VAE latent moments, text embeddings (and condition latents) of a manifest."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path

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
    parser.add_argument("--limit", type=nonneg_int, default=None, help="only the first N records (for a quick try)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    import torch

    from chexgen.data.manifest import read_manifest
    from chexgen.errors import ChexgenError
    from chexgen.models.presets import get_preset
    from chexgen.models.text_encoder import load_text_encoder
    from chexgen.models.vae import RadiographVAE
    from chexgen.training.cache import CacheSpec, prepare_cache

    preset = get_preset(args.preset)
    num_shards = args.num_shards or int(os.environ.get("WORLD_SIZE", 1))
    shard_index = args.shard_index if args.shard_index is not None else int(os.environ.get("RANK", 0))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))

    vae_spec = preset.vae
    if args.vae:
        vae_spec = dataclasses.replace(vae_spec, name_or_path=str(Path(args.vae).resolve()), subfolder=None,
                                       scaling_factor=None)
    elif vae_spec.kind == "gray" and not vae_spec.name_or_path:
        raise ChexgenError(f"preset {preset.name} uses a gray VAE that must be trained first: "
                           f"run `chexgen train-vae` and pass --vae FOLDER")
    vae = RadiographVAE.from_spec(vae_spec).to(device).eval().requires_grad_(False)
    if vae_spec.kind == "gray":  # record the loaded VAE's real widths, not the preset's defaults
        vae_spec = dataclasses.replace(vae_spec, block_out_channels=tuple(vae.autoencoder.config.block_out_channels))
    text_encoder = load_text_encoder(preset.text_encoder, device=device)
    resolution = args.resolution or preset.resolution
    f = vae.downsample_factor
    if resolution % f:
        raise ChexgenError(f"--resolution {resolution} is not divisible by the VAE factor {f}")
    conditions = {}
    condition_options: dict = {}
    if args.conditions:
        from chexgen.data.conditions import RecordConditionRenderer

        renderer = RecordConditionRenderer(kinds=tuple(k.strip() for k in args.condition_kinds.split(",") if k.strip()),
                                           style=args.condition_style)
        conditions = {"control": renderer}
        if renderer != RecordConditionRenderer():
            condition_options = renderer.to_dict()
    spec = CacheSpec(
        resolution=resolution, resize_policy=args.resize_policy, text_field=args.text_field,
        prompt_cleaning=args.prompt_cleaning, store_std=not args.no_std, vae=vae_spec.to_dict(),
        vae_scaling_factor=vae.scaling_factor, text_encoder=preset.text_encoder.to_dict(),
        latent_shape=[vae.latent_channels, resolution // f, resolution // f],
        embed_dim=text_encoder.embed_dim, max_length=text_encoder.max_length, conditions=sorted(conditions),
        condition_options=condition_options,
    )
    records = read_manifest(args.manifest)[: args.limit]
    summary = prepare_cache(
        records, args.out, vae, text_encoder, spec, manifest_root=Path(args.manifest).parent,
        num_shards=num_shards, shard_index=shard_index, shard_size=args.shard_size, batch_size=args.batch_size,
        num_workers=args.num_workers, conditions=conditions, progress=not args.no_progress,
    )
    print(f"writer {shard_index}/{num_shards}: encoded {summary.written}, rejected {summary.rejected} "
          f"(listed in {summary.rejects_file}), already done {summary.skipped_done}, {summary.shards} shard(s)")
    print(f"index: {Path(args.out) / 'index.json'}" if summary.index_written
          else "index: waiting for the other writers (the last one to finish writes index.json)")
    return 0
