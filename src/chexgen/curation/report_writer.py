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
``{"label", "side", "severity", "zone", "kind"}`` (see :class:`FindingDetail`)
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
from functools import lru_cache
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from chexgen.curation.extractor import extract_labels
from chexgen.data.labels import LABELS, normalize_label_name
from chexgen.data.manifest import Record
from chexgen.errors import ChexgenError

__all__ = [
    "Report",
    "ReportWriter",
    "FindingDetail",
    "TemplateReportWriter",
    "finding_details",
    "SIDES",
    "SEVERITIES",
    "ZONES",
]

SIDES = ("left", "right", "bilateral")
SEVERITIES = ("small", "moderate", "large")
ZONES = ("upper", "middle", "lower")


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


@dataclass(frozen=True)
class FindingDetail:
    """Where and how large a finding is; every field but ``label`` is optional."""

    label: str
    side: str | None = None
    severity: str | None = None
    zone: str | None = None
    kind: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "finding") -> "FindingDetail":
        if not isinstance(d, dict) or "label" not in d:
            raise ChexgenError(f"{where}: expected an object with a 'label', got {d!r}")
        try:
            label = normalize_label_name(d["label"])
        except KeyError as e:
            raise ChexgenError(f"{where}: {str(e).strip(chr(34) + chr(39))}") from None
        for key, allowed in (("side", SIDES), ("severity", SEVERITIES), ("zone", ZONES)):
            v = d.get(key)
            if v is not None and v not in allowed:
                raise ChexgenError(f"{where}: '{key}' must be one of {allowed} or null, got {v!r}")
        kind = d.get("kind")
        if kind is not None and not isinstance(kind, str):
            raise ChexgenError(f"{where}: 'kind' must be a string or null, got {kind!r}")
        return cls(label, d.get("side"), d.get("severity"), d.get("zone"), kind)


def finding_details(record: Record) -> dict[str, list[FindingDetail]]:
    """Parse ``record.extra["findings"]`` into details per label (labels not held by the record are dropped)."""
    raw = (record.extra or {}).get("findings") or []
    if not isinstance(raw, list):
        raise ChexgenError(f"record {record.id}: extra.findings must be a list, got {type(raw).__name__}")
    out: dict[str, list[FindingDetail]] = {}
    for i, d in enumerate(raw):
        det = FindingDetail.from_dict(d, where=f"record {record.id}: extra.findings[{i}]")
        if record.labels.get(det.label) in (1, -1):  # never phrase what the labels do not hold
            out.setdefault(det.label, []).append(det)
    return out


# ---------------------------------------------------------------------------
# Phrase bank. Each positive template gets {sev} (severity word, may be ""),
# {loc_adj} (e.g. "right lower zone", may be "") and {loc} (e.g. " in the
# right lower zone", may be ""). Double spaces are squeezed afterwards.
# ---------------------------------------------------------------------------

_SEV_WORDS: dict[str, dict[str, str]] = {
    "default": {"small": "small", "moderate": "moderate", "large": "large"},
    "Cardiomegaly": {"small": "mild", "moderate": "moderate", "large": "marked"},
    "Enlarged Cardiomediastinum": {"small": "mild", "moderate": "moderate", "large": "marked"},
    "Edema": {"small": "mild", "moderate": "moderate", "large": "severe"},
    "Atelectasis": {"small": "mild", "moderate": "moderate", "large": "extensive"},
    "Pleural Other": {"small": "mild", "moderate": "moderate", "large": "extensive"},
    "Consolidation": {"small": "small", "moderate": "moderate", "large": "extensive"},
}

