"""The phantom atlas: the CT preprocessed once into projected components and low-resolution fields.

Line integrals are linear, so the radiograph of the CT is the sum of the
projections of its parts. We project each part once per view, with the view's
divergent-beam magnification (8 depth slabs, each resampled with its own
magnification; see :mod:`geometry`), onto a 512 x 512 canonical detector grid:

* ``soft``: water-equivalent soft tissue of the body (the CT table is removed),
  including the water part of bone voxels;
* ``bone`` / ``ribs``: attenuation of bone *in excess of water* (so bone
  density can be scaled with age), ribs one map per rib (right 1..12, left 1..12);
* ``heart``: the cardiac blood pool and wall;
* ``lung``: each lung's attenuation (air plus vessels: the lung texture).

The CT is contrast-enhanced; blood-filled labels and unlabelled soft tissue are
clipped to blood density so the heart and vessels look as on a plain film.

For findings, a low-resolution copy (about 2.8 x 2.8 x 2.5 mm voxels) keeps
attenuation, labels, and distance fields (depth inside each lung, distance from
the heart, distance from the mediastinum), so a finding is a cheap 3-D edit of
attenuation inside the right label region. Landmarks (trachea, carina, SVC,
heart chambers, clavicles) place support devices.

The atlas is cached as ``atlas_<view>_v<version>.npz`` next to the CT, so later
runs start in well under a second. A freshly built atlas is rounded to the
cache's precision before use, so a run that builds it and a run that loads it
render the same pixels.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, sparse

from chexgen.errors import ChexgenError
from chexgen.phantom.geometry import VIEWS, Geometry
from chexgen.phantom.source import CTVolume, cache_dir, load_ct
from chexgen.utils import atomic_path

__all__ = ["Atlas", "load_atlas", "build_atlas", "MU_WATER", "hu_to_mu", "RIB_NAMES", "ATLAS_SIZE", "LOW_FACTOR"]

log = logging.getLogger(__name__)

ATLAS_VERSION = 5
ATLAS_SIZE = 512  # canonical detector grid
LOW_FACTOR = 4  # in-plane downsampling of the low-resolution finding volume
N_SLABS = 8
MU_WATER = 0.0206  # linear attenuation of water per mm at ~60 keV effective energy
# A detector pixel belongs to a rib when the ray crosses at least ~5 mm of rib (excess over water
# of about 0.002 per mm): this gives the whole rib outline, as VinDr-RibCXR annotates it.
RIB_MASK_THRESHOLD = 0.01

LUNG_RIGHT = (12, 13, 14)
LUNG_LEFT = (10, 11)
LOBES = {10: "left upper", 11: "left lower", 12: "right upper", 13: "right middle", 14: "right lower"}
HEART = (51, 61)
TRACHEA = 16
SVC = 62
BLOOD = tuple(range(51, 69))
RIBS_RIGHT = tuple(range(104, 116))
RIBS_LEFT = tuple(range(92, 104))
RIB_NAMES = tuple(f"rib_right_{i}" for i in range(1, 13)) + tuple(f"rib_left_{i}" for i in range(1, 13))
BONES = tuple(range(25, 51)) + tuple(range(69, 79)) + (91, 116)
MEDIASTINUM = (15, 16) + tuple(range(51, 63))


def hu_to_mu(hu: np.ndarray) -> np.ndarray:
    """Linear attenuation per mm from Hounsfield units (water-referenced; air -> 0)."""
    return np.maximum(MU_WATER * (1.0 + hu / 1000.0), 0.0).astype(np.float32)


@dataclass
class Atlas:
    """Everything a case is rendered from, for one view."""

    geometry: Geometry
    soft: np.ndarray  # (S, S) line integrals (dimensionless: mu * mm)
    bone: np.ndarray  # (S, S) excess over water, bones other than ribs
    ribs: np.ndarray  # (24, S, S) excess over water, RIB_NAMES order
    heart: np.ndarray  # (S, S)
    lung: np.ndarray  # (2, S, S) right, left
    lung_mask: np.ndarray  # (2, S, S) bool
    heart_mask: np.ndarray  # (S, S) bool
    rib_mask: np.ndarray  # (24, S, S) bool
    mu_lo: np.ndarray  # (X, Y, Z) float32, low-resolution attenuation
    lab_lo: np.ndarray  # (X, Y, Z) uint8 labels
    spacing_lo: tuple[float, float, float]
    d_lung: np.ndarray  # (X, Y, Z) float32: mm from the lung surface inside each lung (0 outside)
    d_heart: np.ndarray  # mm from the heart
    d_med: np.ndarray  # mm from the mediastinum
    landmarks: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.soft.shape[-1]

    def lung_lo(self, side: str) -> np.ndarray:
        """Boolean low-resolution mask of one lung ('right' or 'left')."""
        return np.isin(self.lab_lo, LUNG_RIGHT if side == "right" else LUNG_LEFT)


def _interp_matrix(coords: np.ndarray, n: int, clamp: bool) -> sparse.csr_matrix:
    """Sparse linear-interpolation weights (len(coords), n); outside samples are 0 unless ``clamp``."""
    q = np.clip(coords, 0, n - 1) if clamp else coords
    f = np.floor(q).astype(int)
    t = (q - f).astype(np.float32)
    rows = np.arange(len(coords))
    r, c, v = [], [], []
    for idx, wt in ((f, 1 - t), (f + 1, t)):
        ok = (idx >= 0) & (idx < n)
        if not clamp:
            ok &= (coords >= -0.5) & (coords <= n - 0.5)
        r.append(rows[ok]), c.append(idx[ok]), v.append(wt[ok])
    return sparse.csr_matrix((np.concatenate(v), (np.concatenate(r), np.concatenate(c))), shape=(len(coords), n))


def _resample(P: np.ndarray, Wz: sparse.csr_matrix, Wx: sparse.csr_matrix) -> np.ndarray:
    """(X, Z) slab projection -> (S, S) detector image: out = Wz P^T Wx^T with sparse factors."""
    A = np.asarray(Wx @ P)  # (S, Z)
    return np.asarray(Wz @ A.T, dtype=np.float32)  # (S, S)


def _prepare_volume(ct: CTVolume) -> tuple[np.ndarray, np.ndarray]:
    """Attenuation volume with the table removed and contrast clipped to blood; body mask."""
    hu = ct.hu.copy()
    lab = ct.labels
    lut = np.zeros(256, dtype=bool)
    lut[list(BONES + RIBS_LEFT + RIBS_RIGHT)] = True
    in_bone = lut[lab]
    # Contrast agent: blood pools and unlabelled tissue to plain-film blood density.
    clip = ~in_bone & (hu > 60)
    hu[clip] = 45.0
    f = LOW_FACTOR
    small = hu[f // 2 :: f, f // 2 :: f, :] > -400
    comp, n = ndimage.label(small)
    if n == 0:
        raise ChexgenError("phantom CT: no body found above -400 HU")
    sizes = ndimage.sum_labels(np.ones_like(comp), comp, index=np.arange(1, n + 1))
    body_small = comp == (1 + int(np.argmax(sizes)))
    body_small = ndimage.binary_closing(body_small, iterations=2) | ndimage.binary_fill_holes(body_small)
    body = np.repeat(np.repeat(body_small, f, axis=0), f, axis=1)[: hu.shape[0], : hu.shape[1]]
    body |= lab > 0
    mu = hu_to_mu(hu)
    mu[~body] = 0.0
    return mu, body


def _component_ids(lab: np.ndarray) -> np.ndarray:
    """Per-voxel component: 0 soft, 1 bone, 2 heart, 3 right lung, 4 left lung, 5.. ribs (RIB_NAMES order)."""
    lut = np.zeros(256, dtype=np.int16)  # one table lookup instead of 28 passes over the volume
    lut[list(BONES)] = 1
    lut[list(HEART)] = 2
    lut[list(LUNG_RIGHT)] = 3
    lut[list(LUNG_LEFT)] = 4
    for n, rib in enumerate(RIBS_RIGHT + RIBS_LEFT):
        lut[rib] = 5 + n
    return lut[lab]


def _landmarks(ct: CTVolume) -> dict[str, Any]:
    sx, sy, sz = ct.spacing
    lab = ct.labels
    out: dict[str, Any] = {}

    def centroid_path(label: int) -> list[list[float]]:
        idx = np.argwhere(lab == label)
        path = []
        for k in np.unique(idx[:, 2]):
            sel = idx[idx[:, 2] == k]
            path.append([float(sel[:, 0].mean() * sx), float(sel[:, 1].mean() * sy), float(k * sz)])
        return path

    out["trachea"] = centroid_path(TRACHEA)
    out["carina"] = out["trachea"][0]
    out["svc"] = centroid_path(SVC)
    heart = np.argwhere(np.isin(lab, HEART)).astype(np.float64) * np.array([sx, sy, sz])
    out["heart_center"] = heart.mean(0).tolist()
    # Right atrium: the right-most part of the heart; right ventricular apex: left, inferior, anterior.
    out["right_atrium"] = heart[heart[:, 0] < np.percentile(heart[:, 0], 8)].mean(0).tolist()
    score = heart[:, 0] - heart[:, 2] + heart[:, 1]
    out["rv_apex"] = heart[score > np.percentile(score, 97)].mean(0).tolist()
    for name, label in (("clavicle_left", 73), ("clavicle_right", 74)):
        pts = np.argwhere(lab == label).astype(np.float64) * np.array([sx, sy, sz])
        out[name] = pts.mean(0).tolist()
    for side, ids in (("right", LUNG_RIGHT), ("left", LUNG_LEFT)):
        pts = np.argwhere(np.isin(lab, ids)).astype(np.float64) * np.array([sx, sy, sz])
        out[f"lung_{side}_min"] = pts.min(0).tolist()
        out[f"lung_{side}_max"] = pts.max(0).tolist()
    return out


def build_atlas(ct: CTVolume, view: str = "PA") -> Atlas:
    """Project the CT's components for ``view`` and build the low-resolution finding volume (a few seconds)."""
    if view not in VIEWS:
        raise ChexgenError(f"unknown view {view!r}; expected one of {VIEWS}")
    sx, sy, sz = ct.spacing
    mu, body = _prepare_volume(ct)
    lab = ct.labels
    X, Y, Z = mu.shape
    ys = np.where(body.any(axis=(0, 2)))[0]
    xs = np.where(body[:, :, Z // 2].any(axis=1))[0]
    geo = Geometry(
        view=view,
        x_center=float(0.5 * (xs[0] + xs[-1]) * sx),
        z_center=float((Z - 1) * sz + 10.0 - 170.0),
        y_front=float(ys[-1] * sy),
        y_back=float(ys[0] * sy),
    )
    comp = _component_ids(lab)
    n_comp = 5 + 24
    # Water part of bone and rib voxels goes to soft tissue; their excess stays with the bone maps.
    is_bone = (comp == 1) | (comp >= 5)
    weight = np.where(is_bone, mu - MU_WATER * body, mu).astype(np.float32)
    S = ATLAS_SIZE
    maps = np.zeros((n_comp, S, S), dtype=np.float32)
    soft_extra = np.zeros((S, S), dtype=np.float32)
    edges = np.linspace(0, Y, N_SLABS + 1).astype(int)
    for a, b in zip(edges[:-1], edges[1:]):
        c = comp[:, a:b, :]
        flat = (c.astype(np.int64) * X + np.arange(X)[:, None, None]) * Z + np.arange(Z)[None, None, :]
        sums = np.bincount(flat.ravel(), weights=weight[:, a:b, :].ravel(), minlength=n_comp * X * Z)
        P = sums.reshape(n_comp, X, Z).astype(np.float32) * sy
        water = (MU_WATER * sy) * (is_bone[:, a:b, :] & body[:, a:b, :]).sum(axis=1).astype(np.float32)
        ci, ck = geo.slab_sampling(0.5 * (a + b) * sy, S, sx, sz)
        Wx = _interp_matrix(ci, X, clamp=False)
        Wz_zero = _interp_matrix(ck, Z, clamp=False)
        Wz_clamp = _interp_matrix(ck, Z, clamp=True)  # soft tissue continues above the scanned range
        maps[0] += _resample(P[0], Wz_clamp, Wx)
        for n in range(1, n_comp):
            if P[n].any():
                maps[n] += _resample(P[n], Wz_zero, Wx)
        soft_extra += _resample(water, Wz_zero, Wx)
    soft = maps[0] + soft_extra
    # Above the scanned range the soft tissue repeats the top slice; smooth it across (neck and
    # shoulders have no fine detail there) so it reads as tissue, not as vertical streaks.
    top_row = int(np.ceil(geo.to_pixel(np.array([geo.x_center]), np.array([0.5 * (geo.y_front + geo.y_back)]),
                                       np.array([(Z - 1) * sz]), S)[0][0]))
    if top_row > 0:
        soft[:top_row] = ndimage.gaussian_filter1d(soft[:top_row], sigma=12.0 / (geo.fov_mm / S), axis=1)
    lo = _lowres(ct, mu)
    atlas = Atlas(
        geometry=geo,
        soft=soft,
        bone=maps[1],
        ribs=maps[5:],
        heart=maps[2],
        lung=maps[3:5],
        lung_mask=maps[3:5] > 0.02,
        heart_mask=maps[2] > 0.5 * MU_WATER * sy * 4,
        rib_mask=maps[5:] > RIB_MASK_THRESHOLD,
        landmarks=_landmarks(ct),
        **lo,
    )
    return atlas


def _lowres(ct: CTVolume, mu: np.ndarray) -> dict[str, Any]:
    f = LOW_FACTOR
    X, Y, Z = mu.shape
    mu_lo = mu[: X // f * f, : Y // f * f].reshape(X // f, f, Y // f, f, Z).mean(axis=(1, 3)).astype(np.float32)
    lab_lo = ct.labels[f // 2 :: f, f // 2 :: f, :][: X // f, : Y // f].copy()
    sx, sy, sz = ct.spacing
    spacing = (sx * f, sy * f, sz)
    lungs = np.isin(lab_lo, LUNG_RIGHT + LUNG_LEFT)
    d_lung = np.zeros(lab_lo.shape, dtype=np.float32)
    for ids in (LUNG_RIGHT, LUNG_LEFT):
        m = np.isin(lab_lo, ids)
        d_lung += (ndimage.distance_transform_edt(m, sampling=spacing) * m).astype(np.float32)
    d_heart = ndimage.distance_transform_edt(~np.isin(lab_lo, HEART), sampling=spacing).astype(np.float32)
    d_med = ndimage.distance_transform_edt(~np.isin(lab_lo, MEDIASTINUM), sampling=spacing).astype(np.float32)
    del lungs
    return dict(mu_lo=mu_lo, lab_lo=lab_lo, spacing_lo=spacing, d_lung=d_lung, d_heart=d_heart, d_med=d_med)


_ARRAYS = ("soft", "bone", "ribs", "heart", "lung", "lung_mask", "heart_mask", "rib_mask",
           "mu_lo", "lab_lo", "d_lung", "d_heart", "d_med")
_HALF = ("d_lung", "d_heart", "d_med")


def _as_stored(atlas: Atlas) -> Atlas:
    """The atlas with exactly the numbers its cache file holds (distance fields rounded to float16).

    A fresh build must render from these and not from its float32 originals:
    otherwise the first run on an empty cache (and the workers it forks) and every
    later run that loads the cache draw different pixels from the same seed.
    """
    for k in _HALF:
        setattr(atlas, k, getattr(atlas, k).astype(np.float16).astype(np.float32))
    return atlas


def _save(atlas: Atlas, path: Path) -> None:
    arrays = {k: getattr(atlas, k) for k in _ARRAYS}
    for k in _HALF:
        arrays[k] = arrays[k].astype(np.float16)
    meta = {"geometry": atlas.geometry.__dict__, "spacing_lo": atlas.spacing_lo, "landmarks": atlas.landmarks,
            "version": ATLAS_VERSION}
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)


def _load(path: Path) -> Atlas:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        arrays = {k: z[k] for k in _ARRAYS}
    for k in _HALF:
        arrays[k] = arrays[k].astype(np.float32)
    return Atlas(geometry=Geometry(**meta["geometry"]), spacing_lo=tuple(meta["spacing_lo"]),
                 landmarks=meta["landmarks"], **arrays)


_MEMORY: dict[tuple[str, str], Atlas] = {}


def load_atlas(view: str = "PA", source: str | os.PathLike | None = None, cache: str | os.PathLike | None = None) -> Atlas:
    """The atlas for ``view``: from memory, from the npz cache, or built from the verified CT (then cached)."""
    if view not in VIEWS:
        raise ChexgenError(f"unknown view {view!r}; expected one of {VIEWS}")
    folder = Path(cache) if cache is not None else cache_dir()
    if folder.exists() and not folder.is_dir():
        raise ChexgenError(f"--cache {folder}: is a file; expected a folder for the CT and the atlas")
    path = folder / f"atlas_{view}_v{ATLAS_VERSION}.npz"
    key = (str(path), view)
    if key in _MEMORY:
        return _MEMORY[key]
    if path.is_file():
        try:
            atlas = _load(path)
        except (OSError, ValueError, KeyError) as e:
            log.warning("%s: unreadable atlas cache (%s); rebuilding", path, e)
            atlas = None
    else:
        atlas = None
    if atlas is None:
        log.info("building the phantom atlas for %s (once; cached in %s)", view, folder)
        atlas = _as_stored(build_atlas(load_ct(source, cache=folder), view))
        folder.mkdir(parents=True, exist_ok=True)
        _save(atlas, path)
    _MEMORY[key] = atlas
    return atlas
