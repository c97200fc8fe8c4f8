"""``chexgen curate``: public dataset metadata -> one OpenChest-style manifest with checked reports."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from chexgen.commands._types import nonneg_int, positive_float, positive_int
from chexgen.errors import ChexgenError

log = logging.getLogger("chexgen.curate")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", action="append", default=[], metavar="NAME[=PATH]",
                   help="A dataset to read, repeatable. NAME alone reads the metadata torchxrayvision ships "
                        "(nih, chexpert, padchest, vindr_cxr, siim, nlmcxr); NAME=PATH reads a local copy "
                        "(file or folder). See --list-sources.")
    p.add_argument("--list-sources", action="store_true", help="List the known sources and exit.")
    p.add_argument("--out", default="openchest.jsonl",
                   help="Output manifest (.jsonl, or .parquet for large sets).")
    p.add_argument("--rejects", default=None,
                   help="Rejected rows (JSONL: source, file, row, id, reason); default <out stem>.rejects.jsonl.")
    p.add_argument("--stats-dir", default=None, help="Statistics folder; default <out stem>_stats.")
    p.add_argument("--no-plots", action="store_true", help="Write the statistics tables but no PNG plots.")
    p.add_argument("--writer", choices=["template", "llm"], default="template",
                   help="Report writer: deterministic templates, or an LLM over an OpenAI-compatible API.")
    p.add_argument("--seed", type=nonneg_int, default=0, help="Wording seed of the template writer.")
    p.add_argument("--max-attempts", type=positive_int, default=3,
                   help="Rewrites allowed for a report that fails the label check.")
    p.add_argument("--keep-failed", action="store_true",
                   help="Keep records whose report still fails QC (flagged in extra.qc) instead of rejecting them.")
    p.add_argument("--rewrite-source-reports", action="store_true",
                   help="Also write new reports for records that come with a real one (MIMIC-CXR, NLMCXR); "
                        "by default real reports are kept and only checked.")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="Processes writing template reports (same output as one process).")
    p.add_argument("--limit", type=nonneg_int, default=None, help="Read only the first N rows of each source.")
    p.add_argument("--image-root", action="append", default=[], metavar="NAME=DIR",
                   help="Folder holding a source's images; stored image paths are placed under it.")
    p.add_argument("--check-images", action="store_true",
                   help="Reject rows whose image file is missing under its --image-root.")
    p.add_argument("--mimic-iv", default=None,
                   help="MIMIC-IV folder (hosp/patients.csv, hosp/admissions.csv) for sex, age and race of MIMIC-CXR.")
    p.add_argument("--mimic-labels", choices=["chexpert", "negbio"], default="chexpert",
                   help="Which MIMIC-CXR label file to use.")
    p.add_argument("--tokenizer", default="minilm",
                   help="Tokenizer for report-length statistics and --select: 'minilm' (shipped), a hub id or "
                        "folder (e.g. a T5 v1.1 XXL folder), or 'none'.")
    p.add_argument("--token-sample", type=nonneg_int, default=20000,
                   help="Reports sampled for token-length statistics.")
    p.add_argument("--select", choices=["stage1", "stage2-train", "stage2-test"], default=None,
                   help="Keep only the paper's split (counts printed per filter step).")
    p.add_argument("--llm-base-url", default=None,
                   help="OpenAI-compatible base URL (default $CHEXGEN_LLM_BASE_URL or $OPENAI_BASE_URL).")
    p.add_argument("--llm-model", default=None, help="Model name (default $CHEXGEN_LLM_MODEL).")
    p.add_argument("--llm-cache", default=None,
                   help="On-disk cache folder for LLM answers (default <out stem>_llm_cache); reruns never pay twice.")
    p.add_argument("--llm-qc", action="store_true", help="Also run the LLM quality-control pass (stored per record).")
    p.add_argument("--llm-rate", type=positive_float, default=5.0, help="Maximum LLM requests per second.")


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        if "=" not in v:
            raise ChexgenError(f"{what} {v!r}: expected NAME=DIR")
        k, d = v.split("=", 1)
        out[k.strip().lower()] = d
    return out


def _writer(args: argparse.Namespace, out: Path):
    from chexgen.curation.report_writer import TemplateReportWriter

    if args.writer == "template":
        return TemplateReportWriter(seed=args.seed), None
    from chexgen.curation.llm_writer import LLMClient, LLMReportWriter

    client = LLMClient.from_env(base_url=args.llm_base_url, model=args.llm_model,
                                cache_dir=args.llm_cache or str(out.with_suffix("")) + "_llm_cache",
                                rate_per_s=args.llm_rate)
    writer = LLMReportWriter(client)
    return writer, (writer.check if args.llm_qc else None)


def run(args: argparse.Namespace) -> int:
    from chexgen.curation.pipeline import curate_records
    from chexgen.curation.output import write_curated_manifest, write_rejects
    from chexgen.data.sources.registry import get_source, list_sources, load_source

    if args.list_sources:
        for spec in list_sources():
            tags = ", ".join(t for t, on in (("shipped", spec.shipped), ("OpenChest", spec.openchest)) if on)
            print(f"{spec.name:12s} {spec.description}" + (f"  [{tags}]" if tags else ""))
        return 0
    if not args.source:
        raise ChexgenError("give at least one --source (see --list-sources)")
    out = Path(args.out)
    rejects_path = Path(args.rejects) if args.rejects else out.with_name(out.name.split(".")[0] + ".rejects.jsonl")
    stats_dir = Path(args.stats_dir) if args.stats_dir else out.with_name(out.name.split(".")[0] + "_stats")
    image_roots = _pairs(args.image_root, "--image-root")
    writer, llm_check = _writer(args, out)

    records, rejects = [], []
    t0 = time.time()
    for item in args.source:
        name, _, path = item.partition("=")
        spec = get_source(name)
        result = load_source(spec.name, path or None, limit=args.limit, image_root=image_roots.get(spec.name),
                             check_images=args.check_images, mimic_iv=args.mimic_iv, labels=args.mimic_labels)
        print(f"{spec.name}: {len(result.records)} records, {len(result.rejects)} rejected rows "
              f"({', '.join(result.files)})")
        records.extend(result.records)
        rejects.extend(result.rejects)
    t_read = time.time() - t0
    ids = set()
    unique = []
    for r in records:
        if r.id in ids:
            from chexgen.data.sources._common import Reject

            rejects.append(Reject(r.dataset or "?", "<merge>", 0, "duplicate record id", r.id))
            continue
        ids.add(r.id)
        unique.append(r)
    curated, qc_rejects, stats = curate_records(unique, writer, max_attempts=args.max_attempts,
                                                keep_failed=args.keep_failed, llm_check=llm_check,
                                                rewrite_source_reports=args.rewrite_source_reports,
                                                workers=args.workers,
                                                progress=len(unique) > 20000, total=len(unique))
    rejects.extend(qc_rejects)
    t_write = time.time() - t0 - t_read
    print(f"reports: {stats.written} written, {stats.passed_first} passed QC first time, {stats.rewritten} "
          f"rewritten, {stats.flagged} flagged, {stats.writer_errors} writer errors "
          f"(agreement {100 * stats.agreement:.2f}%)")
    if stats.source_reports:
        print(f"source reports kept: {stats.source_reports} ({stats.source_reports_agreeing} agree with the labels "
              f"under the rule check)")

    count_tokens = None
    if args.tokenizer.lower() != "none":
        from chexgen.curation.selections import load_token_counter

        count_tokens = load_token_counter(None if args.tokenizer.lower() == "minilm" else args.tokenizer)
    if args.select:
        from chexgen.curation.selections import format_steps, paper_selection

        if count_tokens is None:
            raise ChexgenError("--select needs a tokenizer (not --tokenizer none)")
        curated, steps = paper_selection(curated, args.select, count_tokens)
        print(format_steps(steps))

    n = write_curated_manifest(out, curated)
    write_rejects(rejects_path, rejects)
    from chexgen.curation.statistics import compute_stats, write_stats

    st = compute_stats(curated, count_tokens, token_sample=args.token_sample, seed=args.seed)
    files = write_stats(st, stats_dir, plots=not args.no_plots)
    print(f"wrote {n} records to {out}, {len(rejects)} rejects to {rejects_path}, statistics to {stats_dir} "
          f"({len(files)} files); read {t_read:.1f}s, reports {t_write:.1f}s, total {time.time() - t0:.1f}s")
    return 1 if rejects else 0
