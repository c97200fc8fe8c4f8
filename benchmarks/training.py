"""Training throughput of the tiny preset on CPU: cached features vs on-the-fly encoding.

Measures, in one run and on the same data:

* ``prepare``: images/s of feature caching (VAE moments + MiniLM tokens);
* ``train (cached)``: steps/s and images/s of ``chexgen train`` reading the cache;
* ``train (on the fly)``: the same with ``--encode-on-the-fly`` (VAE + text encoder every batch);
* ``train-vae``: steps/s of the gray VAE on whole 128 px images and on 64 px crops;

with each phase's peak resident memory (each phase runs in its own process), and
prints the cached / on-the-fly speed ratio.

    python benchmarks/training.py                         # ~8 min on 2 busy cores
    python benchmarks/training.py --steps 50 --images 256 --batch-size 32 --threads 2
    python benchmarks/training.py --manifest phantom/manifest.jsonl   # real phantom images

Without ``--manifest`` it renders simple synthetic chest-like images. The VAE is
the tiny preset's gray VAE at random initialisation (speed does not depend on
its weights); the DiT is the full tiny preset (~11M parameters, 128 px) unless
``--dit-overrides`` shrinks it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _synthetic_manifest(root: Path, n: int, size: int) -> Path:
    import numpy as np

    from chexgen.data.imageio import save_png

    captions = ["No acute cardiopulmonary process.", "Large right pleural effusion.",
                "Cardiomegaly with mild pulmonary edema.", "Left upper lobe consolidation."]
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    lines = []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = 0.75 - 0.2 * yy
        for cx in (0.3, 0.7):
            img -= 0.45 * (((xx - cx - rng.uniform(-0.05, 0.05)) / 0.17) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1)
        img = np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1).astype(np.float32)
        save_png(root / "images" / f"{i:05d}.png", img)
        lines.append(json.dumps({"id": f"s{i}", "image": f"images/{i:05d}.png", "impression": captions[i % 4]}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root / "manifest.jsonl"


def _phase(args: argparse.Namespace) -> dict:
    """Run one phase in this process and return its numbers (called in a subprocess)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    if args.phase == "vae-init":
        from chexgen.models.presets import get_preset
        from chexgen.models.vae import RadiographVAE

        torch.manual_seed(0)
        RadiographVAE.from_spec(get_preset("tiny").vae).save_pretrained(work / "vae")
        return {}
    if args.phase == "prepare":
        from chexgen.cli import main

        n = sum(1 for _ in open(args.manifest))
        t = time.perf_counter()
        main(["prepare", args.manifest, "--out", str(work / "cache"), "--vae", str(work / "vae"),
              "--num-workers", "0", "--batch-size", str(args.batch_size), "--no-progress"])
        dt = time.perf_counter() - t
        return {"seconds": dt, "images_per_s": n / dt}
    from chexgen.training.config import TrainConfig, VAETrainConfig, resolve_config
    from chexgen.training.trainer import train

    common = dict(output_dir=str(work / args.phase), batch_size=args.batch_size, max_steps=args.steps,
                  sample_prompts=[], export=False, progress=False, checkpoint_every=0, log_every=args.steps,
                  num_threads=args.threads)
    if args.phase.startswith("train-vae"):
        from chexgen.data.manifest import read_manifest
        from chexgen.training.vae_task import build_vae_task

        vae_common = {k: v for k, v in common.items() if k not in ("export", "sample_prompts")}
        cfg = resolve_config(VAETrainConfig, overrides={**vae_common, "crop_size": 64 if args.phase.endswith("crop") else None})
        task = build_vae_task(cfg, read_manifest(args.manifest), Path(args.manifest).parent)
    else:
        from chexgen.training.diffusion_task import build_text_to_image_task

        overrides = json.loads(args.dit_overrides) if args.dit_overrides else {}
        data = args.manifest if args.phase == "train-fly" else str(work / "cache")
        cfg = resolve_config(TrainConfig, overrides={**common, "data": data, "vae": str(work / "vae"),
                                                     "encode_on_the_fly": args.phase == "train-fly",
                                                     "transformer_overrides": overrides})
        task = build_text_to_image_task(cfg)
    result = train(task)
    return {"steps_per_s": result.steps_per_second, "images_per_s": result.samples_per_second,
            "loss": result.last_logs.get("loss")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", help="manifest of training images (default: synthetic images)")
    p.add_argument("--images", type=int, default=64, help="synthetic images to render (without --manifest)")
    p.add_argument("--steps", type=int, default=12, help="training steps per phase")
    p.add_argument("--batch-size", type=int, default=16, help="batch size")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (0 = torch default; 1 is fastest for the tiny preset on a shared machine)")
    p.add_argument("--repeats", type=int, default=2, help="alternating runs of the two training phases (best kept)")
    p.add_argument("--dit-overrides", default=None, help='JSON ChexGenDiT overrides, e.g. \'{"depth": 2}\'')
    p.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        out = _phase(args)
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(out))
        return 0

    work = Path(args.work or tempfile.mkdtemp(prefix="chexgen-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    manifest = args.manifest or str(_synthetic_manifest(work / "data", args.images, 128))
    results: dict[str, dict] = {}
    # cached and on-the-fly training alternate `--repeats` times and keep their best run, so a
    # burst of load from other jobs on a shared machine does not decide the ratio
    train_phases = ["train-cached", "train-fly"] * args.repeats
    for phase in ("vae-init", "prepare", *train_phases, "train-vae", "train-vae-crop"):
        cmd = [sys.executable, __file__, "--phase", phase, "--work", str(work), "--manifest", manifest,
               "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
        if args.dit_overrides:
            cmd += ["--dit-overrides", args.dit_overrides]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
        result = {**json.loads(line[7:]), "wall_s": time.perf_counter() - t}
        if phase not in results or result.get("steps_per_s", 0) > results[phase].get("steps_per_s", 0):
            results[phase] = result

    import torch

    print(f"tiny preset, 128 px, batch {args.batch_size}, {args.steps} steps/phase, threads "
          f"{args.threads or torch.get_num_threads()}, {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f}")
    pr = results["prepare"]
    print(f"prepare            {pr['images_per_s']:7.2f} images/s                     peak RSS {pr['peak_rss_mb']:6.0f} MB")
    for key, name in (("train-cached", "train (cached)"), ("train-fly", "train (on the fly)"),
                      ("train-vae", "train-vae 128 px"), ("train-vae-crop", "train-vae crop 64")):
        r = results[key]
        print(f"{name:18s} {r['steps_per_s']:7.3f} steps/s {r['images_per_s']:7.2f} images/s   "
              f"peak RSS {r['peak_rss_mb']:6.0f} MB")
    ratio = results["train-cached"]["steps_per_s"] / max(results["train-fly"]["steps_per_s"], 1e-12)
    print(f"cached / on-the-fly speed ratio: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
