"""Which findings a phantom case has: finding specs, prevalence configs and sampling.

A :class:`~chexgen.data.vocabulary.Finding` is the structured truth the report
writer and the renderer share: the canonical label (one of
:data:`chexgen.data.labels.LABELS`), side, severity (small / moderate / large),
zone (upper / middle / lower) and a kind (nodule vs mass, device type, pleural
thickening form), in the words of :mod:`chexgen.data.vocabulary`.

Prevalence configs:

* ``mimic`` (default): each class is drawn independently with a probability
  close to its MIMIC-CXR prevalence (CheXpert-labeller positives over all
  studies), at most four pathologies a case. "Lung Opacity" is drawn at a lower
  rate than MIMIC's 23 % because MIMIC counts every pneumonia, edema or
  atelectasis that a report calls an opacity; here each label is one rendered
  finding.
* ``balanced``: a case is normal with probability 1/14; otherwise it gets one to
  three distinct classes drawn uniformly, so every class is about equally common.
* a JSON or YAML file mapping label names to probabilities (independent draws),
  with an optional ``max_findings``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chexgen.data.labels import LABELS, normalize_label_name
from chexgen.data.vocabulary import SEVERITIES, ZONES, Finding
from chexgen.errors import ChexgenError

__all__ = [
    "Finding",
    "Prevalence",
    "load_prevalence",
    "sample_findings",
    "MIMIC_PREVALENCE",
    "PATHOLOGIES",
    "SEVERITIES",
    "ZONES",
    "DEVICE_KINDS",
    "PARENCHYMAL",
]

DEVICE_KINDS = ("et_tube", "central_line", "pacemaker")
PATHOLOGIES = tuple(name for name in LABELS if name != "No Finding")
# Findings that fill air spaces: they count for the RALO-like severity score.
PARENCHYMAL = ("Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis")

# Approximate MIMIC-CXR positive rates (CheXpert labeller, all studies).
MIMIC_PREVALENCE: dict[str, float] = {
    "Enlarged Cardiomediastinum": 0.03,
    "Cardiomegaly": 0.20,
    "Lung Opacity": 0.12,  # standalone ground-glass / air-space opacity (see module docstring)
    "Lung Lesion": 0.03,
    "Edema": 0.12,
    "Consolidation": 0.05,
    "Pneumonia": 0.07,
    "Atelectasis": 0.20,
    "Pneumothorax": 0.045,
    "Pleural Effusion": 0.24,
    "Pleural Other": 0.01,
    "Fracture": 0.02,
    "Support Devices": 0.29,
}


@dataclass(frozen=True)
class Prevalence:
    """Independent per-class probabilities (``rates``) or the balanced scheme."""

    name: str
    rates: dict[str, float]
    balanced: bool = False
    max_findings: int = 4


def load_prevalence(spec: str | os.PathLike = "mimic") -> Prevalence:
    """``"mimic"``, ``"balanced"`` or a JSON / YAML file ``{label: probability, ..., "max_findings": n}``."""
    if str(spec) == "mimic":
        return Prevalence("mimic", dict(MIMIC_PREVALENCE))
    if str(spec) == "balanced":
        return Prevalence("balanced", {k: 1.0 / 14 for k in PATHOLOGIES}, balanced=True, max_findings=3)
    path = Path(spec)
    if not path.is_file():
        raise ChexgenError(f"{path}: prevalence must be 'mimic', 'balanced' or an existing JSON/YAML file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # json / yaml raise several types
        raise ChexgenError(f"{path}: cannot parse prevalence file ({e})") from None
    if not isinstance(data, dict):
        raise ChexgenError(f"{path}: expected a mapping of label name to probability")
    max_findings = int(data.pop("max_findings", 4))
    rates: dict[str, float] = {}
    for key, value in data.items():
        try:
            name = normalize_label_name(key)
        except KeyError as e:
            raise ChexgenError(f"{path}: {str(e).strip(chr(34))}") from None
        if name == "No Finding":
            raise ChexgenError(f"{path}: 'No Finding' follows from the other classes; remove it")
        if not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ChexgenError(f"{path}: probability of {name!r} must be a number in [0, 1], got {value!r}")
        rates[name] = float(value)
    return Prevalence(path.stem, rates, max_findings=max_findings)


def _pick(rng: np.random.Generator, options: tuple, p: tuple | None = None) -> Any:
    return options[int(rng.choice(len(options), p=p))]


def describe(label: str, rng: np.random.Generator) -> list[Finding]:
    """Random side / severity / zone / kind for one positive class (a few classes give several findings)."""
    sev = _pick(rng, SEVERITIES, (0.4, 0.35, 0.25))
    side = _pick(rng, ("right", "left"))
    zone = _pick(rng, ZONES)
    if label == "Cardiomegaly":
        return [Finding(label, severity=sev)]
    if label == "Enlarged Cardiomediastinum":
        return [Finding(label, severity=sev, zone="upper")]
    if label == "Edema":
        return [Finding(label, side="bilateral", severity=sev)]
    if label == "Pleural Effusion":
        side = _pick(rng, ("right", "left", "bilateral"), (0.4, 0.3, 0.3))
        return [Finding(label, side=side, severity=sev, zone="lower")]
    if label == "Pneumothorax":
        return [Finding(label, side=side, severity=sev, zone="upper")]
    if label == "Lung Lesion":
        kind = _pick(rng, ("nodule", "mass"), (0.7, 0.3))
        return [Finding(label, side=side, severity=sev, zone=zone, kind=kind)]
    if label == "Atelectasis":
        zone = _pick(rng, ("middle", "lower"), (0.3, 0.7))
        return [Finding(label, side=side, severity=sev, zone=zone)]
    if label in ("Pneumonia", "Consolidation"):
        zone = _pick(rng, ZONES, (0.2, 0.3, 0.5))
        return [Finding(label, side=side, severity=sev, zone=zone)]
    if label == "Lung Opacity":
        return [Finding(label, side=side, severity=sev, zone=zone)]
    if label == "Pleural Other":
        kind = "apical_cap" if zone == "upper" else "pleural_thickening"
        return [Finding(label, side=side, severity=sev, zone=zone, kind=kind)]
    if label == "Fracture":
        return [Finding(label, side=side, severity=sev, zone=zone, kind="rib_fracture")]
    if label == "Support Devices":
        n = 1 + int(rng.random() < 0.35)
        kinds = rng.choice(len(DEVICE_KINDS), size=n, replace=False, p=(0.45, 0.35, 0.2))
        out = []
        for k in sorted(int(i) for i in kinds):
            kind = DEVICE_KINDS[k]
            dev_side = None if kind == "et_tube" else _pick(rng, ("right", "left"), (0.6, 0.4) if kind == "central_line" else (0.15, 0.85))
            out.append(Finding(label, side=dev_side, kind=kind))
        return out
    raise ChexgenError(f"no finding model for label {label!r}")


def sample_findings(rng: np.random.Generator, prevalence: Prevalence) -> list[Finding]:
    """Draw the findings of one case (empty list = normal)."""
    if prevalence.balanced:
        if rng.random() < 1.0 / 14:
            return []
        n = 1 + int(rng.binomial(prevalence.max_findings - 1, 0.3))
        idx = rng.choice(len(PATHOLOGIES), size=n, replace=False)
        labels = [PATHOLOGIES[int(i)] for i in sorted(idx)]
    else:
        labels = [name for name in PATHOLOGIES if rng.random() < prevalence.rates.get(name, 0.0)]
        if len(labels) > prevalence.max_findings:
            keep = rng.choice(len(labels), size=prevalence.max_findings, replace=False)
            labels = [labels[int(i)] for i in sorted(keep)]
    findings: list[Finding] = []
    for label in labels:
        findings.extend(describe(label, rng))
    return findings


def labels_from_findings(findings: list[Finding]) -> dict[str, int]:
    """Exact 14-class labels: 1 for each rendered class, else 0; "No Finding" when only devices (or nothing).

    Unlike the CheXpert labeller's hierarchy, a pneumonia does not also make "Lung Opacity"
    positive: every positive label names a finding that was rendered with its own mask, box and
    sentence, so text, labels and pixels agree one to one.
    """
    present = {f.label for f in findings}
    pathologic = present - {"Support Devices"}
    labels = {name: int(name in present) for name in LABELS}
    labels["No Finding"] = int(not pathologic)
    return labels
