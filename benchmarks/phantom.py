"""Phantom cohort throughput: images per second at 128, 256 and 512 px.

Measures the full ``chexgen phantom`` path (render + image and mask PNGs +
records + manifest) with the given number of worker processes, after the atlas
is cached (the one-off CT download and preprocessing are timed separately).

    python benchmarks/phantom.py                 # 2 workers, 40 images per size
    python benchmarks/phantom.py --n 200 --workers 4 --sizes 256 512

Target (issue 4): at least 5 images/s at 256 px on 2 cores.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from chexgen.curation.report_writer import TemplateReportWriter
from chexgen.phantom import CohortConfig, load_atlas, write_cohort
from chexgen.phantom.atlas import _MEMORY


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40, help="Images per size.")
    ap.add_argument("--workers", type=int, default=2, help="Worker processes.")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512], help="Image sizes to measure.")
    ap.add_argument("--seed", type=int, default=0, help="Cohort seed.")
    args = ap.parse_args()

    _MEMORY.clear()
    t = time.perf_counter()
    load_atlas("PA")
    print(f"atlas load (cached npz, or download + build on the first run): {time.perf_counter() - t:.2f} s")
    print("img/s (wall) is what this run saw; on a shared machine it is lower than on dedicated cores.")
    print("img/s (cpu) = images x workers / CPU seconds of all processes: the rate with `workers` idle cores.")
    print(f"{'size':>6} {'images':>7} {'workers':>8} {'wall s':>8} {'cpu s':>8} {'img/s (wall)':>13} {'img/s (cpu)':>12}")
    results = {}
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = CohortConfig(n=args.n, size=size, seed=args.seed, workers=args.workers)
            t = time.perf_counter()
            c0 = _cpu()
            write_cohort(cfg, Path(tmp) / "cohort", TemplateReportWriter(seed=args.seed), progress=False)
            dt = time.perf_counter() - t
            cpu = _cpu() - c0
        wall_rate = args.n / dt
        cpu_rate = args.n * args.workers / cpu
        results[size] = (wall_rate, cpu_rate)
        print(f"{size:>6} {args.n:>7} {args.workers:>8} {dt:>8.2f} {cpu:>8.2f} {wall_rate:>13.2f} {cpu_rate:>12.2f}")
    if 256 in results:
        w, c = results[256]
        print(f"256 px: {w:.2f} img/s wall ({w / 5.0:.2f} x target), {c:.2f} img/s on {args.workers} idle cores "
              f"({c / 5.0:.2f} x the 5 img/s target)")


def _cpu() -> float:
    """User + system CPU seconds of this process and its finished children (the worker pool)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


if __name__ == "__main__":
    main()
