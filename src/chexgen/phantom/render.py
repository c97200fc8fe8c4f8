"""Render one phantom case: sum projected components, findings and devices; warp; expose; display.

Order of work for one case (all on the canonical grid at the working size
``min(size, 512)``; larger outputs are upsampled at the end):

1. findings edit the low-resolution lung attenuation in 3-D; each change is
   projected alone (:mod:`insertion`), devices are drawn analytically
   (:mod:`devices`), rib fractures edit one rib's projection;
2. the line integral is the sum of the atlas components (soft tissue scaled by
   habitus, bone scaled by age), lung textures (cut where a pneumothorax
   replaced lung), finding changes, breast shadows and devices;
3. one geometric warp (scale, rotation, inspiration, smooth deformation) moves
   the image and every mask identically;
4. exposure: detected photons ``N = N0 exp(-L)`` with quantum noise and
   detector blur, then the site's processing (auto window, sigmoid contrast,
   gamma, edge enhancement, dynamic-range compression) and collimation. The window
   comes from the finding-free anatomy, so findings never shift it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from chexgen.phantom.atlas import MU_WATER, RIB_NAMES, Atlas
from chexgen.phantom.devices import render_device
from chexgen.phantom.findings import Finding, Prevalence, sample_findings
from chexgen.phantom.insertion import (
    CARDIOMEGALY_SCALE,
    SEV,
    Effect,
    insert_finding,
    lung_space,
    scale_heart,
)
from chexgen.phantom.resample import resize_map
from chexgen.phantom.variation import (
    Anatomy,
    Demographics,
    Site,
    sample_anatomy,
    sample_demographics,
    sample_site,
)

__all__ = ["CaseSpec", "Rendered", "sample_case", "render_case", "case_rng", "MAX_WORK_SIZE"]

MAX_WORK_SIZE = 512
# CT numbers are measured at ~70 keV; a chest radiograph's softer spectrum (~50 keV effective)
# sees the excess attenuation of bone over water about 2 x larger (photoelectric absorption grows as Z^3/E^3).
BONE_ENERGY_FACTOR = 2.0
MU_BREAST = 0.93 * MU_WATER  # mixed fatty / glandular tissue
DRC = 0.5  # fraction of the low spatial frequencies removed by the display processing


def case_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """Generator for (seed, case index, stream): cases are reproducible and independent of worker count."""
    return np.random.default_rng([int(seed), int(index), int(stream)])


@dataclass
class CaseSpec:
    """Every random choice of one case (what to render), before rendering."""

    seed: int
    index: int
    view: str
    findings: list[Finding]
    demographics: Demographics
    anatomy: Anatomy
    site: Site
    acquisition: dict[str, Any]


def sample_case(seed: int, index: int, prevalence: Prevalence, view: str = "PA",
                findings: list[Finding] | None = None) -> CaseSpec:
    """Draw a case; ``findings`` overrides the sampled findings (for contact sheets and tests)."""
    rng = case_rng(seed, index, 0)
    demo = sample_demographics(rng)
    anatomy = sample_anatomy(rng, demo)
    site, acq = sample_site(rng)
    drawn = sample_findings(rng, prevalence)
    return CaseSpec(seed, index, view, drawn if findings is None else list(findings), demo, anatomy, site, acq)


@dataclass
class Rendered:
    image: np.ndarray  # (size, size) float32 in [0, 1], bright = dense
    masks: dict[str, np.ndarray]  # name -> bool (size, size)
    boxes: list[tuple[str, str, tuple[int, int, int, int]]]  # (label, mask name, (x0, y0, x1, y1))
    findings: list[Finding]  # findings actually rendered (in mask order)
    finding_masks: list[str]
    severity: dict[str, float]
    ctr: float
    info: dict[str, Any] = field(default_factory=dict)


_PYRAMID: dict[tuple[int, int], dict[str, np.ndarray]] = {}


def _components(atlas: Atlas, size: int) -> dict[str, np.ndarray]:
    key = (id(atlas), size)
    if key not in _PYRAMID:
        _PYRAMID[key] = {
            "soft": resize_map(atlas.soft, size),
            "bone": resize_map(atlas.bone, size),
            "ribs": resize_map(atlas.ribs, size),
            "heart": resize_map(atlas.heart, size),
            "lung": resize_map(atlas.lung, size),
            "lung_mask": resize_map(atlas.lung_mask.astype(np.float32), size) > 0.5,
            "heart_mask": resize_map(atlas.heart_mask.astype(np.float32), size) > 0.5,
            "rib_mask": resize_map(atlas.rib_mask.astype(np.float32), size) > 0.5,
        }
    return _PYRAMID[key]


def _breasts(atlas: Atlas, comps: dict[str, np.ndarray], size: float, rng: np.random.Generator, S: int) -> np.ndarray:
    """Line integral of two ellipsoids of breast tissue (0.93 x water) over the lower lung zones."""
    out = np.zeros((S, S), np.float32)
    if size <= 0:
        return out
    pix = atlas.geometry.fov_mm / S
    rr, cc = np.mgrid[0:S, 0:S].astype(np.float32)
    for side in (0, 1):
        m = comps["lung_mask"][side]
        rows, cols = np.nonzero(m)
        if len(rows) == 0:
            continue
        r0 = rows.min() + 0.72 * (rows.max() - rows.min()) + rng.uniform(-0.03, 0.03) * S
        lateral = cols.min() if side == 0 else cols.max()
        c0 = lateral + (0.38 if side == 0 else -0.38) * (cols.max() - cols.min())
        a = (65 + 25 * size) / pix
        b = (50 + 20 * size) / pix
        c = 6 + 9 * size  # half-thickness in mm (12..30 mm of breast tissue through the centre)
        q = 1 - ((cc - c0) / a) ** 2 - ((rr - r0) / b) ** 2
        # Tissue hangs: full thickness below the centre, fading out towards the upper pole.
        fade = np.clip(0.5 + (rr - r0) / b, 0, 1)
        out += (2 * c * np.sqrt(np.clip(q, 0, None)) * fade * MU_BREAST).astype(np.float32)
    return out


def _fracture(ribs: np.ndarray, rib_mask: np.ndarray, f: Finding, rng: np.random.Generator, pix: float) -> np.ndarray | None:
    """Rib fracture; returns the fracture mask (a 7 mm disk around the break).

    One rib of the chosen side (zone upper: ribs 3-4, middle: 5-7, lower: 8-9) is broken on
    its lateral arc. A rib is a thin curved plate, so cutting its projection equals projecting
    the cut rib: bone is removed across the rib in a gap of 3 / 4 / 5 mm and the fragment on one
    side is displaced by 1.5 / 4 / 8 mm (small / moderate / large); moderate and large are
    healing fractures with a callus cuff of new bone around the break.
    """
    numbers = {"upper": (3, 4), "middle": (5, 6, 7), "lower": (8, 9)}[f.zone or "middle"]
    k = int(rng.choice(numbers)) - 1 + (0 if f.side == "right" else 12)
    m = rib_mask[k]
    rows, cols = np.nonzero(m)
    if len(rows) < 10:
        return None
    # A point on the lateral arc: the rib's outermost columns.
    lat = (cols.max() - cols) / max(np.ptp(cols), 1) if f.side == "right" else (cols - cols.min()) / max(np.ptp(cols), 1)
    cand = np.flatnonzero((lat > 0.5) & (lat < 0.75))  # inside the lung field, where a rib shows against air
    if len(cand) == 0:
        return None
    i = int(rng.choice(cand))
    p0 = np.array([rows[i], cols[i]], np.float64)
    near = np.hypot(rows - p0[0], cols - p0[1]) < 10.0 / pix
    pts = np.stack([rows[near], cols[near]], 1).astype(np.float64)
    _, _, vt = np.linalg.svd(pts - pts.mean(0), full_matrices=False)
    t = vt[0]
    normal = np.array([-t[1], t[0]])
    S = m.shape[0]
    rr, cc = np.mgrid[0:S, 0:S].astype(np.float64)
    along = (rr - p0[0]) * t[0] + (cc - p0[1]) * t[1]
    radial = np.hypot(rr - p0[0], cc - p0[1])
    sev = SEV[f.severity or "moderate"]
    gap_mm, disp_mm = ((3.0, 1.5), (4.0, 4.0), (5.0, 8.0))[sev]
    gap = (np.abs(along) < max(gap_mm / pix / 2, 0.6)) & (radial < 12.0 / pix)
    fragment = (along >= 0) & (radial < 30.0 / pix) & ~gap
    rib = ribs[k]
    moved = rib * fragment
    shift = normal * disp_mm / pix * (1 if rng.random() < 0.5 else -1)
    moved = ndimage.shift(moved, shift, order=1)
    ribs[k] = rib * ~(fragment | gap) + moved
    mfrag = ndimage.shift((m & fragment).astype(np.float32), shift, order=0) > 0.5
    rib_mask[k] = (m & ~(fragment | gap)) | mfrag
    if sev > 0:
        # Healing fracture: callus, a fusiform cuff of new bone around the break (denser when older).
        amp = (0.0, 0.8, 1.5)[sev] * float(np.percentile(rib[m], 90))
        cuff = np.exp(-0.5 * ((along / (6.0 / pix)) ** 2 + (ndimage.distance_transform_edt(~m) / (2.5 / pix)) ** 2))
        ribs[k] += (amp * cuff * (radial < 12.0 / pix)).astype(np.float32)
    return radial < 7.0 / pix


def _warp_coords(anatomy: Anatomy, S: int, pix: float, apex_row: float, rng: np.random.Generator) -> np.ndarray:
    """Source coordinates (2, S, S) of every output pixel for the case's geometric variation."""
    rr, cc = np.mgrid[0:S, 0:S].astype(np.float32)
    anchor = np.array([apex_row, S / 2], np.float32)
    dr = rr - anchor[0] - anatomy.shift[0] * S
    dc = cc - anchor[1] - anatomy.shift[1] * S
    th = np.deg2rad(anatomy.rotation_deg)
    r1 = np.cos(th) * dr + np.sin(th) * dc
    c1 = -np.sin(th) * dr + np.cos(th) * dc
    src_r = r1 / (anatomy.scale * anatomy.inspiration) + anchor[0]
    src_c = c1 / anatomy.scale + anchor[1]
    if anatomy.deform_mm > 0:
        coarse = rng.normal(size=(2, 5, 5)).astype(np.float32)
        field_ = np.stack([np.asarray(Image.fromarray(g, mode="F").resize((S, S), Image.Resampling.BICUBIC)) for g in coarse])
        field_ *= anatomy.deform_mm / pix / max(np.abs(field_).max(), 1e-6)
        src_r += field_[0]
        src_c += field_[1]
    return np.stack([src_r, src_c])


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def cardiothoracic_ratio(heart: np.ndarray, lungs: np.ndarray) -> float:
    """Widest horizontal extent of the heart over the widest extent of the lungs (both masks)."""
    hc = np.flatnonzero(heart.any(0))
    lc = np.flatnonzero(lungs.any(0))
    if len(hc) == 0 or len(lc) == 0:
        return float("nan")
    return float((hc[-1] - hc[0] + 1) / (lc[-1] - lc[0] + 1))


