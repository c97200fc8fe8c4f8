"""``chexgen presets``: list the model presets and what each one fixes."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="Print machine-readable JSON instead of a table.")
    parser.add_argument("--no-params", action="store_true",
                        help="Skip counting DiT parameters (counting builds each model on the meta device).")


def _describe(preset, count: bool) -> dict:
    info = {
        "name": preset.name,
        "resolution": preset.resolution,
        "latent": f"{preset.vae.latent_channels}x{preset.latent_size}x{preset.latent_size}",
        "transformer": dict(preset.transformer),
        "vae": preset.vae.kind + (f" ({preset.vae.name_or_path})" if preset.vae.name_or_path else " (1-channel)"),
        "text_encoder": f"{preset.text_encoder.kind} ({preset.text_encoder.name_or_path or 'packaged MiniLM-L6'}), "
                        f"{preset.text_encoder.embed_dim}-d, {preset.text_encoder.max_length} tokens",
        "description": preset.description,
    }
    if count:
        import torch

        from chexgen.models.dit import ChexGenDiT, count_parameters

        with torch.device("meta"):
            info["dit_parameters"] = count_parameters(ChexGenDiT.from_preset(preset))
    return info


def run(args: argparse.Namespace) -> int:
    from chexgen.models.presets import PRESETS

    rows = [_describe(p, not args.no_params) for p in PRESETS.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        t = r["transformer"]
        params = f", {r['dit_parameters'] / 1e6:.1f}M params" if "dit_parameters" in r else ""
        print(f"{r['name']}: {r['resolution']} px, latents {r['latent']}")
        print(f"    DiT depth {t['depth']}, hidden {t['hidden_size']}, {t['num_heads']} heads, "
              f"patch {t['patch_size']}, pos-embed scale {t.get('interpolation_scale', 1.0)}{params}")
        print(f"    VAE {r['vae']}; text {r['text_encoder']}")
        print(f"    {r['description']}")
    return 0
