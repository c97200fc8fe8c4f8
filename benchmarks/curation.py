"""Curation benchmark: speed and QC agreement at OpenChest scale, extractor vs MeSH on real reports.

1. Reads the real NIH (112,120), CheXpert (223,414) and PadChest (~160k) metadata shipped
   in torchxrayvision, writes a template report for every record, checks it with the rule
   extractor and writes the manifest. Prints wall and CPU seconds per stage, records per
   second, the QC agreement (target 100%) and the ratio to the 3-minute target.
2. Reads the 3,955 Indiana University (NLMCXR) reports and compares the extractor's labels
   with the reports' curated (major) MeSH terms, per class both express.

    python benchmarks/curation.py                      # full size (a few minutes on 2 cores)
    python benchmarks/curation.py --limit 20000        # quick look
    python benchmarks/curation.py --skip-curation      # extractor vs MeSH only

Wall time depends on what else the machine runs; CPU time is printed next to it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from chexgen.curation.extractor import extract_labels  # noqa: E402
from chexgen.curation.output import write_curated_manifest  # noqa: E402
from chexgen.curation.pipeline import curate_records  # noqa: E402
from chexgen.curation.report_writer import TemplateReportWriter  # noqa: E402
from chexgen.data.labels import LABELS  # noqa: E402
from chexgen.data.sources.registry import load_source  # noqa: E402

TARGET_S = 180.0


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (the report worker processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Clock:
    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), _cpu()

    def lap(self) -> tuple[float, float]:
        w, c = time.perf_counter(), _cpu()
        out = (w - self.wall, c - self.cpu)
        self.wall, self.cpu = w, c
        return out


def bench_curation(sources: list[str], limit: int | None, out_dir: Path, fmt: str, seed: int, workers: int) -> None:
    clock = Clock()
    records, rejected = [], 0
    rows = []
    for name in sources:
        res = load_source(name, limit=limit)
        records.extend(res.records)
        rejected += len(res.rejects)
        w, c = clock.lap()
        rows.append((f"read {name}", len(res.records), w, c))
    curated, qc_rejects, stats = curate_records(records, TemplateReportWriter(seed=seed), workers=workers)
    w, c = clock.lap()
    rows.append((f"write + check reports ({workers} process{'es' if workers > 1 else ''})", stats.written, w, c))
    path = out_dir / f"openchest_bench.{fmt}"
    write_curated_manifest(path, curated)
    w, c = clock.lap()
    rows.append((f"write manifest ({fmt}, {path.stat().st_size / 1e6:.0f} MB)", len(curated), w, c))
    print(f"\n## Curation: {' + '.join(sources)}, template writer, seed {seed}\n")
    print("| stage | records | wall s | CPU s | records/s (wall) |\n|---|---:|---:|---:|---:|")
    for name, n, w, c in rows:
        print(f"| {name} | {n} | {w:.1f} | {c:.1f} | {n / w:,.0f} |")
    total_w = sum(r[2] for r in rows)
    total_c = sum(r[3] for r in rows)
    print(f"| **total** | {stats.written} | {total_w:.1f} | {total_c:.1f} | {stats.written / total_w:,.0f} |")
    print(f"\nrows rejected by the adapters: {rejected}; QC: {stats.passed_first} passed first time, "
          f"{stats.rewritten} rewritten, {stats.flagged} flagged -> agreement {100 * stats.agreement:.3f}%")
    print(f"time / 3-minute target: wall {total_w / TARGET_S:.2f}, CPU {total_c / TARGET_S:.2f} "
          f"(load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    if stats.failures_by_label:
        print("QC failures by label:", stats.failures_by_label)


def _kappa(tp: int, fp: int, fn: int, tn: int) -> float:
    n = tp + fp + fn + tn
    po = (tp + tn) / n
    pe = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (n * n)
    return (po - pe) / (1 - pe) if pe < 1 else 1.0


def bench_extractor(limit: int | None) -> None:
    res = load_source("nlmcxr", limit=limit)
    recs = res.records
    clock = Clock()
    extracted = [extract_labels(r.report or "") for r in recs]
    w, c = clock.lap()
    print(f"\n## Extractor vs MeSH: {len(recs)} NLMCXR reports with text ({len(res.rejects)} without), "
          f"extraction {w:.2f}s wall ({len(recs) / w:,.0f} reports/s, cold cache)\n")
    print("Positive = the extractor states the finding (1); '+unc' also counts hedged mentions (-1). "
          "MeSH positive = a curated (major) MeSH term mapped in chexgen.data.sources.nlmcxr.MESH_TO_LABEL; "
          "No Finding = MeSH 'normal'.\n")
    print("| label | MeSH+ | extractor+ | agreement % | precision | recall | F1 | kappa | F1 +unc |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    f1s = []
    for name in LABELS:
        counts = []
        for hedged in (False, True):
            tp = fp = fn = tn = 0
            for r, e in zip(recs, extracted):
                m = r.labels.get(name) == 1
                p = e[name] == 1 or (hedged and e[name] == -1)
                tp += m and p
                fp += (not m) and p
                fn += m and not p
                tn += (not m) and not p
            counts.append((tp, fp, fn, tn))
        tp, fp, fn, tn = counts[0]
        prec = tp / (tp + fp) if tp + fp else float("nan")
        rec = tp / (tp + fn) if tp + fn else float("nan")
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        tpu, fpu, fnu, _ = counts[1]
        f1u = 2 * tpu / (2 * tpu + fpu + fnu) if tpu else 0.0
        f1s.append(f1)
        print(f"| {name} | {tp + fn} | {tp + fp} | {100 * (tp + tn) / len(recs):.1f} | {prec:.2f} | {rec:.2f} | "
              f"{f1:.2f} | {_kappa(tp, fp, fn, tn):.2f} | {f1u:.2f} |")
    print(f"\nmacro F1 over the 14 classes: {sum(f1s) / len(f1s):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", default="nih,chexpert,padchest", help="Comma-separated shipped sources.")
    ap.add_argument("--limit", type=int, default=None, help="Rows per source (default: all).")
    ap.add_argument("--format", choices=["jsonl", "parquet"], default="parquet", help="Manifest format.")
    ap.add_argument("--out-dir", default=None, help="Where to write the manifest (default: a temp folder).")
    ap.add_argument("--seed", type=int, default=0, help="Template wording seed.")
    ap.add_argument("--workers", type=int, default=1, help="Processes writing reports.")
    ap.add_argument("--skip-curation", action="store_true", help="Only run the extractor benchmark.")
    ap.add_argument("--skip-extractor", action="store_true", help="Only run the curation benchmark.")
    args = ap.parse_args()
    if not args.skip_curation:
        if args.out_dir:
            out = Path(args.out_dir)
            out.mkdir(parents=True, exist_ok=True)
            bench_curation(args.sources.split(","), args.limit, out, args.format, args.seed, args.workers)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                bench_curation(args.sources.split(","), args.limit, Path(tmp), args.format, args.seed,
                               args.workers)
    if not args.skip_extractor:
        bench_extractor(None)


if __name__ == "__main__":
    main()
