"""``chexgen verify``: report the synthetic marking, watermark and payload of images (PNG, JPEG, DICOM)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="+", metavar="IMAGE_OR_FOLDER",
                   help="Image files (PNG, JPEG, DICOM) or folders searched recursively for them.")
    p.add_argument("--manifest", default=None, metavar="MANIFEST",
                   help="Synthetic manifest whose provenance payloads identify images that lost their metadata "
                        "(e.g. re-saved as JPEG).")
    p.add_argument("--json", default=None, metavar="FILE", help="Also write every verdict to this JSON file.")
    p.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")


def run(args: argparse.Namespace) -> int:
    from chexgen.release.verify import verify
    from chexgen.utils import atomic_write_json

    report = verify(args.targets, manifest=args.manifest, progress=not args.no_progress)
    for r in report.results:
        marked = "marked synthetic" if r.synthetic_marked else "no synthetic metadata"
        wm = f"watermark {r.payload} (score {r.score:.2f})" if r.watermark_found else \
            f"no watermark (score {r.score:.2f})"
        notes = f" [{'; '.join(r.notes)}]" if r.notes else ""
        print(f"{r.path}: {r.kind}, {marked}, {wm}, provenance: {r.provenance}{notes}")
    for path, message in report.skipped:
        print(f"skipped: {message}")
    found = sum(r.watermark_found for r in report.results)
    print(f"verify: {len(report.results)} checked, {found} with a chexgen watermark, {len(report.skipped)} skipped")
    if report.skipped:
        print("skipped files: " + ", ".join(p for p, _ in report.skipped))
    if args.json:
        atomic_write_json(args.json, report.as_dict())
    return 1 if report.skipped else 0
