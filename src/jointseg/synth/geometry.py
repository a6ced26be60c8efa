"""Where things are: the child's body relative to the adult model, and the scan's voxel grid.

World coordinates are LPS millimetres (x to the patient's left, y posterior, z superior), as in
the MuJoCo models and in DICOM/ITK. Arrays are in (z, y, x) = (slice, row, column) order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

#: Sub-slices per slice are chosen so that they are about this thick (mm): the partial volume
#: along the slice direction is then integrated over them.
SUB_SLICE_MM = 1.5

#: In-plane axes (columns i, rows j) of each plane; the slice axis is their cross product.
PLANES = {
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),  # columns anterior->posterior
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),  # columns right->left
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),  # columns right->left, rows A->P
}


def _col(v: np.ndarray, ndim: int) -> np.ndarray:
    return np.asarray(v, dtype=np.float64).reshape((3,) + (1,) * (ndim - 1))


def apply_affine(matrix: np.ndarray, offset: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``matrix @ p + offset`` for component-first points (3, ...)."""
    out = np.empty(points.shape, dtype=np.result_type(points.dtype, np.float32))
    for r in range(3):
        out[r] = matrix[r, 0] * points[0] + matrix[r, 1] * points[1] + matrix[r, 2] * points[2]
        out[r] += offset[r]
    return out


@dataclass(frozen=True)
class BodyFrame:
    """Maps the adult model's world to the child's: mirror(c + S (q - c)).

    Points are component-first arrays (3, ...), as everywhere in the synthesizer.
    """

    center: np.ndarray  # joint centre in the model's world (mm)
    scale: np.ndarray  # (3,) per world axis
    mirror: bool  # left side: x -> -x

    @property
    def _flip(self) -> np.ndarray:
        return np.array([-1.0 if self.mirror else 1.0, 1.0, 1.0])

    def to_child(self, q: np.ndarray) -> np.ndarray:
        n = np.ndim(q)
        c = _col(self.center, n)
        return (c + (q - c) * _col(self.scale, n)) * _col(self._flip, n)

    def to_model(self, p: np.ndarray) -> np.ndarray:
        n = np.ndim(p)
        c = _col(self.center, n)
        return c + (p * _col(self._flip, n) - c) / _col(self.scale, n)

    @property
    def mean_scale(self) -> float:
        return float(np.prod(self.scale) ** (1.0 / 3.0))


