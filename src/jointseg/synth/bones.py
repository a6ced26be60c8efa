"""The child's posed bones on the scan's fine grid: distances, growth plates, cortex.

Each bone's distance grid (adult model, mesh frame) is sampled at the fine voxels through the
chain scan world -> adult model world (undo mirror and growth scaling) -> smooth shape
deformation -> mesh frame at the posed joint angles (MuJoCo forward kinematics) -> per-bone
anisotropic shape scaling -> the knee's statistical shape modes (``shape_modes``). All bones of
a subject share one deformation field, so bones that touch keep touching.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from jointseg.synth import growth, shape_modes
from jointseg.synth.anatomy import JointSpec, Posture
from jointseg.synth.fields import bone_field
from jointseg.synth.geometry import BodyFrame, CoarseGrid, ScanGeometry, apply_affine
from jointseg.synth.noise import upsample

FAR = np.float32(1e4)
#: A bone farther than this (child mm) from every voxel is left out.
REACH_MM = 30.0
#: Exact evaluation in this shell around a bone's surface (child mm); linear elsewhere.
REFINE_INSIDE_MM = 9.0
REFINE_OUTSIDE_MM = 8.0


@dataclass
class Deformation:
    """A smooth random displacement field (adult mm): a sum of plane waves per component."""

    wave: np.ndarray  # (K, 3) wave vectors (rad/mm)
    phase: np.ndarray  # (3, K)
    amplitude: np.ndarray  # (3, K)

    @classmethod
    def random(cls, rng: np.random.Generator, rms_mm: float, waves: int = 4) -> Deformation:
        direction = rng.standard_normal((waves, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        wavelength = rng.uniform(60.0, 140.0, waves)
        amplitude = rng.standard_normal((3, waves))
        amplitude *= rms_mm / np.sqrt((amplitude**2).sum(axis=1, keepdims=True) / 2.0)
        amplitude /= np.sqrt(3.0)
        phase = rng.uniform(0, 2 * np.pi, (3, waves))
        return cls(direction * (2 * np.pi / wavelength)[:, None], phase, amplitude)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Displacements (3, N) at component-first points (3, N)."""
        out = np.zeros_like(points)
        for k, w in enumerate(self.wave):
            arg = w[0] * points[0] + w[1] * points[1] + w[2] * points[2]
            for c in range(3):
                out[c] += self.amplitude[c, k] * np.sin(arg + self.phase[c, k])
        return out


@dataclass
class BoneMaps:
    """Per fine voxel: the nearest and second-nearest bone and facts about the nearest."""

    d1: np.ndarray  # distance to the nearest bone (child mm, negative inside)
    d2: np.ndarray  # distance to the second-nearest bone
    id1: np.ndarray  # index of the nearest bone in the joint's bone list (-1: none near)
    id2: np.ndarray  # index of the second-nearest bone
    plate: np.ndarray  # signed distance to its growth plate (child mm, < 0 toward the joint)
    plate_half: np.ndarray  # half thickness of that plate (child mm; 0: closed or none)
    shaft: np.ndarray  # 0 at the epiphysis .. 1 in the diaphysis (cortex and marrow)


def _physis_half_thickness(spec, age: float, sex: str) -> float:
    if not spec.physes:
        return 0.0
    return 0.5 * growth.physis_thickness(age, sex, spec.physes[0].site)


def posed_bones(joint: JointSpec, pose: Posture) -> list[tuple[np.ndarray, np.ndarray]]:
    """Rotation and translation (mm) of every bone's mesh frame in a posture."""
    poses = []
    for bone in joint.bones:
        rotation, translation = pose.geom_pose(bone.geom)
        poses.append((rotation, translation + np.asarray(joint.shifts.get(bone.name, (0, 0, 0)))))
    return poses


