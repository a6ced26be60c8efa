"""One subject from its parameters to an MR volume and its label map (a pure function)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jointseg.synth import phantom as ph
from jointseg.synth.anatomy import (
    Posture,
    geom_mesh,
    joint_spec,
    posture,
    require_generator_packages,
)
from jointseg.synth.bones import Deformation, evaluate_bones, posed_bones
from jointseg.synth.geometry import (
    SUB_SLICE_MM,
    BodyFrame,
    CoarseGrid,
    ScanGeometry,
    plane_direction,
    rotation_from_degrees,
    scan_geometry,
)
from jointseg.synth.mr import acquire, fine_signals, signal_tables, slice_average, surface_coil
from jointseg.synth.muscles import band_fields, ligament_bands, muscle_bands
from jointseg.synth.noise import smooth_noise, upsample
from jointseg.synth.softtissue import (
    fat_pads,
    fluid_pockets,
    limb_tubes,
    lungs,
    smooth_min,
    vessels,
)
from jointseg.synth.subject import PROTOCOLS, Protocol, SubjectParams, subject_matrix

SKIN_MM = 1.3
#: Half-width (adult mm) of the knee's intercondylar notch, free of menisci.
NOTCH_HALF_WIDTH_MM = 10.0


@dataclass
class SubjectVolume:
    image: np.ndarray  # int16 (z, y, x)
    label: np.ndarray  # uint8 (z, y, x)
    geometry: ScanGeometry


def _scapular_normal(pose: Posture, frame: BodyFrame) -> np.ndarray:
    """Normal of the scapular plane (smallest principal axis of the posed scapula, child)."""
    vertices, _ = geom_mesh(pose.model_name, "scapula_r")
    rotation, translation = pose.geom_pose("scapula_r")
    world = frame.to_child((vertices @ rotation.T + translation).T).T
    _, _, vt = np.linalg.svd(world - world.mean(axis=0), full_matrices=False)
    return vt[2]


def body_frame(params: SubjectParams, pose: Posture) -> BodyFrame:
    """The child's size, proportions and side relative to the adult model."""
    centre = pose.body_position(joint_spec(params.joint).center_body)
    scale = params.scale * np.array([params.width_ratio, params.width_ratio, 1.0])
    return BodyFrame(centre, scale, params.side == "left")


def subject_geometry(
    params: SubjectParams,
    pose: Posture,
    frame: BodyFrame,
    scale: float = 1.0,
    protocol: Protocol | None = None,
) -> ScanGeometry:
    """The subject's scan grid: the protocol's plane, jittered, centred near the joint.
    ``protocol``: another than the joint's own (synth/protocol_swap.py)."""
    protocol = protocol or PROTOCOLS[params.joint]
    spec = joint_spec(params.joint)
    centre_model = pose.body_position(spec.center_body) + np.asarray(protocol.center_offset)
    centre = (
        frame.to_child(centre_model)
        + np.asarray(params.center_jitter_mm)
        + np.asarray(params.view_shift_mm)
    )
    normal = _scapular_normal(pose, frame) if protocol.plane.endswith("oblique") else None
    plane = plane_direction(protocol.plane, normal)
    direction = rotation_from_degrees(params.obliquity_deg) @ plane
    matrix = max(32, int(round(subject_matrix(protocol, params) * scale)))
    slices = max(8, int(round(params.slices * scale)))
    thickness = params.thickness * params.slices / slices
    return scan_geometry(
        centre, direction, params.fov, matrix, slices, thickness, SUB_SLICE_MM / scale
    )


