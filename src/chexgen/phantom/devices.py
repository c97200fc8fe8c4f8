"""Support devices drawn as exact projections of simple solids along anatomical paths.

A device is a tube, wire or can whose line integral has a closed form, so it is
"projected alone" analytically instead of voxelised: a cylinder of radius R seen
side-on at distance d from its axis has chord length 2*sqrt(R^2 - d^2) (a hollow
tube subtracts its lumen's chord). Paths are smooth (Catmull-Rom) curves through
3-D landmarks from the label map (trachea centreline, carina, superior vena
cava, right atrium, right-ventricular apex, clavicles) taken through the view's
divergent-beam geometry.

* ET tube: PVC tube (outer radius 4.5 mm, wall 1 mm) with a radiopaque stripe,
  down the trachea, tip 30..60 mm above the carina.
* Central line: radiopaque catheter (radius 1 mm) from the chosen subclavian
  region along the brachiocephalic vein into the SVC, tip near the cavo-atrial
  junction.
* Pacemaker: titanium generator can (about 45 x 52 x 7 mm) below the clavicle
  with two leads (radius 1 mm) through the SVC into the right atrium and the
  right-ventricular apex.

Attenuation values are enlarged a little over the physical ones so that devices
stay visible at 128 px, where a 1 mm wire covers less than half a pixel.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from chexgen.phantom.atlas import MU_WATER, Atlas

__all__ = ["render_device", "catmull_rom", "tube_projection"]

MU_PVC = 1.25 * MU_WATER
MU_STRIPE = 0.45  # per mm, barium stripe
MU_CATHETER = 0.32
MU_LEAD = 0.40
MU_TITANIUM = 0.13


def catmull_rom(points: np.ndarray, step: float = 1.0) -> np.ndarray:
    """Dense points (spacing about ``step``) on a Catmull-Rom spline through ``points`` (n, d)."""
    p = np.asarray(points, dtype=np.float64)
    if len(p) < 2:
        return p
    ext = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    out = []
    for i in range(1, len(ext) - 2):
        p0, p1, p2, p3 = ext[i - 1], ext[i], ext[i + 1], ext[i + 2]
        n = max(2, int(np.ceil(np.linalg.norm(p2 - p1) / step)))
        t = np.linspace(0, 1, n, endpoint=False)[:, None]
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3))
    out.append(p[-1:])
    return np.vstack(out)


def _distance_to_polyline(rr: np.ndarray, cc: np.ndarray, path: np.ndarray) -> np.ndarray:
    """Distance (px) from pixel centres (rr, cc) to the curve ``path`` (n, 2 as row, col).

    The curve is resampled every 0.25 px and queried with a k-d tree, so the error is
    below 0.02 px.
    """
    seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
    t = np.concatenate([[0.0], np.cumsum(seg)])
    dense_t = np.arange(0.0, t[-1] + 0.25, 0.25)
    dense = np.stack([np.interp(dense_t, t, path[:, 0]), np.interp(dense_t, t, path[:, 1])], axis=1)
    d, _ = cKDTree(dense).query(np.stack([rr.ravel(), cc.ravel()], axis=1))
    return d.reshape(rr.shape)


def tube_projection(size: int, path: np.ndarray, radius: float, mu: float, inner: float = 0.0, pix_mm: float = 1.0) -> np.ndarray:
    """Line integral of a (hollow) cylinder of ``radius`` mm along ``path`` (row, col px) on a ``size`` grid."""
    out = np.zeros((size, size), np.float32)
    path = path[np.isfinite(path).all(1)]
    if len(path) < 2:
        return out
    r_px = radius / pix_mm
    lo = np.floor(path.min(0) - r_px - 2).astype(int).clip(0, size - 1)
    hi = np.ceil(path.max(0) + r_px + 2).astype(int).clip(0, size - 1)
    if (hi <= lo).any():
        return out
    rr, cc = np.mgrid[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1].astype(np.float64)
    # Supersample 2 x 2 so sub-pixel wires keep their integral.
    acc = np.zeros(rr.shape)
    for dr in (-0.25, 0.25):
        for dc in (-0.25, 0.25):
            d = _distance_to_polyline(rr + dr, cc + dc, path) * pix_mm
            chord = 2 * np.sqrt(np.clip(radius**2 - d**2, 0, None))
            if inner > 0:
                chord -= 2 * np.sqrt(np.clip(inner**2 - d**2, 0, None))
            acc += chord
    out[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1] = (mu * acc / 4).astype(np.float32)
    return out


def _to_px(atlas: Atlas, pts: np.ndarray, size: int) -> np.ndarray:
    pts = np.asarray(pts, dtype=np.float64)
    r, c = atlas.geometry.to_pixel(pts[:, 0], pts[:, 1], pts[:, 2], size)
    return np.stack([r, c], axis=1)


def _venous_path(atlas: Atlas, side: str, rng: np.random.Generator, tip_drop: float) -> list[np.ndarray]:
    lm = atlas.landmarks
    svc = np.asarray(lm["svc"], dtype=np.float64)
    svc_top, svc_bottom = svc[-1], svc[0]
    clav = np.asarray(lm[f"clavicle_{side}"], dtype=np.float64)
    lateral = -1.0 if side == "right" else 1.0
    start = clav + np.array([lateral * rng.uniform(25, 45), 0.0, -rng.uniform(12, 20)])
    mid = clav + np.array([-lateral * 20.0, 0.0, -rng.uniform(5, 12)])
    pts = [start, mid, svc_top + np.array([0, 0, 8.0])]
    pts += [svc[len(svc) // 2], svc_bottom + np.array([0, 0, -tip_drop])]
    return pts


def render_device(kind: str, side: str | None, rng: np.random.Generator, atlas: Atlas, size: int) -> np.ndarray:
    """Line-integral map (size x size) of one device; ``side`` is the access / pocket side."""
    pix = atlas.geometry.fov_mm / size
    lm = atlas.landmarks
    if kind == "et_tube":
        tr = np.asarray(lm["trachea"], dtype=np.float64)
        carina = np.asarray(lm["carina"], dtype=np.float64)
        tip_z = carina[2] + rng.uniform(30, 60)
        path3 = tr[tr[:, 2] >= tip_z][::3]
        top = tr[-1] + np.array([0, 0, 120.0])
        path3 = np.vstack([path3, top])
        px = catmull_rom(_to_px(atlas, path3, size), step=0.7)
        out = tube_projection(size, px, 4.5, MU_PVC, inner=3.5, pix_mm=pix)
        stripe = px + np.array([0.0, 3.2 / pix])
        return out + tube_projection(size, stripe, 0.8, MU_STRIPE, pix_mm=pix)
    if kind == "central_line":
        pts = _venous_path(atlas, side or "right", rng, rng.uniform(-10, 15))
        px = catmull_rom(_to_px(atlas, np.array(pts), size), step=0.7)
        return tube_projection(size, px, 1.0, MU_CATHETER, pix_mm=pix)
    if kind == "pacemaker":
        side = side or "left"
        clav = np.asarray(lm[f"clavicle_{side}"], dtype=np.float64)
        lateral = -1.0 if side == "right" else 1.0
        can = clav + np.array([lateral * rng.uniform(0, 20), 0.0, -rng.uniform(35, 50)])
        ra = np.asarray(lm["right_atrium"], dtype=np.float64)
        rv = np.asarray(lm["rv_apex"], dtype=np.float64)
        venous = _venous_path(atlas, side, rng, 0.0)
        venous[0] = can
        out = np.zeros((size, size), np.float32)
        leads = [venous + [ra + np.array([8.0, 0, 12.0])], venous + [ra + np.array([10.0, 0, -5.0]), rv]]
        for lead in leads:
            px = catmull_rom(_to_px(atlas, np.array(lead), size), step=0.7)
            out += tube_projection(size, px, 1.0, MU_LEAD, pix_mm=pix)
        c = _to_px(atlas, can[None], size)[0]
        rr, cc = np.mgrid[0:size, 0:size].astype(np.float64)
        ang = rng.uniform(-0.4, 0.4)
        u = ((rr - c[0]) * np.cos(ang) + (cc - c[1]) * np.sin(ang)) * pix / 26.0
        v = (-(rr - c[0]) * np.sin(ang) + (cc - c[1]) * np.cos(ang)) * pix / 22.5
        sup = (np.abs(u) ** 4 + np.abs(v) ** 4) ** 0.25  # rounded rectangle (superellipse)
        edge = np.clip((1.0 - sup) * 22.5 / max(pix, 0.5), 0, 1)
        out += (7.0 * MU_TITANIUM * edge).astype(np.float32)
        return out
    raise ValueError(f"unknown device kind {kind!r}")
