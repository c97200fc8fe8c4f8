"""The one vocabulary for where and how large a finding is: sides, severities, zones.

Everything that states a finding's place or size speaks these words: the phantom renderer
(which draws the finding), the curation report writers (which phrase it), dataset adapters that
read it off a source (NIH boxes) and the demo's control impressions (which derive it from a mask
or a box). A :class:`Finding` carries them; it is the shape of ``record.extra["findings"]``.

Sides are the patient's. On a frontal radiograph displayed the usual way the patient's right is
on the viewer's left, so :func:`side_at` maps image positions left of the centre to ``"right"``.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from chexgen.data.labels import normalize_label_name
from chexgen.errors import ChexgenError

__all__ = ["SIDES", "SEVERITIES", "ZONES", "Finding", "side_at", "zone_at", "severity_at"]

SIDES = ("left", "right", "bilateral")
SEVERITIES = ("small", "moderate", "large")
ZONES = ("upper", "middle", "lower")


@dataclass(frozen=True)
class Finding:
    """One finding: its label (one of the 14) and, each optional, side, severity, zone and kind.

    ``kind`` refines the label (``"nodule"`` / ``"mass"``, a device type, ``"apical_cap"``, ...).
    """

    label: str
    side: str | None = None  # one of SIDES or None
    severity: str | None = None  # one of SEVERITIES or None
    zone: str | None = None  # one of ZONES or None
    kind: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "finding") -> "Finding":
        """Parse and check ``{"label", "side", "severity", "zone", "kind"}``; errors name ``where``."""
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def slug(self) -> str:
        """``kind`` (or the label) as a file-name part: ``"rib_fracture"``, ``"pleural_effusion"``."""
        return (self.kind or self.label).lower().replace(" ", "_")


def _bin(value: float, edges: Sequence[float], words: Sequence[str]) -> str:
    if len(edges) != len(words) - 1 or list(edges) != sorted(edges):
        raise ValueError(f"need {len(words) - 1} increasing edges for {words}, got {tuple(edges)}")
    return words[bisect_right(list(edges), value)]


def side_at(x: float) -> str:
    """The patient's side at horizontal position ``x`` (fraction of the width) of a frontal image."""
    return "right" if x < 0.5 else "left"


def zone_at(y: float, edges: Sequence[float] = (0.4, 0.6)) -> str:
    """The zone at vertical position ``y`` (fraction of the height, 0 = top): below ``edges[0]`` upper,
    below ``edges[1]`` middle, else lower."""
    return _bin(y, edges, ZONES)


def severity_at(area: float, edges: Sequence[float] = (0.02, 0.08)) -> str:
    """The severity of a finding covering ``area`` (fraction of the image): below ``edges[0]`` small,
    below ``edges[1]`` moderate, else large."""
    return _bin(area, edges, SEVERITIES)
