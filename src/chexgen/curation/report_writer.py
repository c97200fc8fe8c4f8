"""Metadata -> radiology report writers.

The OpenChest recipe turns structured metadata (age, sex, race, view, 14
labels) into a full report (patient information, technique, findings,
impression). Two writers share one interface, :class:`ReportWriter`:

* :class:`TemplateReportWriter` (here): deterministic, fast (tens of
  microseconds a record, so a million rows curate in minutes) and safe by
  construction: it only ever phrases what the metadata holds. Positives (1)
  and uncertain labels (-1) are stated, the latter hedged; pertinent negatives
  are stated only for labels the source explicitly marks absent (0); a label
  the source says nothing about (``None``) is never mentioned. Wording varies
  with a seeded RNG keyed on ``(seed, record.id)``, so the same record always
  reads the same and different records read differently.
* ``chexgen.curation.llm_writer.LLMReportWriter``: an LLM over an
  OpenAI-compatible HTTP API.

Optional precision comes from ``record.extra["findings"]``: a list of dicts
``{"label", "side", "severity", "zone", "kind"}`` (a :class:`chexgen.data.vocabulary.Finding`)
that lets the writer say "Moderate right pleural effusion." instead of
"Pleural effusion.". ``record.extra["other_findings"]`` (a list of short
names such as ``"emphysema"``) carries source findings outside the 14-label
space; they are phrased but not part of the label check.

The impression is short on purpose: it becomes the text prompt of the
diffusion model, so it keeps the finding words with their side and severity.
The phrasing is kept in step with :mod:`chexgen.curation.extractor`, which
reads every report back into labels for quality control.
"""

from __future__ import annotations

import random
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable, Sequence

from chexgen.curation import _phrases as P
from chexgen.curation.extractor import extract_labels
from chexgen.data.labels import LABELS
from chexgen.data.manifest import Record
from chexgen.data.vocabulary import Finding
from chexgen.errors import ChexgenError

__all__ = [
    "Report",
    "ReportWriter",
    "TemplateReportWriter",
    "finding_details",
]

@dataclass
class Report:
    """A written report. ``text`` is the full report; the other fields are its sections."""

    findings: str
    impression: str
    text: str
    patient: str = ""
    technique: str = ""
    writer: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class ReportWriter(ABC):
    """Anything that turns a :class:`Record` into a :class:`Report`."""

    name: str = "writer"

    @abstractmethod
    def write(self, record: Record) -> Report:
        """Write one report. Must never state a finding that ``record`` does not hold."""

    def write_many(self, records: Iterable[Record]) -> list[Report]:
        """Write several reports (writers that batch, such as the LLM one, override this)."""
        return [self.write(r) for r in records]

    def for_attempt(self, attempt: int) -> "ReportWriter":
        """The writer to use for rewrite number ``attempt`` after a failed check (0 = first try)."""
        return self


def finding_details(record: Record) -> dict[str, list[Finding]]:
    """Parse ``record.extra["findings"]`` into details per label (labels not held by the record are dropped)."""
    raw = (record.extra or {}).get("findings") or []
    if not isinstance(raw, list):
        raise ChexgenError(f"record {record.id}: extra.findings must be a list, got {type(raw).__name__}")
    out: dict[str, list[Finding]] = {}
    for i, d in enumerate(raw):
        det = Finding.from_dict(d, where=f"record {record.id}: extra.findings[{i}]")
        if record.labels.get(det.label) in (1, -1):  # never phrase what the labels do not hold
            out.setdefault(det.label, []).append(det)
    return out


@lru_cache(maxsize=4096)
def _phrase_statements(phrase: str) -> tuple[tuple[str, int], ...]:
    return tuple((n, v) for n, v in extract_labels(phrase).items() if v is not None and n != "No Finding")