def build_phantom(
    params: SubjectParams,
    scale: float = 1.0,
    geometry: ScanGeometry | None = None,
    protocol: Protocol | None = None,
):
    """The subject's tissue phantom on its fine grid: (Phantom, geometry, rng, texture).

    ``geometry`` replaces the protocol's scan grid (randomized rendering, synth/randomize.py);
    else the grid is ``protocol``'s (default: the joint's own).
    """
    require_generator_packages()
    spec = joint_spec(params.joint)
    rng = np.random.default_rng(params.texture_seed)
    pose = posture(spec.model, params.angles)
    frame = body_frame(params, pose)
    if geometry is None:
        geometry = subject_geometry(params, pose, frame, scale, protocol)
    coarse = CoarseGrid.over(geometry, (geometry.sub, 4, 4))
    deformation = Deformation.random(rng, params.deformation_mm)
    maps = evaluate_bones(
        spec,
        posed_bones(spec, pose),
        frame,
        deformation,
        params.bone_scales,
        params.bone_age,
        params.sex,
        geometry,
        coarse,
        rng,
        params.shape_modes,
    )
    fine, acq, sub = geometry.fine_shape, geometry.shape, geometry.sub
    slow = np.repeat(smooth_noise(rng, acq, (2.0, 24.0, 24.0)), sub, axis=0)
    texture = np.repeat(smooth_noise(rng, acq, (1.0, 1.6, 1.6)), sub, axis=0)

    # Soft-tissue shapes are smooth: their distances are computed on the coarse lattice.
    nodes = coarse.points(geometry)
    limb = None
    tubes = limb_tubes(spec.region, pose, frame, params.stature_cm * 10.0, params.muscle_bulk)
    for tube in tubes:
        dist = tube.distance(nodes)
        limb = dist if limb is None else smooth_min(limb, dist, 12.0)
    bands = muscle_bands(pose, frame, params.muscle_bulk)
    bands += ligament_bands(spec.region, pose, frame)
    bellies = band_fields(bands, geometry, coarse, nodes)
    tissue_params = ph.SoftTissueParams(
        skin=SKIN_MM,
        fat=params.fat_mm,
        cover=2.0 + 0.5 * params.fat_mm,
        muscle_inflate=12.0 * params.scale,
    )
    pockets = fluid_pockets(spec.region, pose, frame, params.effusion_mm)
    tissue = ph.soft_tissues(
        upsample(limb, fine),
        maps.d1,
        bellies,
        [b.distance(nodes) for b in fat_pads(spec.region, pose, frame, params.fat_pad_scale)],
        [b.distance(nodes) for b in pockets],
        [(t.distance(nodes), kind) for t, kind in vessels(spec.region, pose, frame)],
        [b.distance(nodes) for b in lungs(spec.region, pose, frame)],
        tissue_params,
        slow,
        texture,
    )
    fat_fraction = np.zeros(fine, np.float32)
    bone_params = ph.BoneTissueParams.for_subject(
        params.bone_age, params.scale, params.effusion_mm, params.scar_mm
    )
    off_midline = None
    if spec.menisci:
        # Medial-lateral distance (adult mm) from the knee's notch, less the notch half-width.
        centre_x = pose.body_position(spec.center_body)[0]
        model_x = frame.to_model(nodes.reshape(3, -1))[0].reshape(coarse.shape)
        off_midline = upsample(np.abs(model_x - centre_x) - NOTCH_HALF_WIDTH_MM, fine)
    label, bone = ph.bone_tissues(
        spec, maps, bone_params, tissue, fat_fraction, texture, off_midline
    )
    if params.marrow_change > 0:
        ph.marrow_changes(tissue, fat_fraction, params.marrow_change, params.texture_seed, sub)
    other = tissue != ph.MARROW
    fat_fraction[other] = ph.FAT_FRACTION[tissue[other]]
    # Muscle texture: streaks of intramuscular fat along the fibres (roughly the image rows).
    streak = np.repeat(smooth_noise(rng, acq, (1.0, 9.0, 1.3)), sub, axis=0)
    muscle = tissue == ph.MUSCLE
    marbling = 0.03 + (0.15 + 0.015 * params.fat_mm) * np.clip(streak[muscle] - 0.8, 0.0, 1.5)
    fat_fraction[muscle] = marbling
    return ph.Phantom(tissue, fat_fraction, label, bone), geometry, rng, texture


def synthesize_subject(
    params: SubjectParams, scale: float = 1.0, protocol: Protocol | None = None
) -> SubjectVolume:
    """Render one subject. ``scale`` < 1 shrinks the matrix and slice count (for tests).
    ``protocol``: image it with another protocol than its joint's own (synth/protocol_swap.py,
    with the subject's acquisition numbers drawn from it)."""
    protocol = protocol or PROTOCOLS[params.joint]
    phantom, geometry, rng, texture = build_phantom(params, scale, protocol=protocol)
    water_t, fat_t, tex_amp = signal_tables(
        protocol.sequence, params.tr, params.te, params.flip, params.tissue_jitter
    )
    water, fat = fine_signals(
        phantom.tissue, phantom.fat_fraction, texture, water_t, fat_t, tex_amp
    )
    water = slice_average(water, geometry.sub)
    fat = slice_average(fat, geometry.sub)
    sensitivity = None
    if protocol.coil is not None:
        spec = joint_spec(params.joint)
        pose = posture(spec.model, params.angles)
        frame = body_frame(params, pose)
        offset, reach = protocol.coil
        centre = frame.to_child(pose.body_position(spec.center_body) + np.asarray(offset))
        sensitivity = surface_coil(geometry.acquired_points(), centre, reach * params.scale)
    muscle_ff = float(ph.FAT_FRACTION[ph.MUSCLE])
    reference = float(water_t[ph.MUSCLE] * (1 - muscle_ff) + fat_t[ph.MUSCLE] * muscle_ff)
    image = acquire(
        water,
        fat,
        rng,
        fat_sat=protocol.fat_sat,
        fat_sat_efficiency=params.fat_sat_efficiency,
        blur=params.blur,
        bias=params.bias,
        snr=params.snr,
        reference=reference,
        gain=params.gain / max(reference, 1e-6) * 0.35,
        sensitivity=sensitivity,
        motion=params.motion,
    )
    image = np.clip(np.rint(image), 0, 32767).astype(np.int16)
    return SubjectVolume(image, majority_label(phantom.label, geometry.sub), geometry)


def majority_label(label: np.ndarray, sub: int) -> np.ndarray:
    """The most frequent value over each slice's sub-slices (ties go to the background)."""
    if sub == 1:
        return label
    z, y, x = label.shape
    groups = label.reshape(z // sub, sub, y, x)
    values = np.unique(groups)
    counts = np.stack([(groups == v).sum(axis=1) for v in values])
    return values[np.argmax(counts, axis=0)].astype(np.uint8)
