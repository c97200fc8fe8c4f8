"""Quality of the demo model against DiT training steps, from ``benchmarks/demo_quality.py`` results.

    python benchmarks/demo_curve.py --point 7287:eval/init/work/demo_quality.json \\
        --point 9287:eval/step-2000/work/demo_quality.json ... [--out docs/assets/demo_curve.png]

Each ``--point STEPS:FILE`` is one model scored by ``demo_quality.py --work DIR`` (its
``DIR/demo_quality.json``; the first guidance run is used). Prints a table (mean AUROC with its 95 %
CI, Lung Lesion AUROC, FID with its CI, against the real set's values) and plots mean AUROC and FID
against steps, with the real held-out images' AUROC and the real half-vs-half FID as reference lines:
where the curve flattens is what more CPU hours of the same recipe would buy. ``--mark STEPS:LABEL``
draws a vertical line (e.g. where the learning-rate decay starts).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _point(text: str) -> tuple[int, Path]:
    steps, _, path = text.partition(":")
    try:
        return int(steps), Path(path)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--point {text!r}: expected STEPS:FILE") from None


def _mark(text: str) -> tuple[int, str]:
    steps, _, label = text.partition(":")
    try:
        return int(steps), label
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mark {text!r}: expected STEPS:LABEL") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--point", type=_point, action="append", required=True, metavar="STEPS:FILE",
                    help="DiT training steps of a model and its demo_quality.json (repeat)")
    ap.add_argument("--mark", type=_mark, action="append", default=[], metavar="STEPS:LABEL",
                    help="a vertical line at STEPS labelled LABEL on both plots (repeat)")
    ap.add_argument("--out", default=None, help="PNG of the curves (default: no plot)")
    ap.add_argument("--title", default="bundled demo model: quality against DiT steps")
    args = ap.parse_args(argv)
    rows = []
    for steps, path in sorted(args.point):
        if not path.is_file():
            print(f"{path}: not found", file=sys.stderr)
            return 2
        run = json.loads(path.read_text())["runs"][0]
        d = run["demo"]
        lo_f, hi_f = run.get("fid_ci") or (None, None)
        rows.append((steps, d["auroc_generated_mean"], *d["auroc_generated_mean_ci"],
                     d["auroc_generated_per_class"].get("Lung Lesion", float("nan")), d["fid_real_vs_generated"],
                     lo_f, hi_f, d["auroc_real_mean"], d["fid_real_half_vs_half"],
                     d["auroc_real_per_class"].get("Lung Lesion", float("nan"))))
    print("| DiT steps | mean AUROC [95 % CI] | Lung Lesion AUROC | FID [95 % CI] |")
    print("|---|---|---|---|")
    for st, a, lo, hi, ll, f, flo, fhi, *_ in rows:
        ci = f" [{flo:.0f}, {fhi:.0f}]" if flo is not None else ""
        print(f"| {st:,} | {a:.3f} [{lo:.3f}, {hi:.3f}] | {ll:.3f} | {f:.0f}{ci} |")
    print(f"| real held-out images | {rows[-1][8]:.3f} | {rows[-1][10]:.3f} | {rows[-1][9]:.1f} (half vs half) |")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r[0] for r in rows]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
        ax1.errorbar(steps, [r[1] for r in rows], yerr=[[r[1] - r[2] for r in rows], [r[3] - r[1] for r in rows]],
                     marker="o", capsize=3, label="generated (mean over findings)")
        ax1.plot(steps, [r[4] for r in rows], marker="s", ls="--", label="generated: Lung Lesion")
        ax1.axhline(rows[-1][8], color="grey", ls=":", label="real held-out images")
        ax1.axhline(rows[-1][10], color="tab:orange", ls=":", label="real: Lung Lesion")
        ax1.set_xlabel("DiT training steps")
        ax1.set_ylabel("AUROC (phantom classifier)")
        ax1.legend(fontsize=8)
        fid_err = [[r[5] - r[6] if r[6] is not None else 0 for r in rows],
                   [r[7] - r[5] if r[7] is not None else 0 for r in rows]]
        ax2.errorbar(steps, [r[5] for r in rows], yerr=fid_err, marker="o", capsize=3, label="generated vs real")
        ax2.axhline(rows[-1][9], color="grey", ls=":", label="real half vs half")
        ax2.axhline(3 * rows[-1][9], color="grey", ls="--", label="3x real half vs half")
        ax2.set_yscale("log")
        ax2.set_xlabel("DiT training steps")
        ax2.set_ylabel("FID on the classifier's features")
        ax2.legend(fontsize=8)
        for at, label in args.mark:
            for ax in (ax1, ax2):
                ax.axvline(at, color="tab:green", ls="-.", lw=1)
            ax1.annotate(label, (at, ax1.get_ylim()[0]), xytext=(3, 3), textcoords="offset points", fontsize=7,
                         color="tab:green")
        fig.suptitle(args.title, fontsize=10)
        fig.tight_layout()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=120)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
