"""Physical models of findings, inserted as 3-D attenuation changes in the low-resolution CT.

Every model edits the linear attenuation of lung voxels of the right side and
region (from the TotalSegmentator label map and its distance fields), then the
*change* alone is projected (line integrals are linear) and added to the
radiograph. Attenuation values are water-referenced (``hu_to_mu``).

Models (side / zone / severity choose where and how much):

* Pleural Effusion: fluid (15 HU) fills the dependent lung base up to a
  meniscus that rises towards the lateral chest wall, so a small effusion only
  blunts the costophrenic angle; height 17 / 28 / 45 % of the lung (medially half that, laterally 1.8 times).
* Pneumothorax: pleural air of an erect patient. Lung within a depth of
  10 / 22 / 40 mm of the pleura (deepest at the apex and lateral wall, none at
  the base) becomes air. Where a ray meets less than 15 % of the lung it met
  before, the projected lung texture is scaled down with that fraction (it is
  gone); the edge of that region inside the lung is the visceral pleural line
  (the collapsed lung's surface seen tangentially), drawn one pixel wide.
* Consolidation: one lobe's air spaces fill with fluid (30 HU) within an
  irregular region (radius 22 / 35 / 60 mm) around a seed in the chosen zone;
  fissures bound it, as in lobar pneumonia.
* Pneumonia: patchy air-space opacity (-700..30 HU from a smooth random field)
  in an irregular region (25 / 38 / 55 mm), may cross fissures.
* Lung Opacity (alone): ground-glass haze (about -380 HU), 1 cm soft edge.
* Atelectasis: plate-like (discoid) collapse: a near-horizontal band of lung
  5 / 9 / 14 mm thick becomes airless (0 HU).
* Edema: interstitial and alveolar fluid raises lung density by up to
  300 / 500 / 750 HU, decaying away from the mediastinum (perihilar
  "bat-wing"), both lungs.
* Lung Lesion: nodule (radius 6 / 9 / 13 mm) or mass (18 / 24 / 32 mm), soft
  tissue (40 HU), lobulated surface, partial-volume edge.
* Pleural Other: pleural thickening along the lateral wall or an apical cap,
  4 / 7 / 11 mm of soft tissue at the pleural surface.
* Cardiomegaly: the heart is scaled about its centre (transverse x 1.15 /
  1.25 / 1.35, cranio-caudal half as much); lung inside the larger heart
  becomes blood. Normal hearts are scaled x 0.84..0.93 (heart voxels outside
  become aerated lung) so their cardiothoracic ratio stays in the normal range.
* Enlarged Cardiomediastinum: the upper mediastinum widens by up to
  10 / 17 / 26 mm into both lungs, widest at the arch and tapering towards the
  heart base and the thoracic inlet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from chexgen.data.vocabulary import SEVERITIES
from chexgen.phantom.atlas import (
    HEART,
    LUNG_LEFT,
    LUNG_RIGHT,
    MU_WATER,
    Atlas,
    _interp_matrix,
)
from chexgen.phantom.findings import Finding
from chexgen.phantom.resample import resize_map

__all__ = ["LungSpace", "Effect", "lung_space", "insert_finding", "scale_heart", "project", "project_points", "CARDIOMEGALY_SCALE", "NORMAL_HEART_SCALE"]

ZONE_RANGE = {"lower": (0.0, 0.36), "middle": (0.36, 0.66), "upper": (0.66, 1.01)}
SEV = {name: i for i, name in enumerate(SEVERITIES)}  # small 0, moderate 1, large 2
MU_FLUID = MU_WATER * 1.015
MU_BLOOD = MU_WATER * 1.04
MU_SOFT = MU_WATER * 1.04
PLEURAL_LINE = 0.15  # line-integral contrast of the visceral pleural line
CARDIOMEGALY_SCALE = {"small": 1.15, "moderate": 1.25, "large": 1.35}
NORMAL_HEART_SCALE = (0.84, 0.93)


@dataclass
class LungSpace:
    """Lung voxels of the low-resolution volume as flat arrays (everything a finding model needs)."""

    ix: np.ndarray
    iz: np.ndarray
    xyz: np.ndarray  # (n, 3) mm
    side: np.ndarray  # 0 right, 1 left
    lobe: np.ndarray
    h: np.ndarray  # height within own lung, 0 base .. 1 apex
    lat: np.ndarray  # 0 medial .. 1 lateral within own lung
    d_lung: np.ndarray
    d_heart: np.ndarray
    d_med: np.ndarray
    mu: np.ndarray
    shape_xz: tuple[int, int]
    dy: float
    heart_top: float  # Z (mm) of the heart base (top of the cardiac silhouette)
    heart_center: np.ndarray  # (3,) mm
    lung_top: float  # Z (mm) of the higher lung apex
    heart_lo: np.ndarray  # (X, Y, Z) bool heart label, low resolution
    heart_idx: tuple[np.ndarray, np.ndarray, np.ndarray]  # voxel indices of the heart
    heart_mu: np.ndarray
    spacing: tuple[float, float, float]


_SPACES: dict[int, LungSpace] = {}


def lung_space(atlas: Atlas) -> LungSpace:
    """Flattened lung voxels of ``atlas`` (computed once per atlas object)."""
    key = id(atlas)
    if key in _SPACES:
        return _SPACES[key]
    lab = atlas.lab_lo
    lungs = np.isin(lab, LUNG_RIGHT + LUNG_LEFT)
    ii, jj, kk = np.nonzero(lungs)
    sx, sy, sz = atlas.spacing_lo
    xyz = np.stack([ii * sx, jj * sy, kk * sz], axis=1).astype(np.float32)
    lobe = lab[ii, jj, kk]
    side = np.isin(lobe, LUNG_LEFT).astype(np.int8)
    h = np.zeros(len(ii), np.float32)
    lat = np.zeros(len(ii), np.float32)
    for s in (0, 1):
        sel = side == s
        z = xyz[sel, 2]
        x = xyz[sel, 0]
        h[sel] = (z - z.min()) / (z.max() - z.min())
        lat[sel] = (x.max() - x) / (x.max() - x.min()) if s == 0 else (x - x.min()) / (x.max() - x.min())
    heart_c = np.asarray(atlas.landmarks["heart_center"], dtype=np.float32)
    space = LungSpace(
        ix=ii, iz=kk, xyz=xyz, side=side, lobe=lobe, h=h, lat=lat,
        d_lung=atlas.d_lung[ii, jj, kk], d_heart=atlas.d_heart[ii, jj, kk], d_med=atlas.d_med[ii, jj, kk],
        mu=atlas.mu_lo[ii, jj, kk], shape_xz=(lab.shape[0], lab.shape[2]), dy=sy,
        heart_top=float(heart_c[2] + 20.0),
        heart_center=heart_c,
        lung_top=float(xyz[:, 2].max()),
        heart_lo=np.isin(lab, HEART),
        heart_idx=np.nonzero(np.isin(lab, HEART)),
        heart_mu=atlas.mu_lo[np.isin(lab, HEART)],
        spacing=(sx, sy, sz),
    )
    _SPACES[key] = space
    return space


def _waves(rng: np.random.Generator, xyz: np.ndarray, n: int = 6, wavelength: tuple[float, float] = (18.0, 50.0)) -> np.ndarray:
    """Smooth random field (~unit variance) at points ``xyz``: a sum of random plane waves."""
    out = np.zeros(len(xyz), np.float32)
    for _ in range(n):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        k = 2 * np.pi / rng.uniform(*wavelength)
        out += np.cos((xyz @ (d * k)).astype(np.float32) + rng.uniform(0, 2 * np.pi))
    return out * np.sqrt(2.0 / n)


_MATS: dict[tuple, tuple] = {}


def project_points(atlas: Atlas, ix: np.ndarray, iz: np.ndarray, y: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """Divergent-beam projection of per-voxel values (attenuation per mm) of low-resolution voxels onto a ``size`` grid.

    Values are summed along the beam (parallel within the group) and the sum is
    placed with the magnification of the group's mean depth (1 cm bins).
    """
    X, _, Z = atlas.lab_lo.shape
    out = np.zeros((size, size), np.float32)
    if len(ix) == 0:
        return out
    dy = atlas.spacing_lo[1]
    P = np.bincount(ix * Z + iz, weights=values * dy, minlength=X * Z).reshape(X, Z)
    w = np.abs(values) + 1e-12
    yb = float(np.round(np.average(y, weights=w) / 10.0) * 10.0)
    key = (id(atlas), yb, size)
    if key not in _MATS:
        sx, _, sz = atlas.spacing_lo
        ci, ck = atlas.geometry.slab_sampling(yb, size, sx, sz)
        _MATS[key] = (_interp_matrix(ci, X, clamp=False), _interp_matrix(ck, Z, clamp=False))
    Wx, Wz = _MATS[key]
    A = np.asarray(Wx @ P)
    return np.asarray(Wz @ A.T, dtype=np.float32)


def project(atlas: Atlas, space: LungSpace, sel: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """Projection of values at lung voxels ``sel`` (indices into ``space``)."""
    return project_points(atlas, space.ix[sel], space.iz[sel], space.xyz[sel, 1], values, size)


HEART_MASK_MM = 6.0  # path length through the heart that counts as cardiac silhouette


def scale_heart(atlas: Atlas, space: LungSpace, mu: np.ndarray, scale: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize the heart about its centre (transverse ``scale``, cranio-caudal half as much).

    Growing: lung voxels inside the scaled heart become blood. Shrinking: heart
    voxels outside it become partly aerated tissue (0.45 x water: the silhouette narrows
    without a dark rim). Returns the
    projected change and the cardiac silhouette mask on the ``size`` grid.
    """
    c = space.heart_center
    f = np.array([scale, scale, 1 + 0.5 * (scale - 1)], np.float32)
    sx, sy, sz = space.spacing
    spacing = np.array([sx, sy, sz], np.float32)
    shape = np.array(space.heart_lo.shape)

    def inside(xyz: np.ndarray) -> np.ndarray:
        q = np.round((c + (xyz - c) / f) / spacing).astype(int)
        ok = ((q >= 0) & (q < shape)).all(1)
        out = np.zeros(len(xyz), bool)
        out[ok] = space.heart_lo[q[ok, 0], q[ok, 1], q[ok, 2]]
        return out

    hx, hy, hz = space.heart_idx
    hxyz = np.stack([hx * sx, hy * sy, hz * sz], 1).astype(np.float32)
    delta = np.zeros((size, size), np.float32)
    keep = np.ones(len(hx), bool)
    grown = np.zeros(0, np.int64)
    if scale > 1:
        grown = np.flatnonzero(inside(space.xyz))
        delta += project(atlas, space, grown, MU_BLOOD - mu[grown], size)
        mu[grown] = MU_BLOOD
    elif scale < 1:
        keep = inside(hxyz)
        gone = ~keep
        delta += project_points(atlas, hx[gone], hz[gone], hxyz[gone, 1], 0.45 * MU_WATER - space.heart_mu[gone], size)
    path = project_points(atlas, hx[keep], hz[keep], hxyz[keep, 1], np.ones(int(keep.sum()), np.float32), size)
    path += project(atlas, space, grown, np.ones(len(grown), np.float32), size)
    return delta, path > HEART_MASK_MM


