"""The one label space every chexgen dataset maps onto.

The 14 CheXpert / MIMIC-CXR observation names. A label value is ``1``
(present), ``0`` (absent), ``-1`` (uncertain) or missing (``None`` / key not
present: the source says nothing about it). Source adapters document their own
mapping onto these names.
"""

from __future__ import annotations

from typing import Mapping

__all__ = [
    "LABELS",
    "LABEL_INDEX",
    "POSITIVE",
    "NEGATIVE",
    "UNCERTAIN",
    "normalize_label_name",
    "validate_label_value",
    "labels_to_vector",
]

LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
LABEL_INDEX: dict[str, int] = {name: i for i, name in enumerate(LABELS)}

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1
_VALID_VALUES = (POSITIVE, NEGATIVE, UNCERTAIN)

# Case- and separator-insensitive lookup: "pleural_effusion", "Pleural Effusion",
# "pleural effusion" and "PleuralEffusion" all name the same class.
_FOLDED = {name.lower().replace(" ", "").replace("_", ""): name for name in LABELS}


def normalize_label_name(name: str) -> str:
    """Return the canonical label name for ``name`` or raise ``KeyError`` listing valid names."""
    key = str(name).lower().replace(" ", "").replace("_", "").replace("-", "")
    if key not in _FOLDED:
        raise KeyError(f"unknown label {name!r}; expected one of: {', '.join(LABELS)}")
    return _FOLDED[key]


def validate_label_value(value: object) -> int | None:
    """Coerce a label value to 1 / 0 / -1 / None, or raise ``ValueError``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        if value != value:  # NaN means "not stated"
            return None
        if int(value) == value and int(value) in _VALID_VALUES:
            return int(value)
    raise ValueError(f"label value {value!r} is not one of 1, 0, -1 or null")


def labels_to_vector(
    labels: Mapping[str, int | None], uncertain_as: float = 1.0, missing_as: float = 0.0
) -> list[float]:
    """Dense 14-vector in ``LABELS`` order (uncertain and missing mapped as asked)."""
    out = []
    for name in LABELS:
        v = labels.get(name)
        if v is None:
            out.append(missing_as)
        elif v == UNCERTAIN:
            out.append(uncertain_as)
        else:
            out.append(float(v))
    return out
