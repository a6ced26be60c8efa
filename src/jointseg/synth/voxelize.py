"""Inside/outside of triangle meshes on a regular grid, and signed distance grids.

Some of the bone surfaces we use are not watertight (tibia, humerus, scapula: small holes,
stray and duplicated triangles, non-manifold edges), so ray parity is not reliable. Instead the
holes are closed (each boundary loop fanned around its centroid), the surface is rasterized into
voxels, and the outside is flood-filled from the grid's border: every voxel the flood cannot
reach is inside. Internal or duplicated triangles cannot fool this.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def close_holes(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Close every boundary loop (edges used by one face) with a fan around its centroid.

    Vertices closer than 1e-6 of the mesh size are merged first.
    """
    scale = float(np.ptp(vertices, axis=0).max()) or 1.0
    keys = np.round(vertices / (scale * 1e-6)).astype(np.int64)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    vertices = vertices[first]
    faces = inverse.reshape(-1)[faces]
    faces = faces[
        (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    ]
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    boundary = unique[counts == 1]
    neighbours: dict[int, list[int]] = {}
    for a, b in boundary.tolist():
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    new_vertices, new_faces = [vertices], [faces]
    seen: set[int] = set()
    for start in sorted(neighbours):
        if start in seen:
            continue
        loop, previous, current = [start], None, start
        seen.add(start)
        while True:
            options = [n for n in neighbours[current] if n != previous and n not in seen]
            if not options:
                break
            previous, current = current, options[0]
            seen.add(current)
            loop.append(current)
        if len(loop) < 3:
            continue
        centre = len(vertices) + sum(len(v) for v in new_vertices[1:])
        new_vertices.append(vertices[loop].mean(axis=0, keepdims=True))
        ring = np.asarray(loop)
        new_faces.append(np.stack([ring, np.roll(ring, -1), np.full(len(ring), centre)], axis=1))
    return np.concatenate(new_vertices), np.concatenate(new_faces)


def surface_voxels(
    vertices: np.ndarray,
    faces: np.ndarray,
    origin: np.ndarray,
    spacing: float,
    shape: tuple[int, int, int],
) -> np.ndarray:
    """Voxels (centres at ``origin + spacing * index``) that the surface passes through."""
    tri = (vertices[faces] - origin) / spacing  # F, 3, 3 in voxel units
    longest = np.max(np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=2), axis=1)
    surface = np.zeros(shape, bool)
    # Sample every triangle on a barycentric lattice finer than a third of a voxel.
    for n in np.unique(np.maximum(1, np.ceil(longest * 3.0)).astype(int)):
        group = tri[np.maximum(1, np.ceil(longest * 3.0)).astype(int) == n]
        i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
        keep = i + j <= n
        u, v = i[keep] / n, j[keep] / n
        w = 1.0 - u - v
        points = (
            w[None, :, None] * group[:, None, 0]
            + u[None, :, None] * group[:, None, 1]
            + v[None, :, None] * group[:, None, 2]
        ).reshape(-1, 3)
        index = np.rint(points).astype(np.int64)
        ok = np.all((index >= 0) & (index < np.asarray(shape)), axis=1)
        surface[tuple(index[ok].T)] = True
    return surface


def occupancy(
    vertices: np.ndarray,
    faces: np.ndarray,
    origin: np.ndarray,
    spacing: float,
    shape: tuple[int, int, int],
) -> np.ndarray:
    """Voxels inside the mesh or on its surface; the grid's border must lie outside."""
    vertices, faces = close_holes(np.asarray(vertices, float), np.asarray(faces, np.int64))
    surface = surface_voxels(vertices, faces, np.asarray(origin, float), spacing, shape)
    labels, _ = ndimage.label(~surface)
    border = np.unique(
        np.concatenate(
            [
                labels[0].ravel(),
                labels[-1].ravel(),
                labels[:, 0].ravel(),
                labels[:, -1].ravel(),
                labels[:, :, 0].ravel(),
                labels[:, :, -1].ravel(),
            ]
        )
    )
    outside = np.isin(labels, border[border > 0])
    return ~outside


def clean_occupancy(inside: np.ndarray, min_fraction: float = 0.01) -> np.ndarray:
    """Fill enclosed cavities and drop specks (left by stray triangles) from an occupancy."""
    labels, count = ndimage.label(inside)
    if count == 0:
        raise ValueError("the mesh encloses no voxel of the grid; is it a closed surface?")
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(sizes >= min_fraction * sizes.max()) + 1
    return ndimage.binary_fill_holes(np.isin(labels, keep))


@dataclass(frozen=True)
class DistanceGrid:
    """A signed distance field on a regular grid: negative inside, in the mesh's units."""

    values: np.ndarray  # float32, (nx, ny, nz)
    origin: np.ndarray  # (3,) centre of voxel (0, 0, 0)
    spacing: float

    def sample(
        self,
        points: np.ndarray,
        prism_axis: int | None = None,
        prism_ends: tuple[bool, bool] = (True, True),
    ) -> np.ndarray:
        """Trilinear signed distance at points (3, N).

        Outside the grid, the distance at the nearest grid point plus the distance to the grid
        (an upper bound); beyond the low/high end of ``prism_axis`` flagged in ``prism_ends``
        the edge cross-section is simply repeated, which continues a cut long bone.
        """
        index = (points - self.origin[:, None]) / self.spacing
        top = np.asarray(self.values.shape, float)[:, None] - 1.0
        clamped = np.clip(index, 0.0, top)
        values = ndimage.map_coordinates(self.values, clamped, order=1, mode="nearest")
        beyond = index - clamped
        if prism_axis is not None:
            along = beyond[prism_axis]
            repeat = ((along < 0) & prism_ends[0]) | ((along > 0) & prism_ends[1])
            along[repeat] = 0.0
        return values + np.sqrt((beyond**2).sum(axis=0)) * self.spacing


def signed_distance_grid(
    vertices: np.ndarray,
    faces: np.ndarray,
    spacing: float,
    margin: float,
    box: tuple[np.ndarray, np.ndarray] | None = None,
) -> DistanceGrid:
    """Signed distance grid of a mesh over its bounds (or ``box`` = (low, high)) plus ``margin``.

    Distances come from Euclidean distance transforms of the occupancy, accurate to about half
    a voxel near the surface. The occupancy is found over the whole mesh, then cropped.
    """
    low, high = vertices.min(axis=0) - margin, vertices.max(axis=0) + margin
    shape = tuple(int(np.ceil((h - lo) / spacing)) + 1 for lo, h in zip(low, high, strict=True))
    inside = clean_occupancy(occupancy(vertices, faces, low, spacing, shape))
    if box is not None:
        start = np.clip(np.floor((box[0] - margin - low) / spacing), 0, None).astype(int)
        stop = np.minimum(np.ceil((box[1] + margin - low) / spacing).astype(int) + 1, shape)
        inside = inside[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))]
        low = low + start * spacing
    outside_dist = ndimage.distance_transform_edt(~inside)
    inside_dist = ndimage.distance_transform_edt(inside)
    # The occupancy includes every voxel the surface runs through: its border lies about 0.6
    # voxel outside the surface. Thin plates (one or two voxels thick) are kept inside.
    values = (np.where(inside, 0.5 - inside_dist, outside_dist - 0.5) + 0.6) * spacing
    thin = inside & (ndimage.maximum_filter(inside_dist, size=3) < 1.5)
    values[thin] = np.minimum(values[thin], -0.15 * spacing)
    return DistanceGrid(values.astype(np.float32), low.astype(np.float64), float(spacing))
