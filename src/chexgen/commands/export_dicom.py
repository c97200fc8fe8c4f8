"""``chexgen export-dicom``: write an existing synthetic set (manifest + PNGs) as synthetic DICOM files."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", metavar="MANIFEST", help="Synthetic manifest (JSONL / Parquet) written by generate.")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="Output folder: one .dcm per synthetic record (same relative paths) and manifest.jsonl.")
    p.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")


def run(args: argparse.Namespace) -> int:
    from chexgen.release.export import export_dicom

    report = export_dicom(args.manifest, args.out, progress=not args.no_progress)
    for _, message in report.skipped:
        print(f"skipped: {message}")
    print(f"export-dicom: {len(report.written)} written, {len(report.kept)} already there, "
          f"{len(report.skipped)} skipped" + (f"; manifest {report.manifest}" if report.manifest else ""))
    if report.skipped:
        print("skipped records: " + ", ".join(rid for rid, _ in report.skipped))
    return 1 if report.skipped else 0
