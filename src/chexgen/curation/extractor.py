"""Rule-based finding extractor: report text -> the 14 labels (negation- and uncertainty-aware).

In the spirit of the CheXpert labeler (mention -> classification -> aggregation),
written from scratch with hand-made phrase lists:

1. **Mentions.** Each sentence is scanned for phrases that name one of the
   13 observations (``pneumothora``, ``pleural effusion``, ``nodule`` ...).
   Heart and mediastinum are organs, not findings, so "heart size" or
   "mediastinal contour" only count as a mention together with a verdict
   word ("enlarged", "normal", "borderline").
2. **Classification.** A mention is *negative* when a negation cue ("no",
   "without", "free of", "resolved") governs it or a negative predicate
   follows it ("... is not seen", "... has resolved"); *uncertain* when a
   hedge governs it ("possible", "may represent", "cannot be excluded");
   otherwise *positive*. Cue scope is the clause: it stops at "but",
   "however", "although" and at sentence ends; the cue nearest to the
   mention wins ("possible effusion, no pneumothorax"). Pseudo-negations
   such as "no change in" are ignored.
3. **Aggregation.** Per label over all mentions: positive beats uncertain
   beats negative. "No Finding" is 1 when the report says it is normal
   ("no acute cardiopulmonary abnormality") and states no positive or
   uncertain pathology (support devices aside), 0 when any pathology is
   positive or uncertain, otherwise not stated.

Sentences repeat a lot across template reports, so per-sentence results are
cached; the extractor reads ~10k reports a second on one core.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from chexgen.data.labels import LABELS

__all__ = ["Mention", "extract_labels", "extract_mentions", "split_sentences", "PATHOLOGIES"]

PATHOLOGIES = tuple(n for n in LABELS if n not in ("No Finding", "Support Devices"))


@dataclass(frozen=True)
class Mention:
    """One classified mention: ``value`` is 1, 0 or -1; ``start``/``end`` index the sentence."""

    label: str
    value: int
    sentence: str
    start: int
    end: int


def _rx(*alternatives: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{a})" for a in alternatives))


# -- mention phrases (text is lower-cased first) ------------------------------------------------
_MENTIONS: dict[str, re.Pattern[str]] = {
    "Enlarged Cardiomediastinum": _rx(
        r"\bmediastinal (?:widening|enlargement)\b", r"\bwidened (?:superior )?mediastinum\b",
        r"\bwidening of the (?:superior )?mediastinum\b", r"\benlarged cardiomediastin\w*\b",
        r"\bprominen(?:ce|t) (?:of )?(?:the )?(?:superior )?mediastin(?:um|al contours?)\b",
        r"\bmediastinal prominence\b",
    ),
    "Cardiomegaly": _rx(
        r"\bcardiomegaly\b", r"\bcardiac enlargement\b", r"\benlarged (?:heart|cardiac silhouette)\b",
        r"\benlargement of the (?:heart|cardiac silhouette)\b", r"\bmegacardia\b",
    ),
    "Lung Opacity": _rx(
        r"(?<!nodular )\bopaci(?:ty|ties|fication|fications)\b", r"\binfiltrat(?:e|es|ion|ive)\b",
        r"\bair[- ]?space (?:disease|process)\b", r"\bhaziness\b", r"\bground[- ]glass\b",
        r"(?<!bone )(?<!bony )(?<!soft tissue )(?<!nodular )\bdensit(?:y|ies)\b",
        r"\binterstitial (?:markings|opacities|prominence|pattern|disease|lung disease)\b",
    ),
    "Lung Lesion": _rx(
        r"\bnodul(?:e|es|ar opacity|ar opacities|ar density|ar densities)\b",
        r"(?<!soft tissue )\bmass(?:es)?\b(?! effect)", r"(?<!lytic )(?<!sclerotic )(?<!bone )(?<!bony )"
        r"(?<!osseous )(?<!skin )(?<!expansile )\blesions?\b", r"\btumou?rs?\b", r"\bneoplasms?\b",
        r"\bcarcinoma\b", r"\bmalignanc(?:y|ies)\b", r"\bpulmonary metasta\w*\b",
    ),
    "Edema": _rx(
        r"(?<!soft tissue )\b(?:o)?edema\b", r"\bvascular congestion\b", r"\bpulmonary congestion\b",
        r"\bheart failure\b", r"\bchf\b", r"\bfluid overload\b",
        r"\b(?:pulmonary |central )?vascular (?:prominence|engorgement|redistribution|indistinctness)\b",
        r"\bprominen(?:t|ce of the) (?:central |pulmonary )?vasculature\b", r"\bindistinct vascular margination\b",
        r"\bengorged\b", r"\bpulmonary venous (?:hypertension|congestion)\b",
    ),
    "Consolidation": _rx(r"\bconsolidat(?:ion|ions|ive|ed)\b"),
    # "prior granulomatous infection" is a healed, not an active, infection.
    "Pneumonia": _rx(r"\b(?:broncho)?pneumonias?\b",
                     r"(?<!granulomatous )(?<!prior )(?<!previous )(?<!old )(?<!healed )\binfection\b",
                     r"\binfectious (?:process|etiology)\b"),
    "Atelectasis": _rx(r"\batelecta\w*\b", r"\b(?:lobar|lung|lobe|segmental) collapse\b",
                       r"\bcollapse of the (?:right |left )?(?:upper |middle |lower )?(?:lobe|lung)\b"),
    "Pneumothorax": _rx(r"pneumothora(?:x|ces)\b"),
    "Pleural Effusion": _rx(r"(?<!pericardial )(?<!joint )\beffusions?\b", r"\bpleural fluid\b",
                            r"\bhydrothorax\b", r"\bhydropneumothorax\b"),
    "Pleural Other": _rx(
        r"\bpleural (?:thickening|scar\w*|plaques?|calcifications?|fibrosis)\b",
        r"\bthickening of the pleura\b", r"\bfibrothorax\b", r"\bpleural[- ]parenchymal (?:scar\w*|thickening)\b",
        r"\bapical (?:pleural )?(?:cap|capping)\b",
    ),
    "Fracture": _rx(r"\bfractur(?:e|es|ed)\b", r"\bfx\b"),
    "Support Devices": _rx(
        r"\bsupport devices?\b", r"\bmedical devices?\b", r"\blines and tubes\b", r"\btubes and lines\b",
        r"\b(?:endotracheal|et|tracheostomy|trach|nasogastric|ng|orogastric|og|enteric|feeding|chest|dobhoff|"
        r"gastrostomy|thoracostomy) tubes?\b",
        r"\b(?:central venous|central|picc|swan[- ]ganz|pulmonary artery|ij|jugular|subclavian|dialysis|"
        r"hemodialysis|venous) (?:lines?|catheters?)\b", r"\bcatheters?\b", r"\bpicc\b",
        r"\bpacemakers?\b", r"\bpacers?\b", r"\bdefibrillators?\b", r"\baicd\b", r"\bicd\b",
        r"\bport[- ]?a[- ]?cath\b", r"\bmediport\b", r"\bpacing (?:leads?|wires?)\b", r"\bstents?\b",
        r"\bdevices?\b", r"\bhardware\b", r"\bsternotomy wires\b", r"\bgenerator\b", r"\b(?:monitor|cardiac) leads\b",
        r"\bleads? (?:terminat\w*|in the right|overl\w*)", r"\bstimulator\b", r"\bshunt(?: tubing)?\b",
        r"\bprosthe(?:sis|tic)\b", r"\binternal fixation\b", r"\bbone anchor\b",
        r"\btip (?:in|at|overl\w*|project\w*|terminat\w*|approximat\w*)\b",
    ),
}

# Organs that only count with a verdict word: label(s) for positive, label(s) for negative.
_VERDICT_POS = (r"(?:mildly |moderately |markedly |severely |slightly |significantly |massively |again |"
                r"stably |now )?(?:enlarged|widened|prominent|increased|large)")
_VERDICT_NEG = (r"(?:normal|unremarkable|within normal limits|not (?:significantly )?(?:enlarged|widened)|"
                r"normal in (?:size|contour|appearance)|of normal size|stable and normal)")
_VERDICT_UNC = r"(?:borderline(?: enlarged| in size)?|(?:at )?(?:the )?upper limits? of normal|top[- ]normal)"
_COPULA = (r"(?:\s+(?:and|,)\s+[a-z ,/-]{1,40}?)?\s+(?:is|are|appears?|remains?|was|were|looks?|seems?)?\s*"
           r"(?:again\s+|now\s+|otherwise\s+|stably\s+|still\s+|grossly\s+|essentially\s+)?")
_ORGANS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    # (organ phrase, labels when enlarged, labels when normal)
    (r"cardiomediastinal (?:silhouette|contours?|size|shadow)", ("Enlarged Cardiomediastinum",),
     ("Enlarged Cardiomediastinum", "Cardiomegaly")),
    (r"(?:superior )?mediastin(?:um|al (?:contours?|silhouette|width))", ("Enlarged Cardiomediastinum",),
     ("Enlarged Cardiomediastinum",)),
    (r"(?:heart(?: size)?|cardiac (?:silhouette|size|contours?|shadow))", ("Cardiomegaly",), ("Cardiomegaly",)),
)
_ORGAN_RX = [
    (re.compile(rf"\b(?:the )?(?P<organ>{org})\b(?:\s+size)?{_COPULA}(?:(?P<unc>{_VERDICT_UNC})|(?P<neg>{_VERDICT_NEG})"
                rf"|(?P<pos>{_VERDICT_POS}))\b"), pos, neg)
    for org, pos, neg in _ORGANS
] + [
    (re.compile(rf"\b(?:(?P<unc>borderline(?: enlarged)?)|(?P<neg>normal(?:[- ]sized)?|unremarkable)|"
                rf"(?P<pos>enlarged|widened|prominent))\s+(?P<organ>{org})\b"), pos, neg)
    for org, pos, neg in _ORGANS
]
_LUNGS_CLEAR = re.compile(r"\b(?:lungs?|lung fields)\b[a-z ,]{0,30}?\bclear\b|\bclear lungs?\b")
_LUNG_GROUP = ("Lung Opacity", "Consolidation", "Edema", "Pneumonia", "Atelectasis", "Lung Lesion")

_NORMAL = re.compile(
    r"\bno (?:acute|active) (?:cardiopulmonary |cardiothoracic |intrathoracic |pulmonary |chest |radiographic )?"
    r"(?:abnormalit(?:y|ies)|process(?:es)?|disease|findings?)\b"
    r"|\bnormal (?:chest(?: radiograph| x-?ray| film| study| examination)?|radiograph|study|examination)\b"
    r"|\bno (?:radiographic )?evidence of (?:acute |active )?(?:cardiopulmonary )?disease\b"
    r"|\bunremarkable (?:chest(?: radiograph| x-?ray)?|study|examination|radiograph)\b"
    r"|\bno (?:acute )?cardiopulmonary (?:abnormalit(?:y|ies)|process|disease)\b"
)

# -- cues ------------------------------------------------------------------------------------
_PSEUDO_NEG = re.compile(
    r"\b(?:no|without) (?:significant |interval |appreciable |substantial |other )*"
    r"(?:change|increase|decrease|progression|worsening|improvement)s?\b(?: in| of)?"
    r"|\bnot (?:only|necessarily)\b"
)
_PRE_NEG = re.compile(
    r"\b(?:no|not|without|negative for|free of|clear of|absence of|absent|resolved|resolution of|"
    r"removal of|rather than|nor|no longer|no evidence of|no signs? of|ruled out)\b"
)
_PRE_UNC = re.compile(
    r"\b(?:possible|possibly|may|might|could|cannot exclude|can not exclude|cannot rule out|questionable|"
    r"question of|suspicious for|suspicion of|suspected|concern for|concerning for|likely|probable|probably|"
    r"suggest|suggests|suggestive of|suggesting|versus|vs|differential|consider|considered|rule out|r/o|"
    r"borderline|equivocal|indeterminate|uncertain|presumably|presumed|not excluded|cannot be excluded)\b"
)
_SUGGEST = re.compile(r"suggest|concerning for|suspicious for|to suggest")
_POST_UNC = re.compile(
    r"^(?:[\s,]+[a-z-]+){0,6}?\s+(?:cannot be excluded|can not be excluded|not (?:entirely )?excluded|"
    r"cannot be ruled out|not ruled out|(?:is|are) (?:possible|suspected|questioned|likely|probable|"
    r"not excluded|suggested|considered)|may be present|is a consideration)\b"
)
_POST_NEG = re.compile(
    r"^\s*(?:(?:is|are|was|were|has|have|has been|have been|remains?)\s+)?(?:now\s+|no longer\s+)?"
    r"(?:not (?:well[- ])?(?:seen|identified|present|visualized|evident|demonstrated|appreciated|detected)|absent|"
    r"resolved|"
    r"removed|seen no longer|no longer (?:seen|present|visualized))\b"
)
_CLAUSE_BREAK = re.compile(r"\b(?:but|however|although|though|whereas|except|aside from|apart from)\b|;|:")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def split_sentences(text: str) -> list[str]:
    """Split report text into lower-cased sentences (decimals like "1.5 cm" stay whole)."""
    return [s.strip() for s in _SENTENCE.split(text.lower()) if s.strip()]


def _status(clause: str, start: int, end: int) -> int:
    """Classify the mention at ``clause[start:end]``: 1, 0 or -1."""
    after = clause[end:]
    if _POST_UNC.match(after):
        return -1
    if _POST_NEG.match(after):
        return 0
    before = _PSEUDO_NEG.sub(lambda m: " " * len(m.group()), clause[:start])
    neg = [m.start() for m in _PRE_NEG.finditer(before)]
    unc = [m.start() for m in _PRE_UNC.finditer(before)]
    last_neg = neg[-1] if neg else -1
    last_unc = unc[-1] if unc else -1
    if last_neg < 0 and last_unc < 0:
        return 1
    if last_neg > last_unc:
        return 0
    # "No opacity to suggest pneumonia": a negated finding that would have suggested this one.
    if 0 <= last_neg and _SUGGEST.match(before, last_unc):
        return 0
    return -1


def _clauses(sentence: str) -> list[str]:
    parts, last = [], 0
    for m in _CLAUSE_BREAK.finditer(sentence):
        parts.append(sentence[last:m.start()])
        last = m.end()
    parts.append(sentence[last:])
    return [p for p in parts if p.strip()]


@lru_cache(maxsize=200_000)
def _sentence_mentions(sentence: str) -> tuple[tuple[str, int, int, int], ...]:
    found: list[tuple[str, int, int, int]] = []
    for clause in _clauses(sentence):
        offset = sentence.find(clause)
        taken: list[tuple[int, int]] = []
        for rx, pos_labels, neg_labels in _ORGAN_RX:
            for m in rx.finditer(clause):
                if any(m.start() < e and s < m.end() for s, e in taken):
                    continue
                taken.append((m.start(), m.end()))
                if m.group("unc"):
                    value, labels = -1, pos_labels
                elif m.group("neg"):
                    value, labels = 0, neg_labels
                else:
                    value, labels = 1, pos_labels
                if value != 0:  # a hedge before the organ ("possibly enlarged heart") still counts
                    value = -1 if value == -1 or _status(clause, m.start(), m.end()) == -1 else value
                for label in labels:
                    found.append((label, value, offset + m.start(), offset + m.end()))
        for m in _LUNGS_CLEAR.finditer(clause):
            for label in _LUNG_GROUP:
                found.append((label, 0, offset + m.start(), offset + m.end()))
        for label, rx in _MENTIONS.items():
            for m in rx.finditer(clause):
                if any(m.start() < e and s < m.end() for s, e in taken):
                    continue
                found.append((label, _status(clause, m.start(), m.end()), offset + m.start(), offset + m.end()))
    return tuple(found)


def extract_mentions(text: str) -> list[Mention]:
    """Every classified mention in ``text``, in reading order."""
    out = []
    for sentence in split_sentences(text):
        for label, value, s, e in _sentence_mentions(sentence):
            out.append(Mention(label, value, sentence, s, e))
    return out


@lru_cache(maxsize=200_000)
def _sentence_is_normal(sentence: str) -> bool:
    return bool(_NORMAL.search(sentence))


@lru_cache(maxsize=200_000)
def _line_statements(line: str) -> tuple[tuple[tuple[str, int], ...], bool]:
    """Mentions (label, value) and whether a normal statement occurs, for one line of a report."""
    mentions: list[tuple[str, int]] = []
    normal = False
    for sentence in split_sentences(line):
        mentions.extend((label, value) for label, value, _, _ in _sentence_mentions(sentence))
        normal = normal or _sentence_is_normal(sentence)
    return tuple(mentions), normal


def extract_labels(text: str) -> dict[str, int | None]:
    """Read a report back into the 14 labels (1 / 0 / -1 / None = not stated), in ``LABELS`` order."""
    out: dict[str, int | None] = {name: None for name in LABELS}
    normal = False
    # Lines (sections) repeat across reports far more than whole reports do: cache per line.
    for line in text.split("\n"):
        mentions, line_normal = _line_statements(line)
        normal = normal or line_normal
        for label, value in mentions:
            cur = out[label]
            # Aggregation: positive > uncertain > negative.
            if cur is None or value == 1 or (value == -1 and cur == 0):
                out[label] = value
    if any(out[p] in (1, -1) for p in PATHOLOGIES):
        out["No Finding"] = 0
    elif normal:
        out["No Finding"] = 1
    return out
