"""One subject from its parameters to an MR volume and its label map (a pure function)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jointseg.synth import phantom as ph
from jointseg.synth.anatomy import body_position, geom_mesh, joint_spec, pose_model
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
from jointseg.synth.mr import acquire, fine_signals, signal_tables, slice_average
from jointseg.synth.noise import smooth_noise, upsample
from jointseg.synth.softtissue import (
    compartment_gap,
    fat_pads,
    limb_tubes,
    smooth_min,
    vessels,
)
from jointseg.synth.subject import PROTOCOLS, SubjectParams

SKIN_MM = 1.3


@dataclass
class SubjectVolume:
    image: np.ndarray  # int16 (z, y, x)
    label: np.ndarray  # uint8 (z, y, x)
    geometry: ScanGeometry


def _scapular_normal(model, data, frame: BodyFrame) -> np.ndarray:
    """Normal of the scapular plane (smallest principal axis of the posed scapula, child)."""
    from jointseg.synth.anatomy import geom_pose

    vertices, _ = geom_mesh("myoarm_r", "scapula_r")
    rotation, translation = geom_pose(model, data, "scapula_r")
    world = frame.to_child((vertices @ rotation.T + translation).T).T
    centred = world - world.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return vt[2]


def subject_geometry(
    params: SubjectParams, model, data, frame: BodyFrame, scale: float = 1.0
) -> ScanGeometry:
    """The subject's scan grid: the protocol's plane, jittered, centred near the joint."""
    protocol = PROTOCOLS[params.joint]
    spec = joint_spec(params.joint)
    centre_model = body_position(model, data, spec.center_body) + np.asarray(protocol.center_offset)
    centre = frame.to_child(centre_model) + np.asarray(params.center_jitter_mm)
    normal = _scapular_normal(model, data, frame) if protocol.plane.endswith("oblique") else None
    direction = rotation_from_degrees(params.obliquity_deg) @ plane_direction(
        protocol.plane, normal
    )
    matrix = max(32, int(round(protocol.matrix * scale)))
    slices = max(8, int(round(params.slices * scale)))
    thickness = params.thickness * params.slices / slices
    return scan_geometry(
        centre, direction, params.fov, matrix, slices, thickness, SUB_SLICE_MM / scale
    )


def synthesize_subject(params: SubjectParams, scale: float = 1.0) -> SubjectVolume:
    """Render one subject. ``scale`` < 1 shrinks the matrix and slice count (for tests)."""
    spec = joint_spec(params.joint)
    protocol = PROTOCOLS[params.joint]
    rng = np.random.default_rng(params.texture_seed)
    model, data = pose_model(spec.model, params.angles)
    poses = posed_bones(spec, params.angles)
    centre = body_position(model, data, spec.center_body)
    frame = BodyFrame(
        centre,
        params.scale * np.array([params.width_ratio, params.width_ratio, 1.0]),
        params.side == "left",
    )
    geometry = subject_geometry(params, model, data, frame, scale)
    deformation = Deformation.random(rng, params.deformation_mm)
    coarse = CoarseGrid.over(geometry, (geometry.sub, 4, 4))
    maps = evaluate_bones(
        spec,
        poses,
        frame,
        deformation,
        params.bone_scales,
        params.age,
        params.sex,
        geometry,
        coarse,
        rng,
    )

    fine = geometry.fine_shape
    acq = geometry.shape
    sub = geometry.sub
    slow = np.repeat(smooth_noise(rng, acq, (2.0, 24.0, 24.0)), sub, axis=0)
    texture = np.repeat(smooth_noise(rng, acq, (1.0, 1.6, 1.6)), sub, axis=0)

    # Soft-tissue shapes are smooth: their distances are computed on the coarse lattice.
    nodes = coarse.points(geometry)
    stature_mm = params.stature_cm * 10.0
    limb = None
    for tube in limb_tubes(params.joint, model, data, frame, stature_mm, params.muscle_bulk):
        dist = tube.distance(nodes)
        limb = dist if limb is None else smooth_min(limb, dist, 12.0)
    cover = 2.5 + 0.6 * params.fat_mm
    body = smooth_min(upsample(limb, fine), maps.d1 - cover, 6.0) + 1.5 * slow
    tissue = np.zeros(fine, np.uint8)
    inside = body < 0
    tissue[inside] = ph.MUSCLE
    fat_depth = SKIN_MM + params.fat_mm * np.clip(1.0 + 0.35 * slow, 0.3, 2.0)
    tissue[inside & (body > -fat_depth)] = ph.FAT
    tissue[inside & (body > -SKIN_MM)] = ph.SKIN
    # Intermuscular septa with a little fat along them.
    centre = geometry.origin + geometry.direction @ (
        (np.asarray(geometry.size) - 1) / 2 * geometry.spacing
    )
    gap = compartment_gap(geometry, rng, centre, 25.0 * params.scale)
    muscle = tissue == ph.MUSCLE
    tissue[muscle & (gap < 0.25 + 0.08 * params.fat_mm)] = ph.FAT
    tissue[muscle & (gap < 0.3)] = ph.SEPTUM
    deep = inside & (body < -fat_depth)
    for blob in fat_pads(params.joint, model, data, frame):
        tissue[deep & (upsample(blob.distance(nodes), fine) < 1.5 * texture)] = ph.FAT
    for tube, kind in vessels(params.joint, model, data, frame):
        vessel = inside & (upsample(tube.distance(nodes), fine) < 0)
        tissue[vessel] = ph.ARTERY if kind == "artery" else ph.VEIN

    fat_fraction = np.zeros(fine, np.float32)
    bone_params = ph.BoneTissueParams.for_subject(params.age, params.scale, params.effusion_mm)
    label_fine, _ = ph.bone_tissues(spec, maps, bone_params, tissue, fat_fraction, texture)
    del maps

    water_t, fat_t, ff_default, tex_amp = signal_tables(
        protocol.sequence, params.tr, params.te, params.flip, params.tissue_jitter
    )
    other = tissue != ph.MARROW
    fat_fraction[other] = ff_default.astype(np.float32)[tissue[other]]
    water, fat = fine_signals(tissue, fat_fraction, texture, water_t, fat_t, tex_amp)
    water, fat = slice_average(water, sub), slice_average(fat, sub)
    reference = float(
        water_t[ph.MUSCLE] * (1 - ff_default[ph.MUSCLE]) + fat_t[ph.MUSCLE] * ff_default[ph.MUSCLE]
    )
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
    )
    image = np.clip(np.rint(image), 0, 32767).astype(np.int16)
    return SubjectVolume(image, majority_label(label_fine, sub), geometry)


def majority_label(label: np.ndarray, sub: int) -> np.ndarray:
    """The most frequent value over each slice's sub-slices (ties go to the background)."""
    if sub == 1:
        return label
    z, y, x = label.shape
    groups = label.reshape(z // sub, sub, y, x)
    values = np.unique(groups)
    counts = np.stack([(groups == v).sum(axis=1) for v in values])
    return values[np.argmax(counts, axis=0)].astype(np.uint8)
