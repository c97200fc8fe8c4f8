"""``chexgen prepare`` as a library call: a manifest -> a feature cache, with every set-up step.

:func:`prepare_manifest` does what the command does: picks the device and the
writer's shard (from ``$WORLD_SIZE`` / ``$RANK`` / ``$LOCAL_RANK`` unless given),
loads the VAE (the preset's or a trained one) and the text encoder, checks the
resolution, builds the condition renderer, reads the manifest leniently (bad
lines, duplicate ids, paths outside ``data_root`` become rejects) and runs
:func:`chexgen.training.cache.prepare_cache`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from chexgen.data.manifest import read_manifest_lines
from chexgen.data.rejects import EXIT_OK, EXIT_REJECTED, RejectLog
from chexgen.errors import ChexgenError
from chexgen.training.cache import CacheSpec, PrepareSummary, prepare_cache

__all__ = ["PrepareOptions", "PrepareResult", "prepare_manifest"]


@dataclass
class PrepareOptions:
    """Everything ``chexgen prepare`` takes (see its ``--help`` for each option)."""

    manifest: str
    out: str
    preset: str = "tiny"
    vae: str | None = None
    resolution: int | None = None
    resize_policy: str = "crop"
    text_field: str = "auto"
    prompt_cleaning: str = "basic"
    store_std: bool = True
    conditions: bool = False
    condition_kinds: tuple[str, ...] = ("anatomy", "finding")
    condition_style: str = "both"
    num_shards: int | None = None  # None = $WORLD_SIZE or 1
    shard_index: int | None = None  # None = $RANK or 0
    shard_size: int = 1024
    batch_size: int = 32
    num_workers: int = 0
    device: str | None = None
    limit: int | None = None
    data_root: str | None = None
    progress: bool = True


@dataclass
class PrepareResult:
    """What one writer did, plus where its shard sits."""

    summary: PrepareSummary
    shard_index: int
    num_shards: int
    index_path: Path

    @property
    def exit_code(self) -> int:
        """1 when this writer (or the manifest reader) rejected anything, else 0."""
        return EXIT_REJECTED if self.summary.rejected_total else EXIT_OK


def _device(name: str | None):
    import torch

    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def prepare_manifest(opts: PrepareOptions) -> PrepareResult:
    """Cache VAE latent moments and text embeddings (and condition latents) of ``opts.manifest``."""
    from chexgen.models.presets import get_preset
    from chexgen.models.text_encoder import load_text_encoder
    from chexgen.models.vae import RadiographVAE

    preset = get_preset(opts.preset)
    num_shards = opts.num_shards or int(os.environ.get("WORLD_SIZE", 1))
    shard_index = opts.shard_index if opts.shard_index is not None else int(os.environ.get("RANK", 0))
    if not 0 <= shard_index < num_shards:
        raise ChexgenError(f"--shard-index {shard_index} is outside 0..{num_shards - 1} (--num-shards {num_shards})")
    if opts.data_root is not None and not Path(opts.data_root).is_dir():
        raise ChexgenError(f"--data-root {opts.data_root}: not a folder")

    # Read (and reject) before loading any model: a bad manifest fails in a second, not after the load.
    manifest_rejects = RejectLog()
    lines = read_manifest_lines(opts.manifest, rejects=manifest_rejects, data_root=opts.data_root)
    if opts.limit is not None:
        lines = lines[: opts.limit]
    if not lines:
        raise ChexgenError(f"{opts.manifest}: the manifest holds no records; nothing to prepare")
    records = [r for _, r in lines]

    device = _device(opts.device)
    vae_spec = preset.vae
    if opts.vae:
        vae_spec = dataclasses.replace(vae_spec, name_or_path=str(Path(opts.vae).resolve()), subfolder=None,
                                       scaling_factor=None)
    elif vae_spec.kind == "gray" and not vae_spec.name_or_path:
        raise ChexgenError(f"preset {preset.name} uses a gray VAE that must be trained first: "
                           f"run `chexgen train-vae` and pass --vae FOLDER")
    vae = RadiographVAE.from_spec(vae_spec).to(device).eval().requires_grad_(False)
    if vae_spec.kind == "gray":  # record the loaded VAE's real widths, not the preset's defaults
        vae_spec = dataclasses.replace(vae_spec, block_out_channels=tuple(vae.autoencoder.config.block_out_channels))
    text_encoder = load_text_encoder(preset.text_encoder, device=device)
    resolution = opts.resolution or preset.resolution
    f = vae.downsample_factor
    if resolution % f:
        raise ChexgenError(f"--resolution {resolution} is not divisible by the VAE factor {f}")
    conditions: dict = {}
    condition_options: dict = {}
    if opts.conditions:
        from chexgen.data.conditions import RecordConditionRenderer

        renderer = RecordConditionRenderer(kinds=tuple(opts.condition_kinds), style=opts.condition_style)
        conditions = {"control": renderer}
        if renderer != RecordConditionRenderer():
            condition_options = renderer.to_dict()
    spec = CacheSpec(
        resolution=resolution, resize_policy=opts.resize_policy, text_field=opts.text_field,
        prompt_cleaning=opts.prompt_cleaning, store_std=opts.store_std, vae=vae_spec.to_dict(),
        vae_scaling_factor=vae.scaling_factor, text_encoder=preset.text_encoder.to_dict(),
        latent_shape=[vae.latent_channels, resolution // f, resolution // f],
        embed_dim=text_encoder.embed_dim, max_length=text_encoder.max_length, conditions=sorted(conditions),
        condition_options=condition_options,
    )
    summary = prepare_cache(
        records, opts.out, vae, text_encoder, spec, manifest_root=Path(opts.manifest).parent,
        num_shards=num_shards, shard_index=shard_index, shard_size=opts.shard_size, batch_size=opts.batch_size,
        num_workers=opts.num_workers, conditions=conditions, progress=opts.progress,
        manifest_file=opts.manifest, record_lines={r.id: line for line, r in lines},
        manifest_rejects=manifest_rejects.entries,
    )
    return PrepareResult(summary=summary, shard_index=shard_index, num_shards=num_shards,
                         index_path=Path(opts.out) / "index.json")
