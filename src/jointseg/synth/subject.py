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
#: Real protocols differ from site to site in how much of the limb they cover. A subject's field
#: of view is the protocol's times a factor drawn log-uniformly from ``FOV_FACTOR`` (tight
#: fields to long ones whose shafts run to the field's edge; the pixel stays the protocol's, up
#: to ``MAX_MATRIX``), its slice coverage times one from ``COVERAGE_FACTOR`` (slices kept in
#: ``WIDE_SLICE_RANGE``), and the field's centre moves along the limb's long axis (superior)
#: by up to ``LONG_AXIS_SHIFT`` of the field of view, across it by ``ACROSS_SHIFT`` (SD).
FOV_FACTOR = (0.85, 1.8)
COVERAGE_FACTOR = (0.85, 1.3)
WIDE_SLICE_RANGE = (16, 48)
MAX_MATRIX = 512
LONG_AXIS_SHIFT = 0.25
ACROSS_SHIFT = 0.05
#: Skeletal (bone) age runs ahead of or behind the calendar age by this SD (years, clipped at
#: twice it): growth plates, epiphyseal cartilage and marrow follow the bone age.
BONE_AGE_SD = 1.0
#: A closed growth plate leaves a thin dark line (the physeal scar) in this share of subjects,
#: this thick (mm).
SCAR_SHARE, SCAR_MM = 0.8, (0.4, 1.2)
#: Fat pads (Hoffa's, Kager's, the elbow's) are this much larger or smaller (radius factor).
FAT_PAD_SCALE = (0.7, 1.5)
#: Share of subjects with marrow signal changes (oedema-like or red-marrow islands: patches of
#: low marrow fat), and how much fat fraction they remove at most.
MARROW_CHANGE_SHARE, MARROW_CHANGE_DEPTH = 0.3, (0.2, 0.6)


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
    #: Coefficients (standard deviations) of the knee's statistical shape modes.
    shape_modes: list[float] = field(default_factory=list)
    #: Field of view relative to the protocol's (already in ``fov``; the matrix follows it),
    #: and the field centre's shift (child mm, LPS) on top of ``center_jitter_mm``.
    fov_factor: float = 1.0
    view_shift_mm: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    #: Skeletal age minus calendar age (years).
    bone_age_offset: float = 0.0
    #: Thickness (mm) of the dark line a closed growth plate leaves; 0: none.
    scar_mm: float = 0.0
    #: Radius factor of the joint's fat pads.
    fat_pad_scale: float = 1.0
    #: Most marrow fat fraction removed in patches (oedema, red-marrow islands); 0: none.
    marrow_change: float = 0.0

    @property
    def bone_age(self) -> float:
        """The skeletal age (years) growth plates, cartilage and marrow follow."""
        return self.age + self.bone_age_offset

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
        b.name: [float(v) for v in 1.0 + 0.055 * np.clip(rng.standard_normal(3), -2, 2)]
        for b in spec.bones
    }
    thickness = _uniform(rng, protocol.thickness)
    coverage = protocol.coverage * scale * float(rng.uniform(0.95, 1.1))
    slices = int(np.clip(round(coverage / thickness), *SLICE_RANGE))
    fov = _uniform(rng, protocol.fov) * (0.5 + 0.5 * min(scale, 1.0))
    # Children carry less subcutaneous fat than adults; a wide spread between children.
    fat_mm = float(np.clip(rng.lognormal(np.log(3.0 + 0.25 * (age - 4)), 0.35), 1.5, 14.0))
    tissues = ("muscle", "fat", "marrow", "cartilage", "fluid", "tendon", "physis")
    params = SubjectParams(
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
        width_ratio=round(float(rng.normal(1.0, 0.06)), 4),
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
    return _vary_view_and_maturity(params, rng)


def _vary_view_and_maturity(params: SubjectParams, rng: np.random.Generator) -> SubjectParams:
    """Draw the field of view, skeletal maturity and soft-tissue variants (after every other
    parameter, whose draws keep their order)."""
    factor = float(np.exp(rng.uniform(*np.log(FOV_FACTOR))))
    fov = params.fov * factor
    coverage = params.slices * float(rng.uniform(*COVERAGE_FACTOR))
    along = float(rng.uniform(-LONG_AXIS_SHIFT, LONG_AXIS_SHIFT)) * fov
    across = rng.normal(0.0, ACROSS_SHIFT, 2) * fov
    offset = float(np.clip(rng.normal(0.0, BONE_AGE_SD), -2 * BONE_AGE_SD, 2 * BONE_AGE_SD))
    scar = _uniform(rng, SCAR_MM) if rng.random() < SCAR_SHARE else 0.0
    pads = _uniform(rng, FAT_PAD_SCALE)
    change = _uniform(rng, MARROW_CHANGE_DEPTH) if rng.random() < MARROW_CHANGE_SHARE else 0.0
    params.fov = round(fov, 2)
    params.fov_factor = round(factor, 4)
    params.slices = int(np.clip(round(coverage), *WIDE_SLICE_RANGE))
    params.view_shift_mm = [round(float(across[0]), 3), round(float(across[1]), 3), round(along, 3)]
    params.bone_age_offset = round(offset, 3)
    params.scar_mm = round(scar, 3)
    params.fat_pad_scale = round(pads, 4)
    params.marrow_change = round(change, 4)
    return params


def subject_matrix(protocol: Protocol, params: SubjectParams) -> int:
    """The in-plane matrix of a subject's scan: the protocol's pixel over the subject's field
    (at most :data:`MAX_MATRIX`)."""
    return min(int(round(protocol.matrix * params.fov_factor)), MAX_MATRIX)
