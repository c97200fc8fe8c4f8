"""Small end-to-end augmentation study: 10 % real vs 10 % real + 2x synthetic, 3 seeds.

Real data: a phantom cohort rendered by ``chexgen phantom`` (or ``--real MANIFEST``).
Synthetic data, in order of preference:

1. ``--synthetic MANIFEST``: any synthetic manifest (e.g. from ``chexgen generate``);
2. ``--generator DIR``: a chexgen pipeline folder; the script runs ``chexgen generate --model DIR``
   with the real training records as prompts (labels and demographics carried over);
3. neither: a second, independently seeded phantom cohort stands in for the synthetic set.
   That is an *oracle generator* (same distribution as the real data, perfect labels): it
   measures what the experiment machinery does with ideal synthetic data, not what a trained
   generator achieves. The script says which source it used.

    python benchmarks/downstream.py                       # phantom, DenseNet121 at 64 px, CPU
    python benchmarks/downstream.py --generator runs/pipe # synthetic from a trained pipeline
    python benchmarks/downstream.py --n 2000 --image-size 128 --epochs 20 --device cuda

Prints the timings, the source of each set and the resulting table (mean +- sd over seeds,
two-sided Wilcoxon p of the paired seeds; with 3 seeds the smallest attainable p is 0.25).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

from chexgen.data.manifest import read_manifest


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def _run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _phantom(out: Path, n: int, size: int, seed: int) -> Path:
    if not (out / "manifest.jsonl").is_file() or len(read_manifest(out / "manifest.jsonl")) < n:
        _run([sys.executable, "-m", "chexgen.cli", "phantom", "--n", str(n), "--size", str(size), "--out", str(out),
              "--seed", str(seed), "--prevalence", "balanced", "--no-progress"])
    return out / "manifest.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("bench_downstream"), help="Working folder (cohorts, results; reruns resume).")
    ap.add_argument("--real", type=Path, default=None, help="Real manifest (default: render a phantom cohort).")
    ap.add_argument("--synthetic", type=Path, default=None, help="Synthetic manifest.")
    ap.add_argument("--generator", type=Path, default=None, help="chexgen pipeline folder to generate the synthetic set.")
    ap.add_argument("--gen-steps", type=int, default=None, help="Sampling steps for --generator (default: the model's).")
    ap.add_argument("--n", type=int, default=400, help="Phantom cohort size (real; the stand-in synthetic set is as large).")
    ap.add_argument("--phantom-size", type=int, default=64, help="Phantom image size in pixels.")
    ap.add_argument("--image-size", type=int, default=64, help="Network input size.")
    ap.add_argument("--classes", default="Cardiomegaly,Pleural Effusion,Support Devices,Lung Opacity",
                    help="Comma-separated classes.")
    ap.add_argument("--arch", default="densenet121", help="Classifier (densenet121 as in the paper; densenet-tiny for a quick run).")
    ap.add_argument("--epochs", type=int, default=8, help="Epochs per run.")
    ap.add_argument("--real-fraction", type=float, default=0.1, help="Fraction of the real train split.")
    ap.add_argument("--multiplier", type=float, default=2.0, help="Synthetic multiple k.")
    ap.add_argument("--seeds", default="0,1,2", help="Comma-separated seeds.")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda.")
    ap.add_argument("--num-threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy 2-core box).")
    args = ap.parse_args()

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    if args.real:
        real, real_src = args.real, f"manifest {args.real}"
    else:
        real, real_src = _phantom(work / "real", args.n, args.phantom_size, seed=0), f"phantom cohort n={args.n} seed=0"
    if args.synthetic:
        synth, synth_src = args.synthetic, f"manifest {args.synthetic}"
    elif args.generator:
        synth = work / "generated" / "manifest.jsonl"
        train_prompts = work / "real_train.jsonl"
        # Prompts: a label-stratified subset of the real training cases (their labels and
        # demographics), 1.5x the size the mix needs, so the pool keeps the real label distribution.
        import numpy as np

        from chexgen.data.manifest import write_manifest
        from chexgen.downstream.sampling import label_key_fn, subsample_fraction

        train = [r for r in read_manifest(real) if r.split == "train"]
        share = min(1.0, 1.5 * args.multiplier * args.real_fraction)
        key = label_key_fn("classification", [c.strip() for c in args.classes.split(",")])
        write_manifest(train_prompts, subsample_fraction(train, share, key, np.random.default_rng(0)))
        cmd = [sys.executable, "-m", "chexgen.cli", "generate", "--model", str(args.generator), "--prompts", str(train_prompts),
               "--manifest", "-n", str(max(1, math.ceil(1.5 * args.multiplier * args.real_fraction))), "--out", str(synth.parent),
               "--no-progress"]
        if args.gen_steps:
            cmd += ["--steps", str(args.gen_steps)]
        _run(cmd)
        synth_src = f"generated by {args.generator}"
    else:
        synth = _phantom(work / "oracle_synthetic", args.n, args.phantom_size, seed=1)
        synth_src = f"STAND-IN: independent phantom cohort n={args.n} seed=1 (oracle generator, not a trained model)"
    t_data, c_data = time.perf_counter() - t0, _cpu_seconds() - c0

    from chexgen.downstream.config import load_config
    from chexgen.downstream.experiments import run_augment

    cfg = load_config(None, {
        "experiment": "augment", "task": "classification", "real": str(real), "synthetic": str(synth),
        "output": str(work / "results"), "classes": [c.strip() for c in args.classes.split(",")],
        "image_size": args.image_size, "arch": args.arch, "seeds": [int(s) for s in args.seeds.split(",")],
        "real_fraction": args.real_fraction, "multipliers": [args.multiplier],
        "train.epochs": args.epochs, "train.lr": 1e-3, "train.batch_size": 16, "train.device": args.device,
        "train.num_threads": args.num_threads,
    })
    t1, c1 = time.perf_counter(), _cpu_seconds()
    result = run_augment(cfg)
    t_train, c_train = time.perf_counter() - t1, _cpu_seconds() - c1

    runs = result["runs"]
    print()
    print(f"real:      {real_src}")
    print(f"synthetic: {synth_src}")
    print(f"model: {args.arch} at {args.image_size} px, init {runs['real'][0]['init']}, {args.epochs} epochs, seeds {cfg.seeds}")
    print(f"data preparation: {t_data:.1f} s wall, {c_data:.1f} s CPU")
    print(f"training + evaluation ({sum(len(v) for v in runs.values())} runs): {t_train:.1f} s wall, {c_train:.1f} s CPU")
    for cond, rs in runs.items():
        secs = [r["seconds"] for r in rs]
        print(f"  {cond}: n_train {rs[0]['n_train']}, {sum(secs) / len(secs):.1f} s wall per run")
    print()
    print(result["table_markdown"])
    s = result["summaries"]
    key = f"real+{args.multiplier:g}x"
    delta = s[key]["auroc_macro"]["mean"] - s["real"]["auroc_macro"]["mean"]
    print(f"macro AUROC change with {args.multiplier:g}x synthetic: {delta:+.4f} "
          f"(Wilcoxon p = {s[key]['auroc_macro'].get('wilcoxon_p_vs_real')})")
    print(f"results folder: {cfg.output}")
    print(json.dumps({"t_data_s": round(t_data, 1), "t_train_s": round(t_train, 1), "cpu_train_s": round(c_train, 1)}))


if __name__ == "__main__":
    main()
