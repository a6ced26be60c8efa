"""Inside/outside of triangle meshes on a regular grid, and signed distance grids.

Some of the bone surfaces we use are not watertight (tibia, humerus, scapula), so the inside is
decided by ray parity: along each grid column, every crossing of the surface toggles inside and
outside. A hole lets one ray through without toggling and leaves a streak along that axis only,
so the three axis-aligned parities are put to a majority vote.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Columns are shifted by these fractions of a voxel so that no ray passes exactly through a
# vertex or an edge of the mesh (which would count a crossing twice or not at all).
_JITTER = (0.1234567, 0.2345679)


def _axis_parity(
    vertices: np.ndarray,
    faces: np.ndarray,
    origin: np.ndarray,
    spacing: float,
    shape: tuple[int, int, int],
    axis: int,
) -> np.ndarray:
    """Ray-parity occupancy with rays along ``axis``; returns a bool array of ``shape``."""
    b, c = [k for k in range(3) if k != axis]
    tri = vertices[faces]  # F, 3 corners, 3 coords
    grid = (tri - origin) / spacing  # in voxel units; voxel centres at integers
    pb, pc, pa = grid[..., b], grid[..., c], grid[..., axis]
    jb, jc = _JITTER
    lo_b = np.ceil(pb.min(axis=1) - jb).astype(np.int64)
    hi_b = np.floor(pb.max(axis=1) - jb).astype(np.int64)
    lo_c = np.ceil(pc.min(axis=1) - jc).astype(np.int64)
    hi_c = np.floor(pc.max(axis=1) - jc).astype(np.int64)
    lo_b, lo_c = np.maximum(lo_b, 0), np.maximum(lo_c, 0)
    hi_b, hi_c = np.minimum(hi_b, shape[b] - 1), np.minimum(hi_c, shape[c] - 1)
    nb = np.maximum(hi_b - lo_b + 1, 0)
    nc = np.maximum(hi_c - lo_c + 1, 0)
    counts = nb * nc
    toggles = np.zeros(shape[b] * shape[c] * (shape[axis] + 1), dtype=np.int32)
    total = int(counts.sum())
    if total:
        owner = np.repeat(np.arange(len(faces)), counts)
        start = np.repeat(np.cumsum(counts) - counts, counts)
        local = np.arange(total) - start
        ib = lo_b[owner] + local // nc[owner]
        ic = lo_c[owner] + local % nc[owner]
        qb, qc = ib + jb, ic + jc
        xb, xc, xa = pb[owner], pc[owner], pa[owner]
        # Barycentric coordinates of the column centre in the triangle's projection.
        det = (xb[:, 1] - xb[:, 0]) * (xc[:, 2] - xc[:, 0]) - (xb[:, 2] - xb[:, 0]) * (
            xc[:, 1] - xc[:, 0]
        )
        ok = np.abs(det) > 1e-12
        det = np.where(ok, det, 1.0)
        w1 = ((xb[:, 2] - qb) * (xc[:, 0] - qc) - (xb[:, 0] - qb) * (xc[:, 2] - qc)) / det
        w2 = ((xb[:, 0] - qb) * (xc[:, 1] - qc) - (xb[:, 1] - qb) * (xc[:, 0] - qc)) / det
        w0 = 1.0 - w1 - w2
        hit = ok & (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        depth = w0 * xa[:, 0] + w1 * xa[:, 1] + w2 * xa[:, 2]
        first_inside = np.clip(np.ceil(depth[hit]), 0, shape[axis]).astype(np.int64)
        flat = (ib[hit] * shape[c] + ic[hit]) * (shape[axis] + 1) + first_inside
        toggles = np.bincount(flat, minlength=toggles.size).astype(np.int32)
    toggles = toggles.reshape(shape[b], shape[c], shape[axis] + 1)[..., :-1]
    parity = (np.cumsum(toggles, axis=2) & 1).astype(bool)
    # Back to (x, y, z) order.
    order = np.argsort([b, c, axis])
    return np.transpose(parity, order)


def occupancy(
    vertices: np.ndarray,
    faces: np.ndarray,
    origin: np.ndarray,
    spacing: float,
    shape: tuple[int, int, int],
) -> np.ndarray:
    """Voxels (centres at ``origin + spacing * index``) inside the mesh, by 3-axis ray parity.

    Works for watertight meshes and for meshes with small holes or stray triangles.
    """
    votes = sum(
        _axis_parity(vertices, faces, np.asarray(origin, float), spacing, shape, a).astype(np.uint8)
        for a in range(3)
    )
    return votes >= 2


@dataclass(frozen=True)
class DistanceGrid:
    """A signed distance field on a regular grid: negative inside, in the mesh's units."""

    values: np.ndarray  # float32, (nx, ny, nz)
    origin: np.ndarray  # (3,) centre of voxel (0, 0, 0)
    spacing: float

    def sample(self, points: np.ndarray, prism_axis: int | None = None) -> np.ndarray:
        """Trilinear signed distance at points (3, N).

        Outside the grid, the distance at the nearest grid point plus the distance to the grid
        (an upper bound); along ``prism_axis`` the edge cross-section is simply repeated, which
        continues a cut long bone.
        """
        index = (points - self.origin[:, None]) / self.spacing
        top = np.asarray(self.values.shape, float)[:, None] - 1.0
        clamped = np.clip(index, 0.0, top)
        values = ndimage.map_coordinates(self.values, clamped, order=1, mode="nearest")
        beyond = index - clamped
        if prism_axis is not None:
            beyond[prism_axis] = 0.0
        return values + np.sqrt((beyond**2).sum(axis=0)) * self.spacing


def signed_distance_grid(
    vertices: np.ndarray,
    faces: np.ndarray,
    spacing: float,
    margin: float,
    box: tuple[np.ndarray, np.ndarray] | None = None,
) -> DistanceGrid:
    """Signed distance grid of a mesh over its bounds (or ``box`` = (low, high)) plus ``margin``.

    Distances come from Euclidean distance transforms of the parity occupancy, accurate to
    about half a voxel near the surface.
    """
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    if box is not None:
        low, high = np.maximum(low, box[0]), np.minimum(high, box[1])
    low, high = low - margin, high + margin
    shape = tuple(int(np.ceil((h - lo) / spacing)) + 1 for lo, h in zip(low, high, strict=False))
    inside = occupancy(vertices, faces, low, spacing, shape)
    if not inside.any():
        raise ValueError("the mesh encloses no voxel of the grid; is it a closed surface?")
    outside_dist = ndimage.distance_transform_edt(~inside)
    inside_dist = ndimage.distance_transform_edt(inside)
    values = np.where(inside, 0.5 - inside_dist, outside_dist - 0.5) * spacing
    return DistanceGrid(values.astype(np.float32), low.astype(np.float64), float(spacing))
