"""LLM report writer: the paper's two-pass recipe over an OpenAI-compatible API.

Pass 1 (generation) turns the structured metadata into a report with four
sections. Pass 2 (quality control) shows the model the metadata and its own
report and asks it to fix discrepancies, redundancy and missing findings; the
corrected report replaces the draft. The prompts below were written for
chexgen from the paper's description of OpenChest curation.

The rule-based check (:mod:`chexgen.curation.qc`) still decides whether a
report is kept: an LLM can be talked into anything, the extractor cannot.
A report that fails is requested again with another ``attempt`` number (part
of the request, so it is a new, separately cached answer) and the exact
disagreements as feedback.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from chexgen.curation.extractor import extract_labels
from chexgen.curation.llm_client import LLMClient
from chexgen.curation.qc import compare_labels
from chexgen.curation.report_writer import Report, ReportWriter, finding_details
from chexgen.data.labels import LABELS
from chexgen.data.manifest import Record
from chexgen.errors import ChexgenError

__all__ = ["LLMReportWriter", "metadata_block", "generation_messages", "qc_messages", "parse_report"]

_STATUS = {1: "present", 0: "absent", -1: "uncertain"}

GENERATION_SYSTEM = (
    "You are an experienced thoracic radiologist. Write a chest radiograph report from structured metadata. "
    "Use exactly four sections, each on its own line: 'PATIENT INFORMATION:', 'TECHNIQUE:', 'FINDINGS:', "
    "'IMPRESSION:'. Rules: state every finding marked present, with its side, zone and severity when given; "
    "phrase findings marked uncertain with hedging words (possible, cannot be excluded); you may state "
    "findings marked absent as pertinent negatives; never mention a finding that is not listed, neither as "
    "present nor as absent; do not invent measurements, comparisons, history or devices. If the metadata "
    "says the study has no finding, the impression says there is no acute cardiopulmonary abnormality. "
    "Keep the impression short: the key findings with side and severity. Plain text, no markdown."
)

QC_SYSTEM = (
    "You check chest radiograph reports against the structured metadata they were written from. "
    "Find discrepancies (a finding stated differently from the metadata, or a finding that is not in the "
    "metadata), redundancy, and missing findings (present or uncertain findings the report omits). "
    "Answer with one JSON object and nothing else: {\"consistent\": true|false, \"issues\": [\"...\"], "
    "\"corrected_report\": \"the full corrected report with the same four sections, or an empty string "
    "if the report is already correct\"}."
)


def metadata_block(record: Record) -> str:
    """The metadata as the model sees it: demographics, view, every known label, finding details."""
    lines = []
    if record.age is not None:
        lines.append(f"age: {record.age:g} years")
    if record.sex:
        lines.append(f"sex: {dict(M='male', F='female', O='other').get(record.sex, record.sex)}")
    if record.race:
        lines.append(f"race: {record.race}")
    lines.append(f"view: {record.view or 'not recorded'}")
    for name in LABELS:
        v = record.labels.get(name)
        if v is not None:
            lines.append(f"{name}: {_STATUS[v]}")
    for label, dets in finding_details(record).items():
        for d in dets:
            parts = [f"{k}={getattr(d, k)}" for k in ("side", "zone", "severity", "kind") if getattr(d, k)]
            if parts:
                lines.append(f"detail of {label}: {', '.join(parts)}")
    other = (record.extra or {}).get("other_findings") or []
    if other:
        lines.append("other findings (outside the list above): " + ", ".join(map(str, other)))
    return "\n".join(lines)


def generation_messages(record: Record, attempt: int = 0, feedback: list[str] | None = None
                        ) -> list[dict[str, str]]:
    user = "Metadata:\n" + metadata_block(record)
    if attempt:
        user += f"\n\n(attempt {attempt + 1})"
    if feedback:
        user += "\nThe previous report was wrong: " + "; ".join(feedback) + ". Fix exactly these points."
    return [{"role": "system", "content": GENERATION_SYSTEM}, {"role": "user", "content": user}]


def qc_messages(record: Record, report_text: str) -> list[dict[str, str]]:
    user = f"Metadata:\n{metadata_block(record)}\n\nReport:\n{report_text}"
    return [{"role": "system", "content": QC_SYSTEM}, {"role": "user", "content": user}]


_SECTION = re.compile(r"^\s*[#*]*\s*(PATIENT INFORMATION|TECHNIQUE|FINDINGS|IMPRESSION)\s*\**\s*:\s*\**\s*",
                      re.I | re.M)


def parse_report(text: str) -> dict[str, str]:
    """Split a model's answer into its sections (upper-case keys); missing sections are absent."""
    parts = list(_SECTION.finditer(text))
    out = {}
    for i, m in enumerate(parts):
        end = parts[i + 1].start() if i + 1 < len(parts) else len(text)
        out[m.group(1).upper()] = " ".join(text[m.end():end].split())
    return out


