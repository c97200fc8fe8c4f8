"""``chexgen curate``: public dataset metadata -> one OpenChest-style manifest with checked reports."""

from __future__ import annotations

import argparse

from chexgen.commands._types import nonneg_int, positive_float, positive_int


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


def run(args: argparse.Namespace) -> int:
    from chexgen.curation.run import CurateOptions, parse_pairs, run_curation

    if args.list_sources:
        from chexgen.data.sources.registry import list_sources

        for spec in list_sources():
            tags = ", ".join(t for t, on in (("shipped", spec.shipped), ("OpenChest", spec.openchest)) if on)
            print(f"{spec.name:12s} {spec.description}" + (f"  [{tags}]" if tags else ""))
        return 0

    def on_source(s) -> None:
        print(f"{s.name}: {s.records} records, {s.rejects} rejected rows ({', '.join(s.files)})")

    result = run_curation(CurateOptions(
        sources=args.source, out=args.out, rejects=args.rejects, stats_dir=args.stats_dir, plots=not args.no_plots,
        writer=args.writer, seed=args.seed, max_attempts=args.max_attempts, keep_failed=args.keep_failed,
        rewrite_source_reports=args.rewrite_source_reports, workers=args.workers, limit=args.limit,
        image_roots=parse_pairs(args.image_root, "--image-root"), check_images=args.check_images,
        mimic_iv=args.mimic_iv, mimic_labels=args.mimic_labels, tokenizer=args.tokenizer,
        token_sample=args.token_sample, select=args.select, llm_base_url=args.llm_base_url,
        llm_model=args.llm_model, llm_cache=args.llm_cache, llm_qc=args.llm_qc, llm_rate=args.llm_rate,
    ), on_source=on_source)
    st = result.stats
    print(f"reports: {st.written} written, {st.passed_first} passed QC first time, {st.rewritten} "
          f"rewritten, {st.flagged} flagged, {st.writer_errors} writer errors "
          f"(agreement {100 * st.agreement:.2f}%)")
    if st.source_reports:
        print(f"source reports kept: {st.source_reports} ({st.source_reports_agreeing} agree with the labels "
              f"under the rule check)")
    if result.selection_steps:
        print(result.selection_steps)
    print(f"rejected: {result.rejects} rows (listed in {result.rejects_path})" if result.rejects
          else "rejected: no rows")
    print(f"wrote {result.written} records to {result.out}, {result.rejects} rejects to {result.rejects_path}, "
          f"statistics to {result.stats_dir} ({result.stats_files} files); read {result.seconds_read:.1f}s, "
          f"reports {result.seconds_reports:.1f}s, total {result.seconds_total:.1f}s")
    return result.exit_code
