"""The tissue phantom of one subject on the scan's fine grid: tissue classes, marrow fat, labels.

Built from the posed bones' distance maps (bones.py) and the procedural soft tissues
(softtissue.py), with pediatric features from growth.py: open growth plates, thick articular
and unossified epiphyseal cartilage in young children, red marrow in the metaphyses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jointseg.synth import growth
from jointseg.synth.anatomy import JointSpec
from jointseg.synth.bones import BoneMaps
from jointseg.synth.noise import smoothstep

AIR, SKIN, FAT, MUSCLE, SEPTUM, TENDON, ARTERY, VEIN = 0, 1, 2, 3, 4, 5, 6, 7
FLUID, CARTILAGE, PHYSIS, CORTEX, MARROW, LUNG = 8, 9, 10, 11, 12, 13
TISSUE_NAMES = (
    "air",
    "skin",
    "fat",
    "muscle",
    "septum",
    "tendon",
    "artery",
    "vein",
    "fluid",
    "cartilage",
    "physis",
    "cortex",
    "marrow",
    "lung",
)


@dataclass
class Phantom:
    tissue: np.ndarray  # uint8 (fine z, y, x)
    fat_fraction: np.ndarray  # float32: marrow fat fraction (other tissues use their own)
    label: np.ndarray  # uint8 on-disk label values
    bone: np.ndarray  # bool: all bone (labelled or not), ossified


@dataclass(frozen=True)
class BoneTissueParams:
    """Age-dependent sizes (child mm) and marrow composition for one subject."""

    articular: float
    unossified: float
    cortex_epiphysis: float
    cortex_shaft: float
    fat_epiphysis: float
    fat_metaphysis: float
    fluid_gap: float

    @classmethod
    def for_subject(cls, age: float, scale: float, effusion_mm: float) -> BoneTissueParams:
        epi, meta = growth.marrow_fat_fraction(age)
        return cls(
            articular=growth.articular_cartilage(age),
            unossified=growth.unossified_epiphysis(age),
            cortex_epiphysis=0.7 * (0.6 + 0.4 * scale),
            cortex_shaft=2.6 * (0.6 + 0.4 * scale),
            fat_epiphysis=epi,
            fat_metaphysis=meta,
            fluid_gap=0.6 + effusion_mm,
        )


def bone_tissues(
    joint: JointSpec,
    maps: BoneMaps,
    p: BoneTissueParams,
    tissue: np.ndarray,
    fat_fraction: np.ndarray,
    texture: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint cartilage, fluid, growth plates, cortex and marrow into ``tissue``; return the
    on-disk label map and the ossified-bone mask."""
    d1, d2 = maps.d1, maps.d2
    small = np.array([b.small for b in joint.bones] + [False])
    labels = np.array([b.label for b in joint.bones] + [0], dtype=np.uint8)
    is_small = small[maps.id1]  # id1 == -1 picks the trailing False
    # Articular zones: where another bone is near (in life, where the joint surfaces meet).
    reach = 2.0 * p.articular + 4.0
    articular = smoothstep((reach - d2) / reach)
    unossified = p.unossified * np.maximum(articular, np.where(is_small, 0.6, 0.0))
    ossified = d1 < -unossified
    cart_out = p.articular * smoothstep((reach - d2) / (0.5 * reach))
    cartilage = (~ossified) & (d1 < np.maximum(cart_out, np.where(is_small, 0.3, 0.0)))
    cartilage &= (d1 < 0) | (cart_out > 0.2)
    fluid = (~ossified) & (~cartilage) & (d1 + d2 < 2.0 * p.articular + p.fluid_gap)
    fluid &= d2 < 2.0 * p.articular + p.fluid_gap + 2.0
    tissue[fluid] = FLUID
    tissue[cartilage] = CARTILAGE
    shaft = maps.shaft
    cortex_t = p.cortex_epiphysis + (p.cortex_shaft - p.cortex_epiphysis) * shaft
    cortex = ossified & (d1 + unossified > -cortex_t)
    tissue[ossified] = MARROW
    tissue[cortex] = CORTEX
    physis = (np.abs(maps.plate) < maps.plate_half) & (d1 < 0.0)
    tissue[physis] = PHYSIS
    # Marrow: yellow (fatty) in the epiphyses, red (cellular) in the metaphyses, turning
    # yellow from the diaphysis with age; patchy.
    epiphysis = (maps.plate < 0) | (maps.plate_half <= 0)
    fat_dia = min(0.88, p.fat_metaphysis + 0.25)
    metaphysis = p.fat_metaphysis + (fat_dia - p.fat_metaphysis) * smoothstep(shaft * 1.3)
    marrow_fat = np.where(epiphysis, p.fat_epiphysis, metaphysis) + 0.07 * texture
    fat_fraction[ossified] = np.clip(marrow_fat[ossified], 0.05, 0.95)
    label = np.where(ossified, labels[maps.id1], 0).astype(np.uint8)
    return label, ossified