_POSITIVE: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": (
        "{sev} widening of the mediastinum.",
        "The cardiomediastinal silhouette is {sev_adv} enlarged.",
        "{sev} mediastinal widening.",
    ),
    "Cardiomegaly": (
        "{sev} cardiomegaly.",
        "The heart is {sev_adv} enlarged.",
        "{sev} enlargement of the cardiac silhouette.",
    ),
    "Lung Opacity": (
        "{sev} {loc_adj} airspace opacity.",
        "{sev} patchy opacity{loc}.",
        "There is a {sev} area of increased opacity{loc}.",
    ),
    "Lung Lesion": (
        "{sev} {loc_adj} {kind}.",
        "A {sev} {kind} is seen{loc}.",
        "There is a {sev} {kind}{loc}.",
    ),
    "Edema": (
        "{sev} pulmonary edema.",
        "{sev} interstitial pulmonary edema.",
        "Findings of {sev} pulmonary edema.",
    ),
    "Consolidation": (
        "{sev} {loc_adj} consolidation.",
        "{sev} airspace consolidation{loc}.",
        "There is {sev} consolidation{loc}.",
    ),
    "Pneumonia": (
        "Findings consistent with {loc_adj} pneumonia.",
        "Appearances are compatible with {loc_adj} pneumonia.",
        "{loc_adj} pneumonia.",
    ),
    "Atelectasis": (
        "{sev} {loc_adj} atelectasis.",
        "{sev} atelectasis{loc}.",
        "There is {sev} atelectasis{loc}.",
    ),
    "Pneumothorax": (
        "{sev} {side_adj} pneumothorax.",
        "There is a {sev} {side_adj} pneumothorax.",
        "{sev} pneumothorax{side_loc}.",
    ),
    "Pleural Effusion": (
        "{sev} {side_adj} pleural effusion.",
        "There is a {sev} {side_adj} pleural effusion.",
        "{sev} pleural effusion{side_loc}.",
    ),
    "Pleural Other": (
        "{sev} {side_adj} pleural thickening.",
        "There is {sev} pleural thickening{side_loc}.",
    ),
    "Fracture": (
        "{side_sided} {kind}.",
        "A {side_sided} {kind} is present.",
    ),
}

# Plural forms used when one label has a "bilateral" side.
_BILATERAL: dict[str, tuple[str, ...]] = {
    "Pleural Effusion": ("{sev} bilateral pleural effusions.", "There are {sev} bilateral pleural effusions."),
    "Pneumothorax": ("{sev} bilateral pneumothoraces.", "There are {sev} bilateral pneumothoraces."),
}

_APICAL_CAP = ("{sev} {side_adj} apical pleural cap.", "There is a {sev} {side_adj} apical pleural cap.")

_UNCERTAIN: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": ("Possible mediastinal widening.", "Mediastinal widening cannot be excluded."),
    "Cardiomegaly": ("Possible mild cardiomegaly.", "Borderline enlargement of the cardiac silhouette.",
                     "Cardiomegaly cannot be excluded."),
    "Lung Opacity": ("Possible {loc_adj} opacity.", "Questionable opacity{loc}."),
    "Lung Lesion": ("Possible {loc_adj} {kind}.", "A {kind}{loc} cannot be excluded."),
    "Edema": ("Possible mild pulmonary edema.", "Pulmonary edema cannot be excluded."),
    "Consolidation": ("Possible {loc_adj} consolidation.", "Consolidation{loc} cannot be excluded."),
    "Pneumonia": ("Possible {loc_adj} pneumonia.", "Pneumonia cannot be excluded.",
                  "Findings may represent {loc_adj} pneumonia."),
    "Atelectasis": ("Possible {loc_adj} atelectasis.", "Findings may represent atelectasis{loc}."),
    "Pneumothorax": ("Possible {sev} {side_adj} pneumothorax.", "A {side_adj} pneumothorax cannot be excluded."),
    "Pleural Effusion": ("Possible {sev} {side_adj} pleural effusion.",
                         "A {side_adj} pleural effusion cannot be excluded."),
    "Pleural Other": ("Possible {side_adj} pleural thickening.",),
    "Fracture": ("Possible {side_sided} {kind}.", "A {side_sided} {kind} cannot be excluded."),
    "Support Devices": ("Possible overlying support device.",),
}

_DEVICES: dict[str, tuple[str, ...]] = {
    "et_tube": ("Endotracheal tube in place.", "An endotracheal tube is present."),
    "endotracheal_tube": ("Endotracheal tube in place.", "An endotracheal tube is present."),
    "central_line": ("{side_sided} central venous catheter in place.", "A {side_sided} central line is present."),
    "picc": ("{side_sided} PICC line in place.",),
    "pacemaker": ("{side_sided} cardiac pacemaker with leads in place.", "A {side_sided} pacemaker is present."),
    "ng_tube": ("Nasogastric tube in place.", "An enteric tube is present."),
    "tracheostomy": ("Tracheostomy tube in place.",),
    "chest_tube": ("{side_sided} chest tube in place.",),
    "swan_ganz": ("Pulmonary artery catheter in place.",),
    None: ("Support devices are in place.", "Lines and tubes are present.", "Medical devices are present."),
}

