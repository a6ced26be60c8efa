"""Controlled variants of one subject: each isolates a way real joints differ from typical ones.

A variant changes a few of a subject's parameters (:class:`~jointseg.synth.subject.SubjectParams`)
and, for a foreign contrast, the imaging protocol, and keeps everything else: the same child,
pose and noise. Rendered next to the subject's ``typical`` variant (the generator's view and
maturity variation switched off), it shows one failure mode of a trained model at a time:

- ``long_field``: a field of view 1.8 times the protocol's, moved up the limb, so that the
  shaft of the proximal bone (the femur of a knee) runs to the field's top edge;
- ``closed_physes``: a skeletal age of 19 years (every growth plate closed) with a physeal scar;
- ``large_fat_pad``: fat pads (Hoffa's in the knee) 1.6 times their usual radius;
- ``bone_at_edge``: a sagittal stack moved medially so that the lateral bone (the fibula of a
  knee) lies in its last slices;
- ``foreign_contrast``: the subject imaged with another protocol (a knee in T1 spin echo
  without fat suppression: ``knee_t1``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from jointseg.synth.subject import PROTOCOLS, Protocol, SubjectParams

#: The foreign protocol of each joint's ``foreign_contrast`` variant.
FOREIGN_PROTOCOL = {"knee": "knee_t1", "knee_t1": "knee"}
LONG_FIELD_FACTOR, LONG_FIELD_SHIFT = 1.8, 0.25
CLOSED_BONE_AGE, SCAR_MM = 19.0, 0.8
LARGE_FAT_PAD = 1.6
#: How far (share of the slice coverage) ``bone_at_edge`` moves the stack sideways.
EDGE_SHIFT = 0.3


def typical(params: SubjectParams) -> SubjectParams:
    """The subject with the protocol's own field of view, no shift, skeletal age equal to the
    calendar age, no scar, usual fat pads and no marrow changes."""
    return replace(
        params,
        fov=round(params.fov / params.fov_factor, 2),
        fov_factor=1.0,
        view_shift_mm=[0.0, 0.0, 0.0],
        bone_age_offset=0.0,
        scar_mm=0.0,
        fat_pad_scale=1.0,
        marrow_change=0.0,
    )


def _long_field(params: SubjectParams) -> SubjectParams:
    base = typical(params)
    fov = base.fov * LONG_FIELD_FACTOR
    return replace(
        base,
        fov=round(fov, 2),
        fov_factor=LONG_FIELD_FACTOR,
        view_shift_mm=[0.0, 0.0, round(LONG_FIELD_SHIFT * fov, 3)],
    )


def _closed_physes(params: SubjectParams) -> SubjectParams:
    base = typical(params)
    return replace(base, bone_age_offset=round(CLOSED_BONE_AGE - base.age, 3), scar_mm=SCAR_MM)


def _large_fat_pad(params: SubjectParams) -> SubjectParams:
    return replace(typical(params), fat_pad_scale=LARGE_FAT_PAD)


def _bone_at_edge(params: SubjectParams) -> SubjectParams:
    if PROTOCOLS[params.joint].plane != "sagittal":
        raise ValueError(f"bone_at_edge needs a sagittal protocol; {params.joint!r} has none")
    base = typical(params)
    # Sagittal stacks run along x (the patient's left); the lateral side of a right limb is -x,
    # of a left (mirrored) one +x. Moving the stack's centre medially puts the lateral bone
    # into its last slices.
    coverage = base.slices * base.thickness
    medial = 1.0 if base.side == "right" else -1.0
    return replace(base, view_shift_mm=[round(medial * EDGE_SHIFT * coverage, 3), 0.0, 0.0])


VARIANTS: dict[str, Callable[[SubjectParams], SubjectParams]] = {
    "typical": typical,
    "long_field": _long_field,
    "closed_physes": _closed_physes,
    "large_fat_pad": _large_fat_pad,
    "bone_at_edge": _bone_at_edge,
    "foreign_contrast": typical,
}


def variant(params: SubjectParams, name: str) -> tuple[SubjectParams, Protocol]:
    """The subject's variant ``name`` and the protocol to image it with."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    protocol = PROTOCOLS[params.joint]
    if name == "foreign_contrast":
        if params.joint not in FOREIGN_PROTOCOL:
            raise ValueError(f"no foreign protocol is set for joint {params.joint!r}")
        protocol = PROTOCOLS[FOREIGN_PROTOCOL[params.joint]]
    return VARIANTS[name](params), protocol