# RALO-like density grade of each parenchymal finding: 1 hazy, 2 moderate, 3 dense.
_DENSITY = {"Lung Opacity": 1, "Edema": 2, "Pneumonia": 2, "Atelectasis": 3, "Consolidation": 3, "Lung Lesion": 3}


def _ralo(masks: dict[str, np.ndarray], findings: list[Finding], names: list[str]) -> dict[str, float]:
    """Per-lung extent score (0..4 by quartile of the lung covered) x density (1..3), total 0..24."""
    out: dict[str, float] = {}
    for side, lung in (("right", masks["lung_right"]), ("left", masks["lung_left"])):
        area = max(int(lung.sum()), 1)
        cover = np.zeros_like(lung)
        density = 0
        for f, name in zip(findings, names):
            if f.label in _DENSITY:
                part = masks[name] & lung
                if part.any():
                    cover |= part
                    sev_bonus = 1 if f.severity == "large" and _DENSITY[f.label] < 3 else 0
                    density = max(density, min(3, _DENSITY[f.label] + sev_bonus))
        frac = cover.sum() / area
        extent = 0 if frac == 0 else int(min(4, 1 + np.floor(frac / 0.25)))
        out[side] = float(extent * density)
    out["total"] = out["right"] + out["left"]
    return out


def render_case(spec: CaseSpec, atlas: Atlas, size: int) -> Rendered:
    """Render ``spec`` at ``size`` px (square). Deterministic given the spec."""
    S = min(size, MAX_WORK_SIZE)
    pix = atlas.geometry.fov_mm / S
    comps = _components(atlas, S)
    space = lung_space(atlas)
    mu = space.mu.copy()
    an = spec.anatomy

    # -- 3-D edits: heart size (normal range, or cardiomegaly), then findings ---------------------
    cardio = next((f for f in spec.findings if f.label == "Cardiomegaly"), None)
    scale = CARDIOMEGALY_SCALE[cardio.severity or "moderate"] if cardio is not None else an.heart_scale
    L_extra, heart_mask = scale_heart(atlas, space, mu, scale, S)
    ribs = comps["ribs"].copy()
    rib_mask = comps["rib_mask"].copy()
    lung = comps["lung"].copy()
    effects: list[Effect] = []
    devices: list[tuple[Finding, np.ndarray]] = []
    fractures: list[tuple[Finding, np.ndarray]] = []
    for i, f in enumerate(spec.findings):
        rng = case_rng(spec.seed, spec.index, 100 + i)
        if f.label == "Support Devices":
            dev = render_device(f.kind or "et_tube", f.side, rng, atlas, S)
            devices.append((f, dev))
        elif f.label == "Cardiomegaly":
            effects.append(Effect(f, np.zeros((S, S), np.float32), heart_mask))
        elif f.label == "Fracture":
            m = _fracture(ribs, rib_mask, f, rng, pix)
            if m is not None:
                fractures.append((f, m))
        else:
            eff = insert_finding(f, rng, atlas, space, mu, S)
            if eff is not None:
                effects.append(eff)

    # -- line integral --------------------------------------------------------------------------
    for eff in effects:
        if eff.texture_factor is not None and eff.texture_side is not None:
            lung[eff.texture_side] *= eff.texture_factor
    bone = BONE_ENERGY_FACTOR * an.bone_density
    L_anatomy = (an.soft_factor * comps["soft"] + bone * (comps["bone"] + comps["ribs"].sum(0))
                 + comps["heart"] + comps["lung"].sum(0))
    L = (an.soft_factor * comps["soft"] + bone * (comps["bone"] + ribs.sum(0)) + comps["heart"]
         + lung.sum(0) + L_extra)
    for eff in effects:
        L += eff.delta
    L += _breasts(atlas, comps, an.breast_size, case_rng(spec.seed, spec.index, 1), S)
    for _, dev in devices:
        L += dev

    # -- masks on the canonical grid, then one warp for everything ------------------------------
    names: list[str] = ["lung_right", "lung_left", "heart", *RIB_NAMES]
    stack = [comps["lung_mask"][0], comps["lung_mask"][1], heart_mask, *rib_mask]
    findings: list[Finding] = []
    finding_names: list[str] = []
    for n, (f, m) in enumerate([(e.finding, e.mask) for e in effects] + fractures + [(f, d > 0.02) for f, d in devices]):
        name = f"finding_{n}_{f.slug}" if f.label != "Support Devices" else f"device_{n}_{f.slug}"
        names.append(name)
        stack.append(m)
        findings.append(f)
        finding_names.append(name)
    lung_rows = np.flatnonzero(comps["lung_mask"].any(axis=(0, 2)))
    coords = _warp_coords(an, S, pix, float(lung_rows[0]) if len(lung_rows) else S * 0.1, case_rng(spec.seed, spec.index, 2))
    Lw = _bilinear(L, coords)
    masks_w = _nearest(np.stack(stack), coords)
    masks = dict(zip(names, masks_w))

    # -- exposure and display -----------------------------------------------------------------
    rng = case_rng(spec.seed, spec.index, 3)
    acq = spec.acquisition
    n0 = acq["photons"] * pix * pix
    counts = n0 * np.exp(-Lw)
    counts = ndimage.gaussian_filter(counts, spec.site.blur_mm / pix)
    counts = counts + np.sqrt(np.maximum(counts, 0)) * rng.standard_normal(counts.shape).astype(np.float32)
    Ln = -np.log(np.clip(counts / n0, 1e-4, None))
    coll = acq["collimation"]
    top, bottom, left, right = (int(round(c * S)) for c in coll)
    inside = np.zeros((S, S), bool)
    inside[top : S - bottom, left : S - right] = True
    # Site window: anchored on the lungs (darkest anatomy) and the densest 0.3 % of the finding-free
    # anatomy, so the air around the patient saturates black as on clinical images, and a finding
    # never shifts the window (an auto-window would partly cancel diffuse findings such as edema).
    La = _bilinear(L_anatomy, coords)
    # Dynamic-range compression, as vendor processing does: remove half of the very low spatial
    # frequencies (>= 2 cm) so lung detail gets more of the display range than the mediastinum.
    sigma = 20.0 / pix
    La_low = ndimage.gaussian_filter(La, sigma)
    Ln = Ln - DRC * (La_low - La_low.mean())
    La = La - DRC * (La_low - La_low.mean())
    lung_px = (masks["lung_right"] | masks["lung_left"]) & inside
    hi = float(np.percentile(La[inside][::3], 99.7))
    lung_lo = float(np.percentile(La[lung_px], 0.5)) if lung_px.sum() > 50 else float(np.percentile(La[inside], 5))
    lo = lung_lo - 0.2 * (hi - lung_lo)
    v = np.clip((Ln - lo) / max(hi - lo, 1e-6), 0, 1)
    g = acq["gain"]
    v = (1 / (1 + np.exp(-g * (v - 0.5))) - 1 / (1 + np.exp(g / 2))) / (1 / (1 + np.exp(-g / 2)) - 1 / (1 + np.exp(g / 2)))
    v = np.clip(v, 0, 1) ** acq["gamma"]
    v = v + spec.site.edge * (v - ndimage.gaussian_filter(v, 4.0 / pix))
    v = np.clip(v, 0, 1)
    v[~inside] = spec.site.shutter
    for k in masks:
        masks[k] &= inside

    if size != S:
        v = np.clip(np.asarray(Image.fromarray(v.astype(np.float32), mode="F").resize((size, size), Image.Resampling.BICUBIC)), 0, 1)
        masks = {k: np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)) > 127 for k, m in masks.items()}

    boxes = []
    kept_findings, kept_names = [], []
    for f, name in zip(findings, finding_names):
        bb = _bbox(masks[name])
        if bb is None:  # warped or collimated out of the image: not visible, so not part of the truth
            del masks[name]
            continue
        boxes.append((f.label, name, bb))
        kept_findings.append(f)
        kept_names.append(name)
    severity = _ralo(masks, kept_findings, kept_names)
    ctr = cardiothoracic_ratio(masks["heart"], masks["lung_right"] | masks["lung_left"])
    return Rendered(v.astype(np.float32), masks, boxes, kept_findings, kept_names, severity, ctr,
                    info={"working_size": S})