# Pertinent negatives by anatomical group; each entry: (labels that must all be 0, phrasings).
_NEGATIVE_SINGLE: dict[str, tuple[str, ...]] = {
    "Pneumothorax": ("pneumothorax",),
    "Pleural Effusion": ("pleural effusion", "effusion"),
    "Consolidation": ("focal consolidation", "consolidation"),
    "Edema": ("pulmonary edema",),
    "Pneumonia": ("pneumonia",),
    "Lung Opacity": ("focal opacity",),
    "Lung Lesion": ("suspicious pulmonary nodule", "pulmonary nodule"),
    "Atelectasis": ("atelectasis",),
    "Pleural Other": ("pleural thickening",),
    "Fracture": ("acute fracture", "displaced rib fracture"),
    "Enlarged Cardiomediastinum": ("mediastinal widening",),
}
_LUNG_LABELS = ("Lung Opacity", "Consolidation", "Edema", "Pneumonia", "Atelectasis", "Lung Lesion")
_LUNGS_CLEAR = ("The lungs are clear.", "Both lungs are clear.", "The lungs are clear bilaterally.")
_HEART_NORMAL = ("Heart size is normal.", "Normal heart size.", "The heart is not enlarged.")
_SILHOUETTE_NORMAL = ("The cardiomediastinal silhouette is within normal limits.",
                      "Normal cardiomediastinal silhouette.",
                      "The cardiomediastinal silhouette is unremarkable.")
_NORMAL_IMPRESSION = ("No acute cardiopulmonary abnormality.", "No acute cardiopulmonary process.",
                      "Normal chest radiograph.", "No acute cardiopulmonary disease.")

# Core negatives that radiologists state almost always; the rest only sometimes.
_CORE_NEGATIVES = ("Pneumothorax", "Pleural Effusion", "Consolidation")
_OPTIONAL_NEG_P = {"Edema": 0.5, "Pneumonia": 0.15, "Lung Opacity": 0.2, "Lung Lesion": 0.2,
                   "Atelectasis": 0.1, "Pleural Other": 0.1, "Fracture": 0.35,
                   "Enlarged Cardiomediastinum": 0.3}

_LUNG_GROUP = ("Lung Opacity", "Consolidation", "Pneumonia", "Atelectasis", "Edema", "Lung Lesion")
_PLEURA_GROUP = ("Pleural Effusion", "Pneumothorax", "Pleural Other")
_HEART_GROUP = ("Cardiomegaly", "Enlarged Cardiomediastinum")

_OTHER_PHRASES: dict[str, tuple[str, ...]] = {
    "emphysema": ("Hyperinflated lungs with emphysematous changes.", "Emphysema."),
    "fibrosis": ("Interstitial fibrotic changes.", "Pulmonary fibrosis."),
    "hernia": ("Hiatal hernia.",),
    "hiatal hernia": ("Hiatal hernia.",),
    "scoliosis": ("Scoliosis of the thoracic spine.", "Thoracic scoliosis."),
    "aortic elongation": ("Elongation of the thoracic aorta.", "Unfolded thoracic aorta."),
    "calcified granuloma": ("Calcified granuloma.",),
    "granuloma": ("Calcified granuloma.",),
    "kyphosis": ("Thoracic kyphosis.",),
}


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


def _loc_words(det: FindingDetail | None) -> tuple[str, str, str, str]:
    """(loc_adj, loc, side_adj, side_loc) for a detail, all "" when unknown."""
    if det is None:
        return "", "", "", ""
    side, zone = det.side, det.zone
    zone_w = {"upper": "upper zone", "middle": "mid zone", "lower": "lower zone"}.get(zone or "", "")
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


def _kind_word(label: str, det: FindingDetail | None) -> str:
    kind = (det.kind if det else None) or ""
    if label == "Lung Lesion":
        return {"mass": "mass", "nodule": "nodule", "nodules": "nodules"}.get(kind, "nodule")
    if label == "Fracture":
        return "rib fracture" if kind in ("rib", "rib_fracture") else "fracture"
    return kind.replace("_", " ")


