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
                   keep_failed: bool = False, rewrite_source_reports: bool = False, llm_check: Callable[[Record, str], dict] | None = None,
                   progress: bool = False, total: int | None = None
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

    Returns:
        (curated records, rejects for flagged records or writer errors, counts).
    """
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
    for record in iterator:
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
            rejects.append(Reject(record.dataset or "?", "<writer>", stats.written, str(e), record.id))
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
            rejects.append(Reject(record.dataset or "?", "<qc>", stats.written,
                                  "report disagrees with metadata: " + qc.summary(), record.id))
    return out, rejects, stats


def _prefetching(records: Iterable[Record], batch: Callable[[list[Record]], list], store: dict[int, object],
                 keep_source: bool, size: int) -> Iterator[Record]:
    """Yield records unchanged, filling ``store`` with first-attempt reports chunk by chunk."""
    chunk: list[Record] = []

    def flush() -> Iterator[Record]:
        todo = [r for r in chunk if not (r.report and not keep_source)]
        for r, result in zip(todo, batch(todo) if todo else []):
            store[id(r)] = result
        yield from chunk
        chunk.clear()

    for record in records:
        chunk.append(record)
        if len(chunk) >= size:
            yield from flush()
    yield from flush()