def evaluate_bones(
    joint: JointSpec,
    poses: list[tuple[np.ndarray, np.ndarray]],
    frame: BodyFrame,
    deformation: Deformation,
    bone_scales: dict[str, list[float]],
    age: float,
    sex: str,
    geometry: ScanGeometry,
    coarse: CoarseGrid,
    rng: np.random.Generator,
    mode_coefficients: list[float] | None = None,
) -> BoneMaps:
    """Sample every bone on the fine grid and keep, per voxel, the two nearest.

    Each bone is first evaluated on the coarse lattice (its mesh-frame coordinates, distance,
    plate and shaft fields), linearly interpolated to the fine grid, and then evaluated exactly
    where detail matters: near its surface and near its growth plate.
    """
    shape = geometry.fine_shape
    d1 = np.full(shape, FAR, np.float32)
    d2 = np.full(shape, FAR, np.float32)
    id1 = np.full(shape, -1, np.int8)
    id2 = np.full(shape, -1, np.int8)
    plate = np.full(shape, FAR, np.float32)
    plate_half = np.zeros(shape, np.float32)
    shaft = np.zeros(shape, np.float32)
    nodes = coarse.points(geometry).reshape(3, -1).astype(np.float64)
    model_nodes = frame.to_model(nodes)
    model_nodes += deformation(model_nodes)
    for index, (bone, (rotation, translation)) in enumerate(zip(joint.bones, poses, strict=False)):
        field = bone_field(joint.region, bone.name)
        sigma = np.asarray(bone_scales[bone.name], float)
        size = frame.mean_scale * float(np.prod(sigma) ** (1 / 3))
        # Mesh frame, then the bone's own shape scaling about the joint centre.
        inverse = rotation.T / sigma[:, None]
        centre = field.joint_center
        local_c = apply_affine(
            inverse, centre - inverse @ translation - centre / sigma, model_nodes
        )
        local_c = shape_modes.pull_back(joint.region, bone.name, mode_coefficients, local_c)
        dist_c = field.distance(local_c) * size
        if dist_c.min() > REACH_MM:
            continue
        wave = rng.uniform(0.25, 0.45, 2), rng.uniform(0, 2 * np.pi, 2)
        plate_c, shaft_c = _plate_and_shaft(bone, field, local_c, size, wave)
        dist = upsample(dist_c.reshape(coarse.shape), shape)
        if bone.physes:
            bone_plate = upsample(plate_c.reshape(coarse.shape), shape)
            bone_shaft = upsample(shaft_c.reshape(coarse.shape), shape)
        else:
            bone_plate = np.full(shape, FAR, np.float32)
            bone_shaft = np.zeros(shape, np.float32)
        refine = (dist > -REFINE_INSIDE_MM) & (dist < REFINE_OUTSIDE_MM)
        if bone.physes:
            refine |= (np.abs(bone_plate) < 4.0) & (dist < 2.0)
        where = np.nonzero(refine)
        coords = coarse.coarse_coordinates(where)
        local = np.stack(
            [
                ndimage.map_coordinates(local_c[c].reshape(coarse.shape), coords, order=1)
                for c in range(3)
            ]
        )
        dist[where] = field.distance(local) * size
        fine_plate, fine_shaft = _plate_and_shaft(bone, field, local, size, wave)
        bone_plate[where], bone_shaft[where] = fine_plate, fine_shaft
        half = _physis_half_thickness(bone, age, sex)
        nearer = dist < d1
        second = nearer | (dist < d2)
        id2 = np.where(nearer, id1, np.where(second, np.int8(index), id2))
        d2 = np.where(nearer, d1, np.minimum(d2, dist))
        d1 = np.where(nearer, dist, d1)
        id1[nearer] = index
        plate = np.where(nearer, bone_plate, plate)
        plate_half[nearer] = half
        shaft = np.where(nearer, bone_shaft, shaft)
    return BoneMaps(d1, d2, id1, id2, plate, plate_half, shaft)


def _plate_and_shaft(bone, field, local: np.ndarray, size: float, wave_params):
    """Signed distance (child mm) to the bone's growth plate and its 0..1 shaft coordinate."""
    if not bone.physes:
        n = local.shape[1]
        return np.full(n, FAR, np.float32), np.zeros(n, np.float32)
    physis = bone.physes[0]
    depth = field.depth_from_tip(local, physis.far_end)
    lateral = [a for a in range(3) if a != field.axis]
    u = local[lateral[0]] - field.joint_center[lateral[0]]
    v = local[lateral[1]] - field.joint_center[lateral[1]]
    radius = np.sqrt(u**2 + v**2)
    # An undulating plate (its mammillary processes), tent-shaped where the bone has one.
    freq, phase = wave_params
    wave = 0.8 * np.sin(u * freq[0] + phase[0]) * np.sin(v * freq[1] + phase[1])
    surface = physis.depth + physis.tent * radius + wave
    plate = (depth - surface) * size
    shaft = np.clip((depth - physis.depth - 8.0) / 45.0, 0.0, 1.0)
    return plate.astype(np.float32), shaft.astype(np.float32)
