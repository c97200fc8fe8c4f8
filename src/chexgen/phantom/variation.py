"""Per-case variation: demographics, acquisition site and anatomy, drawn from one seeded generator.

Effects (each applied to every projected component and mask identically):

* anatomy: global scale 0.92..1.08 (patient size), rotation -4..4 degrees,
  shift, inspiration depth (vertical stretch of 0.94..1.06 about the lung
  apices: deeper inspiration lowers the diaphragm), a smooth random 2-D
  deformation (up to ~5 mm), heart size within the normal range (the heart is
  scaled x 0.84..0.93 in 3-D; see insertion.scale_heart) and soft-tissue thickness 0.85..1.30 (body habitus).
* sex: female cases get breast soft-tissue shadows (exact line integrals of
  two ellipsoids over the lower zones; size varies); male cases none.
* age (18..90 years): bone attenuation above water falls by 0.8 % a year after
  40 (osteopenia), floor 60 %.
* race: metadata only, drawn with MIMIC-like frequencies; no anatomy depends on it.
* site: five acquisition sites with fixed exposure (quantum noise), detector
  blur, contrast curve (sigmoid gain and gamma), edge enhancement, and
  collimation borders; each case jitters them slightly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Site", "SITES", "Anatomy", "Demographics", "sample_demographics", "sample_anatomy", "sample_site"]

RACES = ("White", "Black", "Asian", "Hispanic/Latino", "Other")
RACE_P = (0.62, 0.18, 0.04, 0.07, 0.09)


@dataclass(frozen=True)
class Site:
    """Acquisition and processing of one (fictional) site."""

    name: str
    photons: float  # mean detected photons per mm^2 behind the thinnest tissue (sets quantum noise)
    blur_mm: float  # detector / focal-spot blur (Gaussian sigma)
    gain: float  # sigmoid contrast gain of the display curve
    gamma: float
    edge: float  # unsharp-mask amount (edge enhancement of the vendor processing)
    collimation: float  # mean border fraction outside the collimated field
    shutter: float  # displayed value outside the field (0 black, 1 white)


SITES: tuple[Site, ...] = (
    Site("site_a", photons=30000.0, blur_mm=0.35, gain=4.0, gamma=1.00, edge=0.35, collimation=0.02, shutter=1.0),
    Site("site_b", photons=14000.0, blur_mm=0.55, gain=3.0, gamma=0.90, edge=0.15, collimation=0.03, shutter=0.0),
    Site("site_c", photons=50000.0, blur_mm=0.30, gain=5.0, gamma=1.10, edge=0.50, collimation=0.01, shutter=1.0),
    Site("site_d", photons=9000.0, blur_mm=0.70, gain=3.5, gamma=1.05, edge=0.25, collimation=0.035, shutter=0.85),
    Site("site_e", photons=20000.0, blur_mm=0.45, gain=4.5, gamma=0.95, edge=0.40, collimation=0.03, shutter=0.0),
)


@dataclass(frozen=True)
class Demographics:
    sex: str  # "M" | "F"
    age: float
    race: str


@dataclass(frozen=True)
class Anatomy:
    scale: float
    rotation_deg: float
    shift: tuple[float, float]  # fraction of the image (rows, cols)
    inspiration: float
    deform_mm: float
    heart_scale: float  # transverse heart scale of a normal heart
    soft_factor: float
    bone_density: float
    breast_size: float  # 0 for male cases


def sample_demographics(rng: np.random.Generator) -> Demographics:
    sex = "F" if rng.random() < 0.48 else "M"
    age = float(np.clip(rng.normal(62, 16), 18, 90))
    race = RACES[int(rng.choice(len(RACES), p=RACE_P))]
    return Demographics(sex, round(age), race)


def bone_density_for_age(age: float) -> float:
    """Bone attenuation (above water) relative to a young adult: -0.8 % per year after 40, floor 0.6."""
    return float(np.clip(1.0 - 0.008 * max(age - 40.0, 0.0), 0.6, 1.0))


def sample_anatomy(rng: np.random.Generator, demo: Demographics) -> Anatomy:
    return Anatomy(
        scale=float(rng.uniform(0.92, 1.08)),
        rotation_deg=float(rng.uniform(-4, 4)),
        shift=(float(rng.uniform(-0.03, 0.03)), float(rng.uniform(-0.03, 0.03))),
        inspiration=float(rng.uniform(0.94, 1.06)),
        deform_mm=float(rng.uniform(0, 5)),
        heart_scale=float(rng.uniform(0.84, 0.93)),
        soft_factor=float(rng.uniform(0.85, 1.3)),
        bone_density=bone_density_for_age(demo.age),
        breast_size=float(rng.uniform(0.5, 1.0)) if demo.sex == "F" else 0.0,
    )


def sample_site(rng: np.random.Generator) -> tuple[Site, dict[str, float]]:
    """A site and this case's jittered acquisition values."""
    site = SITES[int(rng.integers(len(SITES)))]
    jitter = {
        "photons": site.photons * float(rng.uniform(0.7, 1.3)),
        "gain": site.gain * float(rng.uniform(0.9, 1.1)),
        "gamma": site.gamma * float(rng.uniform(0.95, 1.05)),
        "collimation": [float(site.collimation * rng.uniform(0, 2)) for _ in range(4)],
    }
    return site, jitter