def _parse_json(text: str) -> dict[str, Any] | None:
    m = re.search(r"\{.*\}", text, re.S)
    if not m:
        return None
    try:
        obj = json.loads(m.group(0))
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


class LLMReportWriter(ReportWriter):
    """Reports from an LLM: generation, then (``fix_pass``) the LLM QC pass that corrects the draft.

    Args:
        client: an :class:`~chexgen.curation.llm_client.LLMClient`.
        temperature: sampling temperature of the generation pass (QC runs at 0).
        fix_pass: run the LLM QC pass and use its corrected report.
        attempt: retry number (set by :meth:`for_attempt`); part of the request and the cache key.
    """

    name = "llm"

    def __init__(self, client: LLMClient, temperature: float = 0.3, fix_pass: bool = True, attempt: int = 0,
                 _failures: dict[str, list[str]] | None = None):
        self.client = client
        self.temperature = temperature
        self.fix_pass = fix_pass
        self.attempt = attempt
        self._failures = {} if _failures is None else _failures  # shared by the attempt writers

    def for_attempt(self, attempt: int) -> "LLMReportWriter":
        return LLMReportWriter(self.client, self.temperature, self.fix_pass, attempt, self._failures)

    def note_failure(self, record: Record, discrepancies: list[str]) -> None:
        """Told by the pipeline what the last report got wrong; the next attempt's prompt says so."""
        self._failures[record.id] = discrepancies

    def _report_from(self, text: str, record: Record) -> Report:
        sections = parse_report(text)
        if "FINDINGS" not in sections and "IMPRESSION" not in sections:
            raise ChexgenError(f"record {record.id}: the model's answer has no FINDINGS or IMPRESSION section: "
                               f"{text[:120]!r}")
        findings = sections.get("FINDINGS", "")
        impression = sections.get("IMPRESSION", "")
        full = "\n".join(f"{k}: {sections[k]}" for k in ("PATIENT INFORMATION", "TECHNIQUE", "FINDINGS",
                                                          "IMPRESSION") if k in sections)
        return Report(findings=findings, impression=impression, text=full,
                      patient=sections.get("PATIENT INFORMATION", ""), technique=sections.get("TECHNIQUE", ""),
                      writer=self.name, meta={"model": self.client.model, "attempt": self.attempt})

    def _feedback(self, record: Record) -> list[str] | None:
        """For a retry: what the previous attempt's report got wrong (from the cache, so free)."""
        if self.attempt == 0:
            return None
        if record.id in self._failures:
            return self._failures.pop(record.id) or None
        prev = self.for_attempt(self.attempt - 1)
        try:
            text = prev.write(record).text
        except ChexgenError:
            return None
        return [str(d) for d in compare_labels(record.labels, extract_labels(text))] or None

    def write(self, record: Record) -> Report:
        seed = self.attempt
        draft = self.client.chat(generation_messages(record, self.attempt, self._feedback(record)),
                                 temperature=self.temperature, seed=seed)
        report = self._report_from(draft, record)
        if self.fix_pass:
            verdict = _parse_json(self.client.chat(qc_messages(record, report.text), temperature=0.0, seed=seed))
            fixed = (verdict or {}).get("corrected_report") or ""
            if isinstance(fixed, str) and fixed.strip():
                try:
                    report = self._report_from(fixed, record)
                    report.meta["llm_fixed"] = True
                except ChexgenError:
                    pass  # keep the draft; the rule check decides
        return report

    @property
    def batch_size(self) -> int:
        return max(1, 4 * self.client.workers)

    def write_batch(self, records: list[Record]) -> list[Report | ChexgenError]:
        """First-attempt reports for many records, ``client.workers`` requests in flight (errors returned)."""
        def safe(record: Record) -> Report | ChexgenError:
            try:
                return self.write(record)
            except ChexgenError as e:
                return e

        if self.client.workers <= 1 or len(records) <= 1:
            return [safe(r) for r in records]
        with ThreadPoolExecutor(max_workers=self.client.workers) as pool:
            return list(pool.map(safe, records))

    def write_many(self, records) -> list[Report]:
        out = []
        for r in self.write_batch(list(records)):
            if isinstance(r, ChexgenError):
                raise r
            out.append(r)
        return out

    def check(self, record: Record, report_text: str) -> dict[str, Any]:
        """The LLM QC verdict on a report: ``{"consistent": bool | None, "issues": [...]}``."""
        verdict = _parse_json(self.client.chat(qc_messages(record, report_text), temperature=0.0))
        if verdict is None:
            return {"consistent": None, "issues": ["unparseable QC answer"]}
        return {"consistent": verdict.get("consistent"), "issues": list(verdict.get("issues") or [])}