def _phrase_agrees(phrase: str, labels: dict[str, int | None]) -> bool:
    """Whether a free phrase (an outside-the-14 finding) states nothing the 14 labels contradict."""
    for name, stated in _phrase_statements(phrase):
        held = labels.get(name)
        if not (stated == held or (stated == 0 and held == 0)):
            return False
    return True


def _pick(rng: random.Random, options: Sequence[str]) -> str:
    return options[rng.randrange(len(options))] if len(options) > 1 else options[0]


_ARTICLE = re.compile(r"\b([Aa]) (?=[aeiou])")


def _tidy(sentence: str) -> str:
    s = " ".join(sentence.split())
    s = s.replace(" .", ".").replace(" ,", ",")
    s = _ARTICLE.sub(lambda m: m.group(1) + "n ", s)  # "a area" -> "an area" once a severity word is absent
    return s[:1].upper() + s[1:] if s else s


def _join_or(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " or " + items[-1]


def _loc_words(det: Finding | None) -> tuple[str, str, str, str]:
    """(loc_adj, loc, side_adj, side_loc) for a detail, all "" when unknown."""
    if det is None:
        return "", "", "", ""
    side, zone = det.side, det.zone
    zone_w = P.ZONE_WORDS.get(zone or "", "")
    if side == "bilateral":
        side_adj, side_loc = "bilateral", " bilaterally"
        loc_adj = f"bilateral {zone_w}".strip()
        loc = f" in both {zone_w}s" if zone_w else " bilaterally"
    elif side in ("left", "right"):
        side_adj, side_loc = side, f" on the {side}"
        loc_adj = f"{side} {zone_w}" if zone_w else f"{side} lung"
        loc = f" in the {side} {zone_w}" if zone_w else f" in the {side} lung"
    else:
        side_adj = side_loc = ""
        loc_adj = zone_w
        loc = f" in the {zone_w}s" if zone_w else ""
    return loc_adj, loc, side_adj, side_loc


def _kind_word(label: str, det: Finding | None) -> str:
    kind = (det.kind if det else None) or ""
    if label == "Lung Lesion":
        return {"mass": "mass", "nodule": "nodule", "nodules": "nodules"}.get(kind, "nodule")
    if label == "Fracture":
        return "rib fracture" if kind in ("rib", "rib_fracture") else "fracture"
    return kind.replace("_", " ")


@lru_cache(maxsize=65536)
def _fill(template: str, label: str, det: Finding | None) -> str:
    sev = ""
    if det is not None and det.severity:
        sev = P.SEV_WORDS.get(label, P.SEV_WORDS["default"])[det.severity]
    loc_adj, loc, side_adj, side_loc = _loc_words(det)
    side_sided = f"{side_adj}-sided" if side_adj in ("left", "right") else side_adj
    sev_adv = {"": "", "mild": "mildly", "moderate": "moderately", "marked": "markedly"}.get(sev, sev)
    return _tidy(template.format(sev=sev, sev_adv=sev_adv, loc_adj=loc_adj, loc=loc, side_adj=side_adj, side_sided=side_sided,
                                 side_loc=side_loc, kind=_kind_word(label, det)))


class TemplateReportWriter(ReportWriter):
    """Deterministic, seeded, clinically phrased reports from structured metadata.

    Args:
        seed: varies the wording; the same ``(seed, record.id)`` always gives the same report.
        negative_rate: scales how often optional pertinent negatives are stated (0 = core ones only).
    """

    name = "template"

    def __init__(self, seed: int = 0, negative_rate: float = 1.0):
        self.seed = int(seed)
        self.negative_rate = float(negative_rate)

    def for_attempt(self, attempt: int) -> "TemplateReportWriter":
        """Another wording seed for a rewrite."""
        if attempt == 0:
            return self
        return TemplateReportWriter(seed=self.seed + 7919 * attempt, negative_rate=self.negative_rate)

    # -- sections ------------------------------------------------------------
    def _patient(self, record: Record, rng: random.Random) -> str:
        sex = {"M": "male", "F": "female"}.get(record.sex or "", "")
        age = None
        if record.age is not None:
            age = f"{int(record.age)}-year-old" if record.age >= 1 else f"{max(1, round(record.age * 12))}-month-old"
        parts: list[str]
        if age and sex:
            parts = [_pick(rng, (f"{age} {sex}", f"{sex.capitalize()}, {age.replace('-year-old', ' years')}".replace(
                "-month-old", " months")))]
        elif age:
            parts = [f"{age} patient"]
        elif sex:
            parts = [f"{sex.capitalize()} patient, age not recorded"]
        else:
            parts = ["Age and sex not recorded"]
        if record.race:
            parts.append(f"race: {record.race}")
        return _tidy("; ".join(parts) + ".")

    def _technique(self, record: Record, rng: random.Random) -> str:
        options = {
            "PA": ("Single PA view of the chest.", "Frontal (posteroanterior) radiograph of the chest.",
                   "PA chest radiograph."),
            "AP": ("Single AP view of the chest.", "Frontal (anteroposterior) radiograph of the chest.",
                   "AP chest radiograph."),
            "LAT": ("Single lateral view of the chest.", "Lateral radiograph of the chest."),
            "LL": ("Left lateral view of the chest.", "Left lateral radiograph of the chest."),
        }.get(record.view or "", ("Single view of the chest.", "Chest radiograph."))
        return _pick(rng, options)

    # -- findings --------------------------------------------------------------
    def _positive_sentences(self, label: str, value: int, dets: list[Finding],
                            rng: random.Random) -> list[str]:
        if label == "Support Devices":
            if value == -1:
                return [_pick(rng, P.UNCERTAIN[label])]
            kinds = dets or [None]
            out = []
            for det in kinds:
                opts = P.DEVICES.get(det.kind if det else None, P.DEVICES[None])
                out.append(_fill(_pick(rng, opts), label, det))
            return list(dict.fromkeys(out))
        out = []
        for det in (dets or [None]):
            if value == -1:
                opts = P.UNCERTAIN[label]
            elif det is not None and det.side == "bilateral" and label in P.BILATERAL:
                opts = P.BILATERAL[label]
            elif det is not None and label == "Pleural Other" and det.kind == "apical_cap":
                opts = P.APICAL_CAP
            else:
                opts = P.POSITIVE[label]
            out.append(_fill(_pick(rng, opts), label, det))
        return list(dict.fromkeys(out))

    def _impression_sentences(self, label: str, value: int, dets: list[Finding],
                              rng: random.Random) -> list[str]:
        """Compact wording for the impression: finding word, side and severity, nothing else."""
        if label == "Support Devices":
            if value == -1:
                return [P.UNCERTAIN[label][0]]
            return list(dict.fromkeys(
                _fill(P.DEVICES.get(d.kind if d else None, P.DEVICES[None])[0], label, d) for d in (dets or [None])))
        out = []
        for det in (dets or [None]):
            if value == -1:
                template = P.UNCERTAIN[label][0]
            elif det is not None and det.side == "bilateral" and label in P.BILATERAL:
                template = P.BILATERAL[label][0]
            elif det is not None and label == "Pleural Other" and det.kind == "apical_cap":
                template = P.APICAL_CAP[0]
            else:
                template = P.POSITIVE[label][0]
            out.append(_fill(template, label, det))
        return list(dict.fromkeys(out))

    def _negatives(self, labels: dict[str, int | None], rng: random.Random,
                   group: Sequence[str]) -> list[str]:
        zero = [name for name in group if labels.get(name) == 0]
        if not zero:
            return []
        sentences: list[str] = []
        if group is P.LUNG_GROUP and all(labels.get(n) == 0 for n in P.LUNG_LABELS) and rng.random() < 0.7:
            return [_pick(rng, P.LUNGS_CLEAR)]
        if group is P.HEART_GROUP:
            if len(zero) == 2 and rng.random() < 0.6:
                return [_pick(rng, P.SILHOUETTE_NORMAL)]
            if "Cardiomegaly" in zero:
                sentences.append(_pick(rng, P.HEART_NORMAL))
            zero = [z for z in zero if z != "Cardiomegaly"]
        if any(labels.get(n) in (1, -1) for n in P.LUNG_LABELS if n != "Lung Opacity"):
            # "No focal opacity" next to a consolidation or an atelectasis would read as a contradiction.
            zero = [z for z in zero if z != "Lung Opacity"]
        said = []
        for name in zero:
            p = 1.0 if name in P.CORE_NEGATIVES else P.OPTIONAL_NEG_P.get(name, 0.3) * self.negative_rate
            if rng.random() < p:
                said.append(_pick(rng, P.NEGATIVE_SINGLE[name]))
        if said:
            sentences.append(_tidy("No " + _join_or(said) + "."))
        return sentences

    def write(self, record: Record) -> Report:
        rng = random.Random(f"{self.seed}:{record.id}")
        labels = {name: record.labels.get(name) for name in LABELS}
        details = finding_details(record)
        other = [str(o).strip() for o in (record.extra or {}).get("other_findings") or [] if str(o).strip()]

        findings: list[str] = []
        # Impression order: definite findings, then hedged ones, then devices, then other findings.
        definite: list[str] = []
        hedged: list[str] = []
        devices: list[str] = []

        def state(group: Sequence[str]) -> None:
            for name in group:
                v = labels[name]
                if v in (1, -1):
                    dets = details.get(name, [])
                    findings.extend(self._positive_sentences(name, v, dets, rng))
                    target = devices if name == "Support Devices" else definite if v == 1 else hedged
                    target.extend(self._impression_sentences(name, v, dets, rng))

        # Radiologists' usual order: lines and tubes, lungs, pleura, heart and mediastinum, bones.
        state(("Support Devices",))
        state(P.LUNG_GROUP)
        findings.extend(self._negatives(labels, rng, P.LUNG_GROUP))
        state(P.PLEURA_GROUP)
        findings.extend(self._negatives(labels, rng, P.PLEURA_GROUP))
        state(P.HEART_GROUP)
        findings.extend(self._negatives(labels, rng, P.HEART_GROUP))
        state(("Fracture",))
        findings.extend(self._negatives(labels, rng, ("Fracture",)))
        impression = definite + hedged + devices
        dropped = []
        for name in other:
            phrase = _pick(rng, P.OTHER_PHRASES.get(name.lower(), (f"{name}.",)))
            phrase = _tidy(phrase if phrase.endswith(".") else phrase + ".")
            if not _phrase_agrees(phrase, labels):
                dropped.append(name)  # e.g. "calcified densities" would read as a lung opacity
                continue
            findings.append(phrase)
            impression.append(phrase)

        pathology = [n for n in LABELS if n not in ("No Finding", "Support Devices") and labels[n] in (1, -1)]
        if labels["No Finding"] == 1 and not pathology:
            # Devices (CheXpert allows them with No Finding) come first, the normal statement last.
            impression.append(_pick(rng, P.NORMAL_IMPRESSION))
        if not impression:
            negs = [s for s in findings if s.startswith("No ")]
            impression = negs[:1] or ["No specific radiographic finding is recorded."]
        if not findings:
            findings = ["No specific radiographic finding is recorded."]

        findings_text = " ".join(findings)
        impression_text = " ".join(impression)
        patient = self._patient(record, rng)
        technique = self._technique(record, rng)
        text = (f"PATIENT INFORMATION: {patient}\nTECHNIQUE: {technique}\n"
                f"FINDINGS: {findings_text}\nIMPRESSION: {impression_text}")
        return Report(findings=findings_text, impression=impression_text, text=text,
                      patient=patient, technique=technique, writer=self.name,
                      meta={"seed": self.seed, **({"dropped_other_findings": dropped} if dropped else {})})
