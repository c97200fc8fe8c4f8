"""Quality control: does a report state exactly what the metadata holds?

The paper lets a second LLM pass check each report. chexgen reads every
report back with the rule-based extractor and compares label by label, so the
check is exact, reproducible and cheap; with the LLM writer the LLM check runs
too, but this one decides.

Agreement rules per label (metadata value -> what the report may state):

* ``1`` (present)   -> must be stated positive;
* ``-1`` (uncertain) -> must be stated hedged;
* ``0`` (absent)    -> stated negative, or not mentioned (radiologists list
  pertinent negatives only);
* ``None`` (unknown) -> must not be mentioned at all: stating "no effusion"
  when the source never looked is a finding the metadata does not hold.

"No Finding" is derived from the rest: metadata 1 requires the report to read
as normal, and a report that reads as normal requires metadata 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from chexgen.curation.extractor import extract_labels
from chexgen.data.labels import LABELS

__all__ = ["Discrepancy", "QCResult", "compare_labels", "check_report"]

_NAMES = {1: "present", 0: "absent", -1: "uncertain", None: "not stated"}


@dataclass(frozen=True)
class Discrepancy:
    label: str
    expected: int | None
    stated: int | None

    def __str__(self) -> str:
        return f"{self.label}: metadata {_NAMES[self.expected]}, report {_NAMES[self.stated]}"


@dataclass
class QCResult:
    """The outcome of checking one report; ``extracted`` is what the report states."""

    passed: bool
    discrepancies: list[Discrepancy] = field(default_factory=list)
    extracted: dict[str, int | None] = field(default_factory=dict)

    def summary(self) -> str:
        return "ok" if self.passed else "; ".join(str(d) for d in self.discrepancies)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "discrepancies": [str(d) for d in self.discrepancies]}


def compare_labels(expected: Mapping[str, int | None], stated: Mapping[str, int | None]) -> list[Discrepancy]:
    """Label-by-label disagreements between metadata ``expected`` and report ``stated`` (rules above)."""
    out = []
    for name in LABELS:
        e, s = expected.get(name), stated.get(name)
        if name == "No Finding":
            ok = (e == 1) == (s == 1)
        elif e in (1, -1):
            ok = s == e
        elif e == 0:
            ok = s in (0, None)
        else:
            ok = s is None
        if not ok:
            out.append(Discrepancy(name, e, s))
    return out


def check_report(expected: Mapping[str, int | None], text: str) -> QCResult:
    """Extract labels from ``text`` and compare them with ``expected``."""
    stated = extract_labels(text)
    diffs = compare_labels(expected, stated)
    return QCResult(passed=not diffs, discrepancies=diffs, extracted=stated)
