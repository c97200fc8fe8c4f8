"""Write and check a report for every record: the heart of ``chexgen curate``.

For each record the writer produces a report, the rule-based QC reads it
back, and a report whose stated findings differ from the metadata is
rewritten with another wording seed (up to ``max_attempts`` times). A record
whose report still disagrees is *flagged*: left out of the manifest by default
and listed in the rejects with the exact disagreement. The QC outcome is stored
on every record (``extra["qc"]``) so later stages can audit it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from chexgen.curation.qc import QCResult, check_report
from chexgen.curation.report_writer import Report, ReportWriter
from chexgen.data.manifest import Record
from chexgen.data.sources._common import Reject
from chexgen.errors import ChexgenError

__all__ = ["CurationStats", "curate_records"]

log = logging.getLogger(__name__)


@dataclass
class CurationStats:
    """Counts of one curation run."""

    written: int = 0
    source_reports: int = 0
    source_reports_agreeing: int = 0
    passed_first: int = 0
    rewritten: int = 0
    flagged: int = 0
    writer_errors: int = 0
    failures_by_label: dict[str, int] = field(default_factory=dict)

    @property
    def agreement(self) -> float:
        """Share of records whose final report passed QC."""
        return (self.written - self.flagged) / self.written if self.written else 1.0


def curate_records(records: Iterable[Record], writer: ReportWriter, *, max_attempts: int = 3,
                   keep_failed: bool = False, rewrite_source_reports: bool = False,
                   llm_check: Callable[[Record, str], dict] | None = None, progress: bool = False,
                   total: int | None = None, workers: int = 1, row_offset: int = 0
                   ) -> tuple[list[Record], list[Reject], CurationStats]:
    """Attach a checked report to each record.

    Args:
        records: records with labels (and whatever demographics the source has).
        writer: a :class:`ReportWriter`.
        max_attempts: rewrites allowed for a report that fails QC.
        keep_failed: keep flagged records in the output (``extra.qc.passed`` is false) instead of rejecting them.
        rewrite_source_reports: write a new report even for records that come with a real one (MIMIC-CXR,
            NLMCXR). By default a real report is kept as it is: it is checked and the agreement stored, but it
            is never rejected (a labeler's disagreement with a radiologist is not the radiologist's error).
        llm_check: optional second opinion (the LLM QC pass); its verdict is stored, the rule check decides.
        progress: show a tqdm bar.
        workers: processes for writers that do not batch themselves (the template writer); each takes a
            contiguous slice, so the output order and every report are the same as with one process.
        row_offset: added to the positions reported in rejects (used by the worker processes).

    Returns:
        (curated records, rejects for flagged records or writer errors, counts).
    """
    options = dict(max_attempts=max_attempts, keep_failed=keep_failed, rewrite_source_reports=rewrite_source_reports)
    if workers > 1 and getattr(writer, "write_batch", None) is None and llm_check is None:
        records = list(records)
        if len(records) >= 4 * _MIN_SLICE:
            return _curate_parallel(records, writer, workers, options)
    stats = CurationStats()
    out: list[Record] = []
    rejects: list[Reject] = []
    writers = [writer.for_attempt(a) for a in range(max(1, max_attempts))]
    iterator: Iterable[Record] = records
    if progress:
        from tqdm import tqdm

        iterator = tqdm(records, total=total, desc="curate", unit="rec", mininterval=1.0)
    prefetched: dict[int, object] = {}
    batch = getattr(writer, "write_batch", None)
    if batch is not None:
        # Writers that batch (the LLM writer) get whole chunks for their first attempt.
        iterator = _prefetching(iterator, batch, prefetched, rewrite_source_reports, getattr(writer, "batch_size", 64))
    for position, record in enumerate(iterator, start=row_offset + 1):
        if record.report and not rewrite_source_reports:
            stats.source_reports += 1
            qc_src = check_report(record.labels, record.report)
            stats.source_reports_agreeing += qc_src.passed
            info = {"passed": qc_src.passed, "writer": "source"}
            if not qc_src.passed:
                info["discrepancies"] = [str(d) for d in qc_src.discrepancies]
            record.extra = {**record.extra, "qc": info}
            out.append(record)
            continue
        stats.written += 1
        qc: QCResult | None = None
        report = None
        attempt = 0
        try:
            for attempt, w in enumerate(writers):
                first = prefetched.pop(id(record), None) if attempt == 0 else None
                if isinstance(first, ChexgenError):
                    raise first
                report = first if isinstance(first, Report) else w.write(record)
                qc = check_report(record.labels, report.text)
                if qc.passed:
                    break
                if hasattr(w, "note_failure"):
                    w.note_failure(record, [str(d) for d in qc.discrepancies])
        except ChexgenError as e:
            stats.writer_errors += 1
            rejects.append(Reject(record.dataset or "?", "<writer>", position, str(e), record.id))
            continue
        assert report is not None and qc is not None
        if qc.passed:
            if attempt == 0:
                stats.passed_first += 1
            else:
                stats.rewritten += 1
        else:
            stats.flagged += 1
            for d in qc.discrepancies:
                stats.failures_by_label[d.label] = stats.failures_by_label.get(d.label, 0) + 1
        record.report = report.text
        record.impression = report.impression
        qc_info = {"passed": qc.passed, "writer": report.writer or writer.name, "attempts": attempt + 1}
        if not qc.passed:
            qc_info["discrepancies"] = [str(d) for d in qc.discrepancies]
        if llm_check is not None:
            qc_info["llm"] = llm_check(record, report.text)
        record.extra = {**record.extra, "qc": qc_info}
        if qc.passed or keep_failed:
            out.append(record)
        if not qc.passed:
            rejects.append(Reject(record.dataset or "?", "<qc>", position,
                                  "report disagrees with metadata: " + qc.summary(), record.id))
    return out, rejects, stats


def _prefetching(records: Iterable[Record], batch: Callable[[list[Record]], list], store: dict[int, object],
                 rewrite_source: bool, size: int) -> Iterator[Record]:
    """Yield records unchanged, filling ``store`` with first-attempt reports chunk by chunk."""
    chunk: list[Record] = []

    def flush() -> Iterator[Record]:
        todo = [r for r in chunk if rewrite_source or not r.report]  # real reports are not rewritten
        for r, result in zip(todo, batch(todo) if todo else []):
            store[id(r)] = result
        yield from chunk
        chunk.clear()

    for record in records:
        chunk.append(record)
        if len(chunk) >= size:
            yield from flush()
    yield from flush()


# -- several processes ------------------------------------------------------------------------
_MIN_SLICE = 2000
_JOB: tuple | None = None  # (records, writer, options), inherited by forked workers


def _curate_slice(bounds: tuple[int, int]) -> tuple[list[tuple], list[Reject], CurationStats]:
    records, writer, options = _JOB  # type: ignore[misc]
    start, end = bounds
    part = records[start:end]
    _, rejects, stats = curate_records(part, writer, row_offset=start, **options)
    results = [(start + k, r.report, r.impression, r.extra["qc"]) for k, r in enumerate(part) if "qc" in r.extra]
    return results, rejects, stats


def _curate_parallel(records: list[Record], writer: ReportWriter, workers: int, options: dict
                     ) -> tuple[list[Record], list[Reject], CurationStats]:
    import multiprocessing as mp

    global _JOB
    n = len(records)
    step = max(_MIN_SLICE, -(-n // (workers * 4)))
    bounds = [(a, min(n, a + step)) for a in range(0, n, step)]
    _JOB = (records, writer, options)
    try:
        with mp.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_curate_slice, bounds, chunksize=1)
    finally:
        _JOB = None
    stats = CurationStats()
    rejects: list[Reject] = []
    kept = [False] * n
    for results, part_rejects, part_stats in parts:
        rejects.extend(part_rejects)
        for name in ("written", "source_reports", "source_reports_agreeing", "passed_first", "rewritten",
                     "flagged", "writer_errors"):
            setattr(stats, name, getattr(stats, name) + getattr(part_stats, name))
        for label, count in part_stats.failures_by_label.items():
            stats.failures_by_label[label] = stats.failures_by_label.get(label, 0) + count
        for i, report, impression, qc in results:
            rec = records[i]
            rec.report, rec.impression = report, impression
            rec.extra = {**rec.extra, "qc": qc}
            kept[i] = qc["passed"] or qc.get("writer") == "source" or options["keep_failed"]
    return [r for r, k in zip(records, kept) if k], rejects, stats