def _reflect(q: np.ndarray, n: int) -> np.ndarray:
    """Mirror coordinates into [0, n - 1] (beyond the canonical grid the anatomy continues mirrored,
    which looks like body and not like the streaks that repeating the edge row gives)."""
    period = 2 * (n - 1)
    q = np.mod(q, period)
    return np.where(q > n - 1, period - q, q)


def _bilinear(img: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Bilinear sampling of ``img`` at (row, col) ``coords``, mirrored at the edges."""
    S0, S1 = img.shape
    r = np.clip(_reflect(coords[0], S0), 0, S0 - 1.001)
    c = np.clip(_reflect(coords[1], S1), 0, S1 - 1.001)
    r0 = r.astype(np.int32)
    c0 = c.astype(np.int32)
    fr = r - r0
    fc = c - c0
    top = img[r0, c0] * (1 - fc) + img[r0, c0 + 1] * fc
    bot = img[r0 + 1, c0] * (1 - fc) + img[r0 + 1, c0 + 1] * fc
    return (top * (1 - fr) + bot * fr).astype(np.float32)


def _nearest(stack: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Nearest-neighbour sampling of a (n, S, S) bool stack, mirrored at the edges (as the image is)."""
    S = stack.shape[-1]
    r = np.clip(np.rint(_reflect(coords[0], S)).astype(np.int32), 0, S - 1)
    c = np.clip(np.rint(_reflect(coords[1], S)).astype(np.int32), 0, S - 1)
    return stack[:, r, c]
