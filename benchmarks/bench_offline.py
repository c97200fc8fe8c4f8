"""The offline ``chexgen benchmark`` demonstration: render the cohorts, run ``benchmarks/bench_offline.yaml``, print.

    python benchmarks/bench_offline.py [--n 64] [--train-n 128] [--work runs/bench_offline]

1. ``chexgen phantom`` renders the held-out cohort (seed 1000, ``--n`` cases) and the first ``--train-n``
   cases of the bundled model's training cohort (seed 0: a case depends only on seed and index, so these
   are the very images it was trained on), both with the model's finding recipe;
2. ``chexgen benchmark --config benchmarks/bench_offline.yaml`` generates 2 images per held-out
   impression with each model (resumable), scores every set with the bundled phantom classifier, and
   writes the report and leaderboard into ``<work>/out``;
3. prints the leaderboard's main columns and the wall time.

The config's paths point at ``runs/bench_offline``; with another ``--work`` a copy of the config with
those paths is written there and used.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "benchmarks" / "bench_offline.yaml"
PREVALENCE = REPO / "src" / "chexgen" / "assets" / "demo" / "prevalence.yaml"
COLUMNS = ["fd_phantom-clf", "kid_phantom-clf", "precision_phantom-clf", "recall_phantom-clf", "density_phantom-clf",
           "coverage_phantom-clf", "ms_ssim", "pearson", "auroc_macro", "memorised_fraction", "seconds_per_image",
           "model_calls_per_image"]


def main() -> int:
    from chexgen.cli import main as chexgen

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="held-out cases (prompts)")
    ap.add_argument("--train-n", type=int, default=128, help="training cases rendered as the memorisation reference")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench_offline")
    args = ap.parse_args()
    t0 = time.perf_counter()
    for name, seed, n in (("heldout", 1000, args.n), ("train", 0, args.train_n)):
        code = chexgen(["phantom", "--n", str(n), "--size", "128", "--seed", str(seed), "--prevalence", str(PREVALENCE),
                        "--out", str(args.work / name), "--no-progress"])
        if code:
            return code
    config = CONFIG
    if args.work.resolve() != (REPO / "runs" / "bench_offline").resolve():
        config = args.work / "bench_offline.yaml"
        text = CONFIG.read_text(encoding="utf-8").replace("../runs/bench_offline", str(args.work.resolve()))
        config.write_text(text.replace("../src/", str(REPO / "src") + "/"), encoding="utf-8")
    code = chexgen(["benchmark", "--config", str(config), "--no-progress"])
    if code:
        return code
    out = args.work / "out"
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    labels = {k: next((mm["metrics"][k]["label"] for mm in m["models"].values() if k in mm["metrics"]), k)
              for k in COLUMNS}
    print("| model | " + " | ".join(labels[k] for k in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name, mm in m["models"].items():
        cells = []
        for k in COLUMNS:
            v = mm["metrics"].get(k, {}).get("value")
            cells.append("–" if v is None else f"{v:.3g}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\n{m['inputs']['n_prompts']} prompts x {m['inputs']['images_per_prompt']} images per model; "
          f"this run {time.perf_counter() - t0:.0f} s (benchmark step {m['wall_seconds']:.0f} s); "
          f"report: {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
