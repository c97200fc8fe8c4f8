"""Projection geometry: where a point of the CT lands on the detector.

The CT (LAS, index axes i -> patient left, j -> anterior, k -> superior) is
projected along j. A real radiograph is a divergent-beam projection, so a
structure far from the detector is magnified more than one close to it; that is
why the heart looks larger on AP (heart far from a posterior detector, short
source distance) than on PA (heart close to an anterior detector, 180 cm).

We model it with a point source on the central ray: a point at depth ``y`` (mm
along j) has magnification ``M(y) = SID / (SID - OID(y))``, where the object to
image distance OID is measured from the detector-side skin surface. Images are
scaled so that the mid-plane of the body has magnification 1 in canonical
pixels: the field of view (``fov_mm``, square) is defined in that plane.

Displayed like clinical images: the patient's right on the viewer's left
(column grows with i), head up (row grows with decreasing k).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Geometry", "VIEWS", "SOURCE_TO_IMAGE_MM"]

VIEWS = ("PA", "AP")
# Usual source-to-image distances: erect PA at 180 cm, AP (often portable) at 100 cm.
SOURCE_TO_IMAGE_MM = {"PA": 1800.0, "AP": 1000.0}


@dataclass(frozen=True)
class Geometry:
    """Divergent-beam geometry of one view over the CT (all lengths in mm of CT index space)."""

    view: str
    x_center: float  # X (= i * spacing) of the central ray
    z_center: float  # Z (= k * spacing) of the central ray
    y_front: float  # anterior skin surface (Y of the detector side for PA)
    y_back: float  # posterior skin surface (detector side for AP)
    fov_mm: float = 340.0

    @property
    def sid(self) -> float:
        return SOURCE_TO_IMAGE_MM[self.view]

    def oid(self, y: np.ndarray | float) -> np.ndarray | float:
        """Object-to-image distance of depth ``y``: PA detector is anterior, AP posterior."""
        if self.view == "PA":
            return np.maximum(self.y_front - np.asarray(y), 0.0) + 20.0
        return np.maximum(np.asarray(y) - self.y_back, 0.0) + 20.0

    def magnification(self, y: np.ndarray | float) -> np.ndarray | float:
        """Magnification at depth ``y`` relative to the body mid-plane (1.0 there)."""
        mid = 0.5 * (self.y_front + self.y_back)
        m = self.sid / (self.sid - self.oid(y))
        m_mid = self.sid / (self.sid - self.oid(mid))
        return m / m_mid

    def to_pixel(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) float pixel coordinates in a ``size`` image of the points (x, y, z) in mm."""
        m = self.magnification(y)
        pix = self.fov_mm / size
        col = (np.asarray(x) - self.x_center) * m / pix + size / 2 - 0.5
        row = -(np.asarray(z) - self.z_center) * m / pix + size / 2 - 0.5
        return row, col

    def slab_sampling(self, y: float, size: int, spacing_x: float, spacing_z: float) -> tuple[np.ndarray, np.ndarray]:
        """Index coordinates (i, k) in a (X, Z) projection of a slab at depth ``y`` for every canonical pixel.

        Used to resample a slab's parallel projection onto the detector grid with
        the slab's own magnification.
        """
        m = float(self.magnification(y))
        pix = self.fov_mm / size
        c = np.arange(size, dtype=np.float64)
        x = self.x_center + (c - size / 2 + 0.5) * pix / m
        z = self.z_center - (c - size / 2 + 0.5) * pix / m
        return x / spacing_x, z / spacing_z