@lru_cache(maxsize=65536)
def _fill(template: str, label: str, det: FindingDetail | None) -> str:
    sev = ""
    if det is not None and det.severity:
        sev = _SEV_WORDS.get(label, _SEV_WORDS["default"])[det.severity]
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
    def _positive_sentences(self, label: str, value: int, dets: list[FindingDetail],
                            rng: random.Random) -> list[str]:
        if label == "Support Devices":
            if value == -1:
                return [_pick(rng, _UNCERTAIN[label])]
            kinds = dets or [None]
            out = []
            for det in kinds:
                opts = _DEVICES.get(det.kind if det else None, _DEVICES[None])
                out.append(_fill(_pick(rng, opts), label, det))
            return list(dict.fromkeys(out))
        out = []
        for det in (dets or [None]):
            if value == -1:
                opts = _UNCERTAIN[label]
            elif det is not None and det.side == "bilateral" and label in _BILATERAL:
                opts = _BILATERAL[label]
            elif det is not None and label == "Pleural Other" and det.kind == "apical_cap":
                opts = _APICAL_CAP
            else:
                opts = _POSITIVE[label]
            out.append(_fill(_pick(rng, opts), label, det))
        return list(dict.fromkeys(out))

    def _impression_sentences(self, label: str, value: int, dets: list[FindingDetail],
                              rng: random.Random) -> list[str]:
        """Compact wording for the impression: finding word, side and severity, nothing else."""
        if label == "Support Devices":
            if value == -1:
                return [_UNCERTAIN[label][0]]
            return list(dict.fromkeys(
                _fill(_DEVICES.get(d.kind if d else None, _DEVICES[None])[0], label, d) for d in (dets or [None])))
        out = []
        for det in (dets or [None]):
            if value == -1:
                template = _UNCERTAIN[label][0]
            elif det is not None and det.side == "bilateral" and label in _BILATERAL:
                template = _BILATERAL[label][0]
            elif det is not None and label == "Pleural Other" and det.kind == "apical_cap":
                template = _APICAL_CAP[0]
            else:
                template = _POSITIVE[label][0]
            out.append(_fill(template, label, det))
        return list(dict.fromkeys(out))

    def _negatives(self, labels: dict[str, int | None], rng: random.Random,
                   group: Sequence[str]) -> list[str]:
        zero = [name for name in group if labels.get(name) == 0]
        if not zero:
            return []
        sentences: list[str] = []
        if group is _LUNG_GROUP and all(labels.get(n) == 0 for n in _LUNG_LABELS) and rng.random() < 0.7:
            return [_pick(rng, _LUNGS_CLEAR)]
        if group is _HEART_GROUP:
            if len(zero) == 2 and rng.random() < 0.6:
                return [_pick(rng, _SILHOUETTE_NORMAL)]
            if "Cardiomegaly" in zero:
                sentences.append(_pick(rng, _HEART_NORMAL))
            zero = [z for z in zero if z != "Cardiomegaly"]
        said = []
        for name in zero:
            p = 1.0 if name in _CORE_NEGATIVES else _OPTIONAL_NEG_P.get(name, 0.3) * self.negative_rate
            if rng.random() < p:
                said.append(_pick(rng, _NEGATIVE_SINGLE[name]))
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
        state(_LUNG_GROUP)
        findings.extend(self._negatives(labels, rng, _LUNG_GROUP))
        state(_PLEURA_GROUP)
        findings.extend(self._negatives(labels, rng, _PLEURA_GROUP))
        state(_HEART_GROUP)
        findings.extend(self._negatives(labels, rng, _HEART_GROUP))
        state(("Fracture",))
        findings.extend(self._negatives(labels, rng, ("Fracture",)))
        impression = definite + hedged + devices
        dropped = []
        for name in other:
            phrase = _pick(rng, _OTHER_PHRASES.get(name.lower(), (f"{name}.",)))
            phrase = _tidy(phrase if phrase.endswith(".") else phrase + ".")
            if not _phrase_agrees(phrase, labels):
                dropped.append(name)  # e.g. "calcified densities" would read as a lung opacity
                continue
            findings.append(phrase)
            impression.append(phrase)

        pathology = [n for n in LABELS if n not in ("No Finding", "Support Devices") and labels[n] in (1, -1)]
        if labels["No Finding"] == 1 and not pathology:
            # Devices (CheXpert allows them with No Finding) come first, the normal statement last.
            impression.append(_pick(rng, _NORMAL_IMPRESSION))
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