@dataclass
class Effect:
    """What one finding does to the radiograph, on the canonical grid of the render size."""

    finding: Finding
    delta: np.ndarray  # (S, S) added line integral
    mask: np.ndarray  # (S, S) bool: projected extent
    texture_side: int | None = None  # lung whose texture is scaled (pneumothorax)
    texture_factor: np.ndarray | None = None


MASK_THRESHOLD = 0.012  # line-integral change that counts as "visibly changed" (~0.6 mm of water)


def _seed(rng: np.random.Generator, space: LungSpace, cand: np.ndarray, margin: float) -> np.ndarray | None:
    ok = cand & (space.d_lung >= margin)
    if not ok.any():
        ok = cand
    if not ok.any():
        return None
    return space.xyz[rng.choice(np.flatnonzero(ok))]


def _sides(f: Finding) -> tuple[int, ...]:
    return {"right": (0,), "left": (1,), "bilateral": (0, 1)}.get(f.side or "bilateral", (0, 1))


def _zone(space: LungSpace, zone: str | None) -> np.ndarray:
    lo, hi = ZONE_RANGE.get(zone or "", (0.0, 1.01))
    return (space.h >= lo) & (space.h < hi)


def insert_finding(
    f: Finding, rng: np.random.Generator, atlas: Atlas, space: LungSpace, mu: np.ndarray, size: int
) -> Effect | None:
    """Apply finding ``f`` to the per-voxel attenuation ``mu`` (in place) and return its projected effect."""
    sev = SEV.get(f.severity or "moderate", 1)
    sides = np.isin(space.side, _sides(f))
    new: np.ndarray | None = None
    sel: np.ndarray
    label = f.label
    if label == "Pleural Effusion":
        h0 = (0.17, 0.28, 0.45)[sev] * rng.uniform(0.85, 1.15)
        level = h0 * (0.5 + 1.3 * space.lat**2) + 0.01 * _waves(rng, space.xyz, 3, (40, 80))
        sel = np.flatnonzero(sides & (space.h < level))
        new = np.full(len(sel), MU_FLUID, np.float32)
    elif label == "Pneumothorax":
        depth = (10.0, 22.0, 40.0)[sev] * rng.uniform(0.85, 1.15)
        # Erect patient: pleural air collects at the apex and along the lateral wall.
        local = depth * np.clip((space.h - 0.15) / 0.55, 0.0, 1.0) ** 0.7 * np.clip((space.lat - 0.15) / 0.5, 0.0, 1.0) ** 0.5
        air = sides & (space.d_lung < local)
        s = _sides(f)[0]
        mine = np.flatnonzero(space.side == s)
        before = project(atlas, space, mine, np.ones(len(mine), np.float32), size)
        keep = np.flatnonzero((space.side == s) & ~air)
        after = project(atlas, space, keep, np.ones(len(keep), np.float32), size)
        factor = np.where(before > 0.5, np.clip(after / np.maximum(before, 1e-6), 0, 1), 1.0).astype(np.float32)
        mu[np.flatnonzero(air)] = 0.0
        lung_px = atlas_lung_mask(atlas, s, size)
        mask = lung_px & (factor < 0.15)
        # Visceral pleural line: the collapsed lung's edge seen tangentially, one pixel wide.
        edge = ndimage.binary_dilation(mask) & ~mask & lung_px
        delta = ndimage.gaussian_filter(edge.astype(np.float32) * PLEURAL_LINE, 0.5)
        return Effect(f, delta, mask, texture_side=s, texture_factor=factor)
    elif label in ("Consolidation", "Pneumonia", "Lung Opacity"):
        zone = _zone(space, f.zone) & sides
        radius = {"Consolidation": (22.0, 35.0, 60.0), "Pneumonia": (25.0, 38.0, 55.0), "Lung Opacity": (30.0, 45.0, 65.0)}[label][sev]
        seed = _seed(rng, space, zone, 12.0)
        if seed is None:
            return None
        dist = np.linalg.norm(space.xyz - seed, axis=1)
        near = sides & (dist < 1.5 * radius)
        noise = np.full(len(dist), -10.0, np.float32)
        noise[near] = _waves(rng, space.xyz[near], 6, (20, 60))
        region = near & (dist < radius * (1 + 0.25 * noise))
        if label == "Consolidation":
            lobe = space.lobe[np.argmin(dist)]
            region &= space.lobe == lobe
            sel = np.flatnonzero(region)
            new = np.full(len(sel), MU_WATER * 1.03, np.float32)
        elif label == "Pneumonia":
            sel = np.flatnonzero(region)
            hu = np.clip(-250 + 380 * _waves(rng, space.xyz[sel], 8, (8, 25)), -700, 30)
            new = np.maximum(mu[sel], MU_WATER * (1 + hu / 1000)).astype(np.float32)
        else:
            sel = np.flatnonzero(region)
            edge = np.clip((radius * (1 + 0.25 * noise[sel]) - dist[sel]) / 10.0, 0, 1)
            hu = -380 + 80 * _waves(rng, space.xyz[sel], 4, (10, 30))
            new = np.maximum(mu[sel], mu[sel] + edge * (MU_WATER * (1 + hu / 1000) - mu[sel])).astype(np.float32)
    elif label == "Atelectasis":
        zone = _zone(space, f.zone) & sides & (space.lat > 0.15)
        seed = _seed(rng, space, zone, 10.0)
        if seed is None:
            return None
        thick = (5.0, 9.0, 14.0)[sev]
        tilt = rng.uniform(-0.15, 0.15)
        dz = space.xyz[:, 2] - seed[2] - tilt * (space.xyz[:, 0] - seed[0])
        horiz = np.linalg.norm(space.xyz[:, :2] - seed[:2], axis=1)
        sel = np.flatnonzero(sides & (np.abs(dz) < thick / 2) & (horiz < (35.0, 50.0, 70.0)[sev]))
        new = np.full(len(sel), MU_WATER * 1.0, np.float32)
    elif label == "Edema":
        amp = (300.0, 500.0, 750.0)[sev]
        hu_add = amp * np.exp(-space.d_med / 55.0) * (0.85 + 0.15 * _waves(rng, space.xyz, 6, (12, 40)))
        sel = np.flatnonzero(sides & (hu_add > 5))
        new = np.minimum(mu[sel] + MU_WATER * hu_add[sel] / 1000.0, MU_WATER).astype(np.float32)
    elif label == "Lung Lesion":
        r = ((6.0, 9.0, 13.0) if f.kind != "mass" else (18.0, 24.0, 32.0))[sev]
        seed = _seed(rng, space, _zone(space, f.zone) & sides, 0.8 * r)
        if seed is None:
            return None
        dist = np.linalg.norm(space.xyz - seed, axis=1)
        sel = np.flatnonzero(sides & (dist < 1.4 * r + 3))
        reff = r * (1 + 0.12 * _waves(rng, space.xyz[sel], 5, (8, 30)))
        frac_sel = np.clip((reff - dist[sel]) / 2.8 + 0.5, 0, 1)
        sel, frac_sel = sel[frac_sel > 0], frac_sel[frac_sel > 0]
        frac = np.zeros(len(dist), np.float32)
        frac[sel] = frac_sel
        new = (mu[sel] + frac[sel] * (MU_SOFT - mu[sel])).astype(np.float32)
    elif label == "Pleural Other":
        t = (4.0, 7.0, 11.0)[sev]
        if f.kind == "apical_cap":
            region = sides & (space.h > 0.85)
        else:
            region = sides & _zone(space, f.zone) & (space.lat > 0.55)
        sel = np.flatnonzero(region & (space.d_lung < t))
        new = np.full(len(sel), MU_SOFT, np.float32)
    elif label == "Enlarged Cardiomediastinum":
        w = (10.0, 17.0, 26.0)[sev]
        # Widest at the aortic arch, tapering to nothing at the heart base and at the thoracic inlet.
        z = space.xyz[:, 2]
        z0, z1 = space.heart_top - 10.0, space.lung_top - 10.0
        taper = np.clip(np.sin(np.pi * (z - z0) / max(z1 - z0, 1.0)), 0, 1)
        fill = np.clip((w * taper - space.d_med) / 6.0 + 0.5, 0, 1)  # 6 mm soft margin, no voxel steps
        sel = np.flatnonzero((fill > 0) & (space.lat < 0.5))
        new = (mu[sel] + fill[sel] * (MU_BLOOD - mu[sel])).astype(np.float32)
    else:
        return None
    if len(sel) == 0:
        return None
    delta = project(atlas, space, sel, new - mu[sel], size)
    mu[sel] = new
    mask = np.abs(delta) > MASK_THRESHOLD
    if not mask.any():
        return None
    return Effect(f, delta, mask)


_LUNG_MASKS: dict[tuple, np.ndarray] = {}


def atlas_lung_mask(atlas: Atlas, side: int, size: int) -> np.ndarray:
    """The atlas's lung mask of one side at ``size`` px (area-resampled and thresholded)."""
    key = (id(atlas), side, size)
    if key not in _LUNG_MASKS:
        _LUNG_MASKS[key] = resize_map(atlas.lung_mask[side].astype(np.float32), size) > 0.5
    return _LUNG_MASKS[key]