@dataclass(frozen=True)
class ScanGeometry:
    """The acquired voxel grid, and its finer sub-slice grid for partial volume."""

    size: tuple[int, int, int]  # (columns, rows, slices) = ITK (x, y, z) order
    spacing: np.ndarray  # (3,) mm
    origin: np.ndarray  # (3,) centre of voxel (0, 0, 0), LPS mm
    direction: np.ndarray  # (3, 3), columns are the image axes in LPS
    sub: int  # sub-slices per slice

    @property
    def fine_shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x) of the sub-slice grid."""
        return (self.size[2] * self.sub, self.size[1], self.size[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.size[2], self.size[1], self.size[0])

    def fine_axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Positions along i, j and the fine k axis, in acquired-voxel units."""
        i = np.arange(self.size[0], dtype=np.float64)
        j = np.arange(self.size[1], dtype=np.float64)
        k = (np.arange(self.size[2] * self.sub) + 0.5) / self.sub - 0.5
        return i, j, k

    def fine_points(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        """World coordinates (3, nz, ny, nx), float32, of the fine voxels in ``box``."""
        i, j, k = self.fine_axes()
        step = self.direction * self.spacing  # columns: world step per index
        out = np.empty(
            (3,) + tuple(len(a[b]) for a, b in zip((k, j, i), box, strict=False)), np.float32
        )
        for r in range(3):
            out[r] = (
                self.origin[r]
                + (k[box[0]] * step[r, 2])[:, None, None]
                + (j[box[1]] * step[r, 1])[None, :, None]
                + (i[box[2]] * step[r, 0])[None, None, :]
            )
        return out

    def acquired_points(self) -> np.ndarray:
        """World coordinates (3, z, y, x), float32, of the acquired voxels' centres."""
        kz = (np.arange(self.size[2]) + 0.5) * self.sub - 0.5
        jy = np.arange(self.size[1], dtype=np.float64)
        ix = np.arange(self.size[0], dtype=np.float64)
        return self.world_of_fine(kz[:, None, None], jy[None, :, None], ix[None, None, :])

    def full_box(self) -> tuple[slice, slice, slice]:
        return tuple(slice(0, n) for n in self.fine_shape)

    def world_of_fine(self, kz: np.ndarray, jy: np.ndarray, ix: np.ndarray) -> np.ndarray:
        """World coordinates (3, ...) of fractional fine indices (broadcast together)."""
        k = (np.asarray(kz, np.float64) + 0.5) / self.sub - 0.5
        step = self.direction * self.spacing
        return np.stack(
            [
                self.origin[r]
                + k * step[r, 2]
                + np.asarray(jy) * step[r, 1]
                + np.asarray(ix) * step[r, 0]
                for r in range(3)
            ]
        ).astype(np.float32)

    def fine_box(self, low: np.ndarray, high: np.ndarray) -> tuple[slice, slice, slice] | None:
        """The fine-grid index box (z, y, x slices) covering the world box [low, high]."""
        corners = np.array(
            [
                [x, y, z]
                for x in (low[0], high[0])
                for y in (low[1], high[1])
                for z in (low[2], high[2])
            ]
        )
        index = np.linalg.solve(self.direction * self.spacing, (corners - self.origin).T).T
        lo, hi = index.min(axis=0), index.max(axis=0)
        kk = (lo[2] + 0.5) * self.sub - 0.5, (hi[2] + 0.5) * self.sub - 0.5
        bounds = (
            (kk[0], kk[1], self.fine_shape[0]),
            (lo[1], hi[1], self.size[1]),
            (lo[0], hi[0], self.size[0]),
        )
        box = []
        for start, stop, n in bounds:
            a, b = max(int(np.floor(start)), 0), min(int(np.ceil(stop)) + 1, n)
            if a >= b:
                return None
            box.append(slice(a, b))
        return tuple(box)


def rotation_from_degrees(angles: list[float]) -> np.ndarray:
    """A small rotation from three angles (degrees) about the LPS axes."""
    return Rotation.from_euler("xyz", angles, degrees=True).as_matrix()


def plane_direction(plane: str, oblique_normal: np.ndarray | None = None) -> np.ndarray:
    """Direction matrix (columns i, j, k) of an acquisition plane; the slice axis is i x j.

    'coronal-oblique' turns the coronal plane about the superior axis so that the slices are
    perpendicular to ``oblique_normal`` (e.g. the normal of the scapular plane).
    """
    if plane == "coronal-oblique":
        if oblique_normal is None:
            raise ValueError("a coronal-oblique plane needs a normal")
        k = np.array([oblique_normal[0], oblique_normal[1], 0.0])
        k /= np.linalg.norm(k)
        if k[1] < 0:
            k = -k
        j = np.array([0.0, 0.0, -1.0])
        i = np.cross(j, k)
        return np.stack([i, j, np.cross(i, j)], axis=1)
    if plane not in PLANES:
        raise ValueError(f"unknown plane {plane!r}")
    i, j = (np.asarray(v) for v in PLANES[plane])
    return np.stack([i, j, np.cross(i, j)], axis=1)


def scan_geometry(
    center: np.ndarray,
    direction: np.ndarray,
    fov: float,
    matrix: int,
    slices: int,
    thickness: float,
    sub_slice_mm: float = SUB_SLICE_MM,
) -> ScanGeometry:
    """A square in-plane grid of ``matrix`` voxels over ``fov`` mm, ``slices`` slices of
    ``thickness`` mm, centred on ``center``."""
    pixel = fov / matrix
    if thickness <= pixel:
        raise ValueError(f"slice thickness {thickness} mm must exceed the pixel size {pixel} mm")
    spacing = np.array([pixel, pixel, thickness])
    size = (matrix, matrix, slices)
    half = (np.asarray(size, float) - 1.0) / 2.0 * spacing
    origin = np.asarray(center, float) - direction @ half
    sub = max(1, int(np.ceil(thickness / sub_slice_mm - 1e-6)))
    return ScanGeometry(size, spacing, origin, direction, sub)


@dataclass(frozen=True)
class CoarseGrid:
    """A coarse lattice over the fine grid (corners aligned), for smooth fields that are then
    interpolated linearly: exact for affine maps, accurate for slowly varying ones."""

    fine_shape: tuple[int, int, int]
    shape: tuple[int, int, int]

    @classmethod
    def over(cls, geometry: ScanGeometry, step: tuple[int, int, int]) -> CoarseGrid:
        shape = tuple(
            max(2, int(np.ceil((n - 1) / s)) + 1)
            for n, s in zip(geometry.fine_shape, step, strict=False)
        )
        return cls(geometry.fine_shape, shape)

    def node_positions(self) -> list[np.ndarray]:
        """Fine-index position of the coarse nodes along each axis."""
        return [
            np.linspace(0.0, f - 1.0, c) for f, c in zip(self.fine_shape, self.shape, strict=False)
        ]

    def points(self, geometry: ScanGeometry) -> np.ndarray:
        """World coordinates (3, cz, cy, cx) of the coarse nodes."""
        kz, jy, ix = self.node_positions()
        return geometry.world_of_fine(kz[:, None, None], jy[None, :, None], ix[None, None, :])

    def box_from_fine(self, box: tuple[slice, slice, slice]) -> tuple[slice, slice, slice]:
        """The coarse-node box covering a fine-grid box."""
        out = []
        for sl, f, c in zip(box, self.fine_shape, self.shape, strict=True):
            ratio = (c - 1) / max(f - 1, 1)
            start = int(np.floor(sl.start * ratio))
            stop = min(int(np.ceil((sl.stop - 1) * ratio)) + 1, c)
            out.append(slice(start, max(stop, start + 1)))
        return tuple(out)

    def coarse_coordinates(self, index: tuple[np.ndarray, ...]) -> np.ndarray:
        """Fractional coarse coordinates (3, n) of fine voxel indices (z, y, x arrays)."""
        return np.stack(
            [
                np.asarray(i, np.float64) * (c - 1) / max(f - 1, 1)
                for i, f, c in zip(index, self.fine_shape, self.shape, strict=False)
            ]
        )
