"""Pediatric growth: body size, cartilage and growth plates as functions of age and sex.

Stature medians are read (to about 1 cm) from the CDC 2000 stature-for-age growth charts,
50th percentile (Kuczmarski et al., "2000 CDC Growth Charts for the United States: methods and
development", Vital Health Stat 11(246), 2002); the spread of about 4.5 % per standard deviation
matches their 5th-95th percentile band. Growth-plate closure ages are typical radiological
values (girls about two years before boys), as in Greulich & Pyle's atlas and in
O'Connor et al., "Epiphyseal maturity indicators at the knee and their relationship to
chronological age", J Anat 2008.
"""

from __future__ import annotations

import numpy as np

AGES = np.arange(4, 19, dtype=float)
#: Median stature (cm) at ages 4..18, boys and girls (CDC 2000, 50th percentile).
STATURE_CM = {
    "M": np.array(
        [
            102.5,
            109.2,
            115.5,
            121.7,
            127.6,
            133.3,
            138.4,
            143.5,
            149.1,
            156.0,
            163.2,
            169.0,
            173.0,
            175.2,
            176.1,
        ]
    ),
    "F": np.array(
        [
            101.5,
            108.4,
            115.0,
            121.1,
            127.2,
            133.0,
            138.6,
            144.8,
            151.2,
            157.0,
            160.5,
            162.0,
            162.5,
            163.0,
            163.3,
        ]
    ),
}
STATURE_CV = 0.045
#: Stature of the adult the musculoskeletal models were built from (OpenSim/MyoSuite generic
#: models are scaled to an adult of roughly 1.75 m).
MODEL_STATURE_CM = 175.0

#: Typical age (years) at which a growth plate has closed, by bone end and sex.
PHYSIS_CLOSURE = {
    "femur_distal": {"M": 17.5, "F": 15.5},
    "tibia_proximal": {"M": 17.0, "F": 15.0},
    "tibia_distal": {"M": 16.5, "F": 14.5},
    "fibula_proximal": {"M": 17.5, "F": 15.5},
    "fibula_distal": {"M": 16.5, "F": 14.5},
    "humerus_proximal": {"M": 18.0, "F": 16.0},
    "calcaneus_apophysis": {"M": 16.0, "F": 14.0},
    # The elbow's plates close first (capitellum and trochlea with the distal humerus).
    "humerus_distal": {"M": 14.5, "F": 12.5},
    "radius_proximal": {"M": 15.5, "F": 13.5},
    "ulna_proximal": {"M": 15.5, "F": 13.5},
}


def median_stature(age: float, sex: str) -> float:
    """Median stature (cm) at ``age`` years (4-18) for sex 'M' or 'F'."""
    if sex not in STATURE_CM:
        raise ValueError(f"sex must be 'M' or 'F', got {sex!r}")
    return float(np.interp(age, AGES, STATURE_CM[sex]))


def stature(age: float, sex: str, z_score: float) -> float:
    """Stature (cm) of a child ``z_score`` standard deviations from the median."""
    return median_stature(age, sex) * (1.0 + STATURE_CV * z_score)


def body_scale(stature_cm: float) -> float:
    """Linear scale of the child's skeleton relative to the adult model."""
    return stature_cm / MODEL_STATURE_CM


def physis_thickness(age: float, sex: str, site: str) -> float:
    """Growth-plate thickness (mm, child scale): about 1.8 mm when young, 0 once closed."""
    closure = PHYSIS_CLOSURE[site][sex]
    young = 1.8 - 0.06 * (age - 4.0)
    fading = np.clip((closure - age) / 2.0, 0.0, 1.0)
    return float(max(young, 0.6) * fading)


def articular_cartilage(age: float) -> float:
    """Articular cartilage thickness (mm, child scale) on the joint surfaces."""
    return float(2.0 + 3.0 * np.exp(-(age - 4.0) / 4.0))


def unossified_epiphysis(age: float) -> float:
    """Depth (mm, child scale) of the not yet ossified epiphyseal cartilage under it."""
    return float(3.5 * np.exp(-(age - 4.0) / 3.5))


def marrow_fat_fraction(age: float) -> tuple[float, float]:
    """Fat fraction of (epiphyseal, metaphyseal) marrow: red marrow turns yellow with age."""
    epiphysis = 0.72 + 0.012 * (age - 4.0)
    metaphysis = 0.30 + 0.025 * (age - 4.0)
    return float(min(epiphysis, 0.9)), float(min(metaphysis, 0.75))
