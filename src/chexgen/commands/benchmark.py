"""``chexgen benchmark``: generate with every model of ``bench.yaml``, score all alike, write one report.

Parses the options and calls :func:`chexgen.benchmark.run_benchmark`, which checks every model,
prompt template and extractor before the first image. Under ``torchrun`` / ``accelerate launch`` the
generation is sharded across processes; process 0 scores and writes the report.
"""

from __future__ import annotations

import argparse

from chexgen.models.precision import PRECISION_HELP, PRECISIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="BENCH_YAML",
                        help="Benchmark config: real test manifest, models (name, backend, model folder / hub id, "
                             "prompt template, sampler settings), images per prompt, seed, extractors, re-ID "
                             "(see docs/how-to/benchmark.md). Relative paths are relative to the file.")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="Output folder (default: the config's `out`). Rerunning resumes: finished images and "
                             "cached features are kept.")
    parser.add_argument("--device", default=None,
                        help="torch device for generation and features (default: the config's, else this process's "
                             "accelerator under accelerate / torchrun, else cuda if available, else cpu).")
    parser.add_argument("--precision", default=None, choices=PRECISIONS,
                        help=PRECISION_HELP + " For the generation of every model whose entry names none (default: "
                             "the config's `precision`, else auto); features are always computed in fp32.")
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars.")


def run(args: argparse.Namespace) -> int:
    from chexgen.benchmark import load_config, run_benchmark

    cfg = load_config(args.config, out=args.out)
    if args.device:
        cfg.device = args.device
    if args.precision:
        cfg.precision = args.precision
    result = run_benchmark(cfg, progress=not args.no_progress)
    if result.rank != 0:
        return 0
    for s in result.scores:
        shown = [f"{m['label']} {m['value']:.4g}" for k, m in s.metrics.items()
                 if isinstance(m.get("value"), float) and (k.startswith(("fd_", "reid_fraction")) or k in (
                     "ms_ssim", "pearson", "seconds_per_image"))]
        print(f"{s.name}: " + ", ".join(shown), flush=True)
    print(f"wrote {result.outputs['report_html']}, {result.outputs['leaderboard_md']}, "
          f"{result.outputs['leaderboard_csv']} and {result.outputs['metrics_json']}", flush=True)
    return 0
