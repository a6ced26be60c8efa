"""Per-bone signed distance grids in the bone's own (mesh) frame, built once per process."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy import ndimage

from jointseg.synth.anatomy import geom_mesh, joint_spec, posture
from jointseg.synth.voxelize import DistanceGrid, signed_distance_grid

#: Long bones are kept within this distance (adult mm) of the joint along their axis; beyond it
#: the grid's last cross-section is repeated, which continues the shaft.
LONG_BONE_REACH = 110.0
#: Distances are exact up to this far outside a bone (adult mm), an upper bound beyond.
OUTSIDE_MARGIN = 8.0
#: The finest grid spacing, and the largest grid (voxels) a bone gets.
MIN_SPACING = 0.6
MAX_VOXELS = 1.5e6


@dataclass(frozen=True)
class BoneField:
    """A bone's distance grid and the frame facts the phantom needs (adult mm, mesh frame)."""

    grid: DistanceGrid
    axis: int  # the long axis (largest extent) of the mesh frame
    low: float  # extent of the mesh along ``axis``
    high: float
    direction: float  # +1 when the end nearest the joint is the high end of ``axis``
    joint_center: np.ndarray  # the joint centre in this frame, at the model's rest pose
    cut: tuple[bool, bool] = (False, False)  # the grid cuts the bone at its low / high end

    def distance(self, points: np.ndarray) -> np.ndarray:
        """Signed distance (adult mm) at points (3, N) of the mesh frame; a cut shaft goes on."""
        return self.grid.sample(points, self.axis if any(self.cut) else None, self.cut)

    def depth_from_tip(self, points: np.ndarray, far_end: bool = False) -> np.ndarray:
        """Distance (adult mm) along the long axis from the end nearest the joint into the bone
        (from the other end with ``far_end``), at component-first points (3, N)."""
        direction = -self.direction if far_end else self.direction
        tip = self.high if direction > 0 else self.low
        return (tip - points[self.axis]) * direction


@cache
def bone_field(joint: str, bone: str) -> BoneField:
    """The distance grid of ``bone`` of ``joint`` (cached: built in about a second)."""
    spec = joint_spec(joint)
    bone_spec = next((b for b in spec.bones if b.name == bone), None)
    if bone_spec is None:
        raise ValueError(f"joint {joint!r} has no bone {bone!r}")
    vertices, faces = geom_mesh(spec.model, bone_spec.geom, bone_spec.part)
    rest = posture(spec.model, {})
    rotation, translation = rest.geom_pose(bone_spec.geom)
    center = (rest.body_position(spec.center_body) - translation) @ rotation
    extent = vertices.max(axis=0) - vertices.min(axis=0)
    axis = int(np.argmax(extent))
    box = None
    if bone_spec.long_bone:
        low = np.full(3, -np.inf)
        high = np.full(3, np.inf)
        low[axis], high[axis] = center[axis] - LONG_BONE_REACH, center[axis] + LONG_BONE_REACH
        box = (low, high)
    low = vertices.min(axis=0) if box is None else np.maximum(vertices.min(axis=0), box[0])
    high = vertices.max(axis=0) if box is None else np.minimum(vertices.max(axis=0), box[1])
    if box is not None:
        box = (low, high)
    volume = float(np.prod(high - low + 2 * OUTSIDE_MARGIN))
    spacing = max(MIN_SPACING, (volume / MAX_VOXELS) ** (1.0 / 3.0))
    grid = signed_distance_grid(vertices, faces, spacing, OUTSIDE_MARGIN, box)
    # Smooth away the voxel staircase of the parity occupancy (about half a voxel).
    smooth = ndimage.gaussian_filter(grid.values, 0.5, mode="nearest")
    grid = DistanceGrid(smooth.astype(np.float32), grid.origin, grid.spacing)
    lo, hi = vertices[:, axis].min(), vertices[:, axis].max()
    direction = 1.0 if abs(hi - center[axis]) < abs(center[axis] - lo) else -1.0
    cut = (False, False)
    if box is not None:
        cut = (bool(box[0][axis] > lo + 1e-6), bool(box[1][axis] < hi - 1e-6))
    return BoneField(grid, axis, float(lo), float(hi), direction, center, cut)
