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
from jointseg.synth.noise import smooth_noise, smoothstep, upsample

AIR, SKIN, FAT, MUSCLE, SEPTUM, TENDON, ARTERY, VEIN = 0, 1, 2, 3, 4, 5, 6, 7
FLUID, CARTILAGE, PHYSIS, CORTEX, MARROW, LUNG, MENISCUS = 8, 9, 10, 11, 12, 13, 14
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
    "meniscus",
)

#: Default fat fraction of each tissue (marrow and muscle get theirs voxel by voxel).
FAT_FRACTION = np.array(
    [0.0, 0.15, 0.93, 0.03, 0.45, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.6, 0.0, 0.0], np.float32
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
    meniscus: float  # height of the menisci's wedge (child mm)
    scar: float = 0.0  # thickness (child mm) of a closed growth plate's scar; 0: none

    @classmethod
    def for_subject(
        cls, age: float, scale: float, effusion_mm: float, scar_mm: float = 0.0
    ) -> BoneTissueParams:
        """``age``: the skeletal age."""
        epi, meta = growth.marrow_fat_fraction(age)
        return cls(
            articular=growth.articular_cartilage(age),
            unossified=growth.unossified_epiphysis(age),
            cortex_epiphysis=0.7 * (0.6 + 0.4 * scale),
            cortex_shaft=2.6 * (0.6 + 0.4 * scale),
            fat_epiphysis=epi,
            fat_metaphysis=meta,
            fluid_gap=0.6 + effusion_mm,
            meniscus=6.0 * scale,
            scar=scar_mm,
        )


def bone_tissues(
    joint: JointSpec,
    maps: BoneMaps,
    p: BoneTissueParams,
    tissue: np.ndarray,
    fat_fraction: np.ndarray,
    texture: np.ndarray,
    off_midline: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint cartilage, fluid, menisci, growth plates, cortex and marrow into ``tissue``;
    return the on-disk label map and the ossified-bone mask.

    ``off_midline`` (> 0 away from the joint's notch) keeps menisci out of the intercondylar
    notch, where the cruciate ligaments run instead.
    """
    d1, d2 = maps.d1, maps.d2
    small = np.array([b.small for b in joint.bones] + [False])
    labels = np.array([b.label for b in joint.bones] + [0], dtype=np.uint8)
    is_small = small[maps.id1]  # id1 == -1 picks the trailing False
    # Articular zones: where another bone is near (in life, where the joint surfaces meet).
    reach = p.articular + 2.0
    articular = smoothstep((reach - d2) / reach)
    unossified = p.unossified * np.maximum(articular, np.where(is_small, 0.6, 0.0))
    ossified = d1 < -unossified
    cart_out = p.articular * smoothstep((reach - d2) / (0.5 * reach))
    cartilage = (~ossified) & (d1 < np.maximum(cart_out, np.where(is_small, 0.3, 0.0)))
    cartilage &= (d1 < 0) | (cart_out > 0.2)
    space = d1 + d2  # small between two facing joint surfaces
    fluid = (~ossified) & (~cartilage) & (space < 2.0 * p.articular + p.fluid_gap)
    fluid &= d2 < 2.0 * p.articular + p.fluid_gap + 2.0
    tissue[fluid] = FLUID
    # Menisci: fibrocartilage wedges where the joint space opens at the rim of the contact.
    names = [b.name for b in joint.bones]
    for a, b in joint.menisci:
        ia, ib = names.index(a), names.index(b)
        pair = ((maps.id1 == ia) & (maps.id2 == ib)) | ((maps.id1 == ib) & (maps.id2 == ia))
        wedge = pair & (d1 > 0) & (space > 2.0 * p.articular + 0.4)
        wedge &= space < 2.0 * p.articular + p.meniscus
        if off_midline is not None:
            wedge &= off_midline > 0
        tissue[wedge & (tissue != TENDON)] = MENISCUS
    tissue[cartilage] = CARTILAGE
    shaft = maps.shaft
    cortex_t = p.cortex_epiphysis + (p.cortex_shaft - p.cortex_epiphysis) * shaft
    cortex = ossified & (d1 + unossified > -cortex_t)
    tissue[ossified] = MARROW
    tissue[cortex] = CORTEX
    physis = (np.abs(maps.plate) < maps.plate_half) & (d1 < 0.0)
    tissue[physis] = PHYSIS
    if p.scar > 0:  # a closed plate's scar: a thin sclerotic line across the marrow
        scar = (np.abs(maps.plate) < 0.5 * p.scar) & (maps.plate_half <= 0) & ossified
        tissue[scar & (tissue == MARROW)] = CORTEX
    # Marrow: yellow (fatty) in the epiphyses, red (cellular) in the metaphyses, turning
    # yellow from the diaphysis with age; patchy.
    epiphysis = (maps.plate < 0) | (maps.plate_half <= 0)
    fat_dia = min(0.88, p.fat_metaphysis + 0.25)
    metaphysis = p.fat_metaphysis + (fat_dia - p.fat_metaphysis) * smoothstep(shaft * 1.3)
    marrow_fat = np.where(epiphysis, p.fat_epiphysis, metaphysis) + 0.03 * texture
    fat_fraction[ossified] = np.clip(marrow_fat[ossified], 0.05, 0.95)
    label = np.where(ossified, labels[maps.id1], 0).astype(np.uint8)
    return label, ossified


#: Correlation length (acquired voxels: slices, rows, columns) of marrow signal changes.
MARROW_PATCH_CELLS = (1.5, 7.0, 7.0)


def marrow_changes(
    tissue: np.ndarray, fat_fraction: np.ndarray, depth: float, seed: int, sub: int
) -> None:
    """Lower the marrow's fat fraction in smooth patches (bone marrow oedema, red-marrow
    islands) by up to ``depth``, in place; ``sub``: sub-slices per slice of the fine grid.
    Drawn from their own stream (``seed``), so that the subject's other textures stay."""
    rng = np.random.default_rng([seed, 1])
    acquired = (tissue.shape[0] // sub, *tissue.shape[1:])
    patches = np.repeat(smooth_noise(rng, acquired, MARROW_PATCH_CELLS), sub, axis=0)
    marrow = tissue == MARROW
    loss = depth * smoothstep(patches[marrow] - 0.5)
    fat_fraction[marrow] = np.clip(fat_fraction[marrow] - loss, 0.05, 0.95)


@dataclass
class SoftTissueParams:
    """Sizes (child mm) of the soft-tissue layers of one subject."""

    skin: float
    fat: float
    cover: float  # soft tissue over bone where no muscle lies (patella, malleoli)
    muscle_inflate: float  # bellies are grown by this much to fill the limb


def soft_tissues(
    limb: np.ndarray,
    d1: np.ndarray,
    bellies: tuple[np.ndarray, np.ndarray, np.ndarray],
    blobs: list[np.ndarray],
    pockets: list[np.ndarray],
    vessel_fields: list[tuple[np.ndarray, str]],
    lungs: list[np.ndarray],
    p: SoftTissueParams,
    slow: np.ndarray,
    texture: np.ndarray,
) -> np.ndarray:
    """The soft-tissue classes on the fine grid (bones are painted over them afterwards).

    ``limb`` is the fine distance to the limb/trunk outline, ``d1`` to the nearest bone;
    ``bellies`` holds coarse (first, second, tendon) band distances; ``blobs``, the fat pads'
    ``pockets`` the joint recesses' (fluid), ``vessel_fields`` the vessels' coarse distances;
    ``lungs`` coarse lung distances.
    """
    fine = d1.shape
    first, second, tendon = (upsample(f, fine) for f in bellies)
    # The body: limb outline, grown over the muscles and over bone near the skin.
    body = limb
    body = np.minimum(body, first - p.fat)
    body = np.minimum(body, d1 - p.cover) + 1.2 * slow
    tissue = np.zeros(fine, np.uint8)
    inside = body < 0
    fat_depth = p.skin + p.fat * np.clip(1.0 + 0.35 * slow, 0.3, 2.0)
    deep = inside & (body < -fat_depth)
    # Muscles: the nearest belly owns a voxel; septa (thin fascia with a little fat) run where
    # two bellies are about as near; beyond every belly lies intermuscular fat.
    tissue[inside] = FAT
    muscle = deep & (first < p.muscle_inflate * (1.0 + 0.3 * slow))
    tissue[muscle] = MUSCLE
    septum = 0.5 * (second - first)
    tissue[muscle & (septum < 0.25 + 0.06 * p.fat)] = FAT
    tissue[muscle & (septum < 0.35)] = SEPTUM
    tissue[inside & (body > -p.skin)] = SKIN
    # Shapes of one kind are merged on the coarse lattice, then resampled once.
    if blobs:
        tissue[deep & (upsample(np.minimum.reduce(blobs), fine) < 1.5 * texture)] = FAT
    for kind, value in (("artery", ARTERY), ("vein", VEIN)):
        fields = [field for field, k in vessel_fields if k == kind]
        if fields:
            tissue[inside & (upsample(np.minimum.reduce(fields), fine) < 0)] = value
    if pockets:
        tissue[deep & (upsample(np.minimum.reduce(pockets), fine) < 0.3 * texture)] = FLUID
    tissue[inside & (tendon < 0)] = TENDON
    if lungs:
        tissue[deep & (upsample(np.minimum.reduce(lungs), fine) < 0)] = LUNG
    return tissue
