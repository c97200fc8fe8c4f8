"""``chexgen curate`` as one library call: read sources, merge, write checked reports, select, write out.

:func:`run_curation` reads every ``--source`` through its adapter, merges them
(a record id seen twice is a reject, the first one wins), attaches a checked
report to each record (:func:`chexgen.curation.pipeline.curate_records`),
applies an optional paper selection, and writes the manifest, the rejects and
the statistics. Bad rows of any source are rejects; a source that cannot be read
at all stops the run with a :class:`~chexgen.errors.ChexgenError` before
anything is written.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from chexgen.data.rejects import EXIT_OK, EXIT_REJECTED, RejectLog, rejects_path_for
from chexgen.errors import ChexgenError
from chexgen.utils import clean_stale_temp_files

__all__ = ["CurateOptions", "SourceSummary", "CurateResult", "run_curation", "merge_sources", "parse_pairs"]

log = logging.getLogger(__name__)


@dataclass
class CurateOptions:
    """Everything ``chexgen curate`` takes (see its ``--help`` for each option)."""

    sources: list[str]  # NAME or NAME=PATH
    out: str = "openchest.jsonl"
    rejects: str | None = None  # default <out stem>.rejects.jsonl
    stats_dir: str | None = None  # default <out stem>_stats
    plots: bool = True
    writer: str = "template"
    seed: int = 0
    max_attempts: int = 3
    keep_failed: bool = False
    rewrite_source_reports: bool = False
    workers: int = 1
    limit: int | None = None
    image_roots: dict[str, str] = field(default_factory=dict)
    check_images: bool = False
    mimic_iv: str | None = None
    mimic_labels: str = "chexpert"
    tokenizer: str = "minilm"
    token_sample: int = 20000
    select: str | None = None
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_cache: str | None = None
    llm_qc: bool = False
    llm_rate: float = 5.0


@dataclass
class SourceSummary:
    """What one source adapter read."""

    name: str
    records: int
    rejects: int
    files: list[str]


@dataclass
class CurateResult:
    """What :func:`run_curation` wrote."""

    out: Path
    rejects_path: Path
    stats_dir: Path
    written: int
    rejects: int
    sources: list[SourceSummary]
    stats: object  # CurationStats
    selection_steps: str | None
    stats_files: int
    seconds_read: float
    seconds_reports: float
    seconds_total: float

    @property
    def exit_code(self) -> int:
        """1 when any row was rejected, else 0."""
        return EXIT_REJECTED if self.rejects else EXIT_OK


def parse_pairs(values: list[str], what: str) -> dict[str, str]:
    """``["nih=/data/nih", ...]`` -> ``{"nih": "/data/nih"}`` (names lower-cased)."""
    out = {}
    for v in values:
        if "=" not in v:
            raise ChexgenError(f"{what} {v!r}: expected NAME=DIR")
        k, d = v.split("=", 1)
        out[k.strip().lower()] = d
    return out


def merge_sources(results, rejects: RejectLog) -> list:
    """Records of every source in order; a record id already seen is a reject (the first one is kept)."""
    seen: dict[str, str] = {}
    unique = []
    for result in results:
        for r in result.records:
            if r.id in seen:
                rejects.add("<merge>", None, f"duplicate record id (first read from {seen[r.id]})", id=r.id,
                            source=r.dataset or result.source)
                continue
            seen[r.id] = result.source
            unique.append(r)
    return unique


def _writer(opts: CurateOptions, out: Path):
    from chexgen.curation.report_writer import TemplateReportWriter

    if opts.writer == "template":
        return TemplateReportWriter(seed=opts.seed), None
    if opts.writer != "llm":
        raise ChexgenError(f"--writer {opts.writer!r}: expected template or llm")
    from chexgen.curation.llm_writer import LLMClient, LLMReportWriter

    client = LLMClient.from_env(base_url=opts.llm_base_url, model=opts.llm_model,
                                cache_dir=opts.llm_cache or str(out.with_suffix("")) + "_llm_cache",
                                rate_per_s=opts.llm_rate)
    writer = LLMReportWriter(client)
    return writer, (writer.check if opts.llm_qc else None)


def run_curation(opts: CurateOptions, on_source: Callable[[SourceSummary], None] | None = None) -> CurateResult:
    """Curate ``opts.sources`` into ``opts.out`` (+ rejects and statistics); see the module docstring.

    ``on_source`` is called after each source is read (the CLI prints a line).
    """
    from chexgen.curation.output import write_curated_manifest
    from chexgen.curation.pipeline import curate_records
    from chexgen.curation.statistics import compute_stats, write_stats
    from chexgen.data.sources.registry import get_source, load_source

    if not opts.sources:
        raise ChexgenError("give at least one --source (see --list-sources)")
    out = Path(opts.out)
    if out.is_dir():
        raise ChexgenError(f"--out {out}: is a folder; expected a manifest file (.jsonl or .parquet)")
    rejects_path = Path(opts.rejects) if opts.rejects else rejects_path_for(out)
    stats_dir = Path(opts.stats_dir) if opts.stats_dir else out.with_name(out.name.split(".")[0] + "_stats")
    # a run killed while writing leaves hidden temp files beside its outputs; this run owns them
    for target in (out, rejects_path, stats_dir / "stats.md", stats_dir / "stats.csv"):
        for stale in clean_stale_temp_files(target):
            log.info("removed %s (left by an interrupted run)", stale)
    writer, llm_check = _writer(opts, out)
    roots = {k.lower(): v for k, v in opts.image_roots.items()}

    rejects = RejectLog()
    results, summaries = [], []
    t0 = time.time()
    for item in opts.sources:
        name, _, path = item.partition("=")
        spec = get_source(name)
        result = load_source(spec.name, path or None, limit=opts.limit, image_root=roots.get(spec.name),
                             check_images=opts.check_images, mimic_iv=opts.mimic_iv, labels=opts.mimic_labels)
        summary = SourceSummary(spec.name, len(result.records), len(result.rejects), list(result.files))
        summaries.append(summary)
        if on_source is not None:
            on_source(summary)
        rejects.extend(result.rejects)
        results.append(result)
    t_read = time.time() - t0
    unique = merge_sources(results, rejects)
    curated, qc_rejects, stats = curate_records(unique, writer, max_attempts=opts.max_attempts,
                                                keep_failed=opts.keep_failed, llm_check=llm_check,
                                                rewrite_source_reports=opts.rewrite_source_reports,
                                                workers=opts.workers, progress=len(unique) > 20000,
                                                total=len(unique))
    rejects.extend(qc_rejects)
    t_reports = time.time() - t0 - t_read

    count_tokens = None
    if opts.tokenizer.lower() != "none":
        from chexgen.curation.selections import load_token_counter

        count_tokens = load_token_counter(None if opts.tokenizer.lower() == "minilm" else opts.tokenizer)
    steps_text = None
    if opts.select:
        from chexgen.curation.selections import format_steps, paper_selection

        if count_tokens is None:
            raise ChexgenError("--select needs a tokenizer (not --tokenizer none)")
        curated, steps = paper_selection(curated, opts.select, count_tokens)
        steps_text = format_steps(steps)

    n = write_curated_manifest(out, curated)
    rejects.write(rejects_path)
    st = compute_stats(curated, count_tokens, token_sample=opts.token_sample, seed=opts.seed)
    files = write_stats(st, stats_dir, plots=opts.plots)
    return CurateResult(out=out, rejects_path=rejects_path, stats_dir=stats_dir, written=n, rejects=len(rejects),
                        sources=summaries, stats=stats, selection_steps=steps_text, stats_files=len(files),
                        seconds_read=t_read, seconds_reports=t_reports, seconds_total=time.time() - t0)
