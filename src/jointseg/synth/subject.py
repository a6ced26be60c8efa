"""One synthetic subject: every random choice, sampled from one generator, kept as plain data.

The parameters are written to ``synth.json`` so that a study can be read, audited and redone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from jointseg.synth import growth, shape_modes
from jointseg.synth.anatomy import joint_spec


@dataclass(frozen=True)
class Protocol:
    """A joint's acquisition protocol (the dataset's own); subjects jitter its numbers."""

    plane: str  # 'sagittal', 'coronal', 'coronal-oblique' or 'axial'
    sequence: str  # 'se' (spin echo / fast spin echo) or 'gre' (spoiled gradient echo)
    weighting: str  # for the description only: 'T1', 'PD', 'T2*'
    fat_sat: bool
    tr: tuple[float, float]  # ms
    te: tuple[float, float]  # ms
    flip: tuple[float, float]  # degrees (90 for spin echo)
    matrix: int  # in-plane matrix (square)
    fov: tuple[float, float]  # mm, for an adult-sized joint
    thickness: tuple[float, float]  # mm
    coverage: float  # mm along the slice direction for an adult-sized joint
    snr: tuple[float, float]  # of muscle
    center_offset: tuple[float, float, float]  # adult mm from the joint centre (LPS)
    #: A surface coil's centre (adult mm from the joint centre, LPS) and its reach (mm);
    #: None for a volume (birdcage) coil with a nearly flat sensitivity.
    coil: tuple[tuple[float, float, float], float] | None = None


PROTOCOLS: dict[str, Protocol] = {
    "ankle": Protocol(
        plane="sagittal",
        sequence="se",
        weighting="T1",
        fat_sat=False,
        tr=(450, 650),
        te=(10, 16),
        flip=(90, 90),
        matrix=224,
        fov=(145, 160),
        thickness=(2.6, 3.2),
        coverage=95.0,
        snr=(9, 20),
        center_offset=(0.0, -5.0, -5.0),
    ),
    "knee": Protocol(
        plane="sagittal",
        sequence="se",
        weighting="PD",
        fat_sat=True,
        tr=(2600, 3600),
        te=(24, 36),
        flip=(90, 90),
        matrix=224,
        fov=(140, 155),
        thickness=(3.0, 3.5),
        coverage=115.0,
        snr=(9, 18),
        center_offset=(0.0, 0.0, 10.0),
    ),
    "shoulder": Protocol(
        plane="coronal-oblique",
        sequence="gre",
        weighting="T2*",
        fat_sat=False,
        tr=(450, 700),
        te=(11, 18),
        flip=(22, 35),
        matrix=240,
        fov=(150, 165),
        thickness=(3.5, 4.0),
        coverage=105.0,
        snr=(9, 18),
        center_offset=(12.0, 0.0, -5.0),
        coil=((-48.0, -5.0, 18.0), 75.0),
    ),
    "elbow": Protocol(
        plane="coronal",
        sequence="se",
        weighting="T1",
        fat_sat=False,
        tr=(450, 650),
        te=(10, 15),
        flip=(90, 90),
        matrix=256,
        fov=(110, 130),
        thickness=(2.5, 3.0),
        coverage=60.0,
        snr=(9, 18),
        center_offset=(0.0, 0.0, 5.0),
        coil=((0.0, -35.0, 0.0), 70.0),  # a flexible surface coil over the front of the elbow
    ),
    # The knee at another site: sagittal T1 spin echo, no fat suppression, thicker slices.
    "knee_t1": Protocol(
        plane="sagittal",
        sequence="se",
        weighting="T1",
        fat_sat=False,
        tr=(450, 650),
        te=(9, 14),
        flip=(90, 90),
        matrix=256,
        fov=(150, 165),
        thickness=(3.5, 4.0),
        coverage=115.0,
        snr=(10, 20),
        center_offset=(0.0, 0.0, 10.0),
    ),
}

#: Range of subject ages (years).
AGE_RANGE = (4.0, 17.99)
#: Slices of a realistic scan: the protocol's coverage over the slice thickness, kept in range.
SLICE_RANGE = (20, 40)


@dataclass
class SubjectParams:
    """Everything random about one subject; the synthesis is a pure function of it."""

    joint: str
    case_id: str
    split: str
    seed: list[int]  # the SeedSequence entropy and spawn key that made this subject
    age: float
    sex: str
    stature_cm: float
    scale: float
    side: str
    angles: dict[str, float]
    width_ratio: float  # bone width relative to length
    bone_scales: dict[str, list[float]]  # per bone, per mesh axis
    deformation_mm: float
    fat_mm: float
    muscle_bulk: float
    effusion_mm: float
    tr: float
    te: float
    flip: float
    fov: float
    thickness: float
    slices: int
    obliquity_deg: list[float]
    center_jitter_mm: list[float]
    snr: float
    bias: float
    blur: float
    fat_sat_efficiency: float
    gain: float
    motion: float  # phase error (rad) between phase-encoding lines; 0: the child kept still
    tissue_jitter: dict[str, float] = field(default_factory=dict)
    texture_seed: int = 0
    #: Coefficients (standard deviations) of the knee's statistical shape modes; drawn last,
    #: so that every other parameter is the same as without them.
    shape_modes: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def sample_subject(
    joint: str, case_id: str, split: str, rng: np.random.Generator, seed: list[int]
) -> SubjectParams:
    """Draw one subject of ``joint`` from ``rng`` (age 4-17, size from growth charts, pose,
    shape, soft tissues, and the protocol's jittered acquisition parameters)."""
    spec = joint_spec(joint)
    protocol = PROTOCOLS[joint]
    age = _uniform(rng, AGE_RANGE)
    sex = "M" if rng.random() < 0.5 else "F"
    z_score = float(np.clip(rng.standard_normal(), -2.0, 2.0))
    stature = growth.stature(age, sex, z_score)
    scale = growth.body_scale(stature)
    angles = {name: _uniform(rng, bounds) for name, bounds in spec.angles.items()}
    bone_scales = {
        b.name: [float(v) for v in 1.0 + 0.035 * np.clip(rng.standard_normal(3), -2, 2)]
        for b in spec.bones
    }
    thickness = _uniform(rng, protocol.thickness)
    coverage = protocol.coverage * scale * float(rng.uniform(0.95, 1.1))
    slices = int(np.clip(round(coverage / thickness), *SLICE_RANGE))
    fov = _uniform(rng, protocol.fov) * (0.5 + 0.5 * min(scale, 1.0))
    # Children carry less subcutaneous fat than adults; a wide spread between children.
    fat_mm = float(np.clip(rng.lognormal(np.log(3.0 + 0.25 * (age - 4)), 0.35), 1.5, 14.0))
    tissues = ("muscle", "fat", "marrow", "cartilage", "fluid", "tendon", "physis")
    return SubjectParams(
        joint=joint,
        case_id=case_id,
        split=split,
        seed=list(seed),
        age=round(age, 3),
        sex=sex,
        stature_cm=round(stature, 2),
        scale=round(scale, 5),
        side="right" if rng.random() < 0.5 else "left",
        angles={k: round(v, 5) for k, v in angles.items()},
        width_ratio=round(float(rng.normal(1.0, 0.04)), 4),
        bone_scales={k: [round(x, 4) for x in v] for k, v in bone_scales.items()},
        deformation_mm=round(_uniform(rng, (0.6, 1.8)), 3),
        fat_mm=round(fat_mm, 3),
        muscle_bulk=round(float(rng.normal(1.0, 0.08)), 4),
        effusion_mm=round(float(rng.gamma(2.0, 0.8)), 3),
        tr=round(_uniform(rng, protocol.tr), 1),
        te=round(_uniform(rng, protocol.te), 2),
        flip=round(_uniform(rng, protocol.flip), 2),
        fov=round(fov, 2),
        thickness=round(thickness, 3),
        slices=slices,
        obliquity_deg=[round(float(v), 3) for v in rng.normal(0.0, 4.0, 3)],
        center_jitter_mm=[round(float(v), 3) for v in rng.normal(0.0, 4.0, 3)],
        snr=round(_uniform(rng, protocol.snr), 3),
        bias=round(_uniform(rng, (0.08, 0.3)), 4),
        blur=round(_uniform(rng, (0.35, 0.7)), 4),
        fat_sat_efficiency=round(_uniform(rng, (0.86, 0.96)), 4),
        gain=round(float(rng.lognormal(np.log(1500.0), 0.25)), 2),
        motion=round(float(rng.uniform(0.04, 0.2)) if rng.random() < 0.35 else 0.0, 4),
        tissue_jitter={t: round(float(rng.normal(1.0, 0.06)), 4) for t in tissues},
        texture_seed=int(rng.integers(0, 2**31 - 1)),
        shape_modes=(
            shape_modes.sample_coefficients(rng) if shape_modes.has_modes(spec.region) else []
        ),
    )
