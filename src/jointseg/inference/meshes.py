"""Surface meshes of label maps, in scanner coordinates (mm, LPS as ITK reports them).

Marching cubes runs on the padded, cropped mask in voxel units; the vertices then go through the
image's index-to-physical map (``origin + direction @ diag(spacing) @ index``) and a Taubin filter,
which smooths the voxel staircase without the shrinkage of plain Laplacian smoothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import trimesh
from skimage import measure

from jointseg.inference.postprocess import bounding_box, largest_component
from jointseg.utils.atomic import atomic_path

MESH_FORMATS = ("stl", "ply")
SMOOTH_ITERATIONS = 30  # Taubin passes: area within ~2 % of a smooth surface, volume kept


@dataclass(frozen=True)
class Geometry:
    """The physical placement of a z,y,x voxel array (spacing and origin in x,y,z order)."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 3x3, row-major, as SimpleITK

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        if image.GetDimension() != 3:
            raise ValueError(f"a 3D image is needed, got {image.GetDimension()}D")
        return cls(image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    @property
    def matrix(self) -> np.ndarray:
        """3x3 map from x,y,z voxel indices to a physical offset in mm."""
        return np.asarray(self.direction, float).reshape(3, 3) @ np.diag(self.spacing)

    def to_physical(self, zyx_index: np.ndarray) -> np.ndarray:
        """Continuous z,y,x voxel indices [N, 3] -> physical x,y,z points [N, 3] in mm."""
        xyz = np.asarray(zyx_index, float)[:, ::-1]
        return xyz @ self.matrix.T + np.asarray(self.origin, float)

    @property
    def voxel_volume(self) -> float:
        """mm^3 per voxel."""
        return float(np.prod(self.spacing))


def _crop(mask: np.ndarray, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """The padded bounding box of a non-empty ``mask`` and the z,y,x index of its first voxel."""
    box = bounding_box(mask)
    first = np.array([b.start for b in box])  # type: ignore[union-attr]
    return np.pad(mask[box], pad, constant_values=False), first - pad


def mask_to_mesh(
    mask: np.ndarray,
    geometry: Geometry,
    *,
    largest_only: bool = True,
    smooth_iterations: int = SMOOTH_ITERATIONS,
) -> trimesh.Trimesh | None:
    """A closed, outward-oriented surface of ``mask`` (z,y,x) in physical mm; None when empty.

    The mask is padded before marching cubes so that the surface closes at the array's border;
    each component yields a closed surface, so the mesh is watertight.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return None
    padded, first = _crop(mask, pad=1)
    if largest_only:
        padded = largest_component(padded)
    verts, faces, _, _ = measure.marching_cubes(
        padded.astype(np.float32), level=0.5, allow_degenerate=False
    )
    mesh = trimesh.Trimesh(geometry.to_physical(verts + first), faces, process=True)
    if smooth_iterations > 0:
        trimesh.smoothing.filter_taubin(mesh, lamb=0.5, nu=0.53, iterations=smooth_iterations)
    if mesh.volume < 0:  # index->physical maps with negative determinant flip the winding
        mesh.invert()
    return mesh


def label_meshes(
    labels: np.ndarray,
    structures: dict[str, int],
    geometry: Geometry,
    *,
    smooth_iterations: int = SMOOTH_ITERATIONS,
) -> dict[str, trimesh.Trimesh]:
    """One mesh per structure present in ``labels`` (largest component of each)."""
    meshes: dict[str, trimesh.Trimesh] = {}
    for name, value in structures.items():
        mesh = mask_to_mesh(labels == value, geometry, smooth_iterations=smooth_iterations)
        if mesh is not None:
            meshes[name] = mesh
    return meshes


def write_mesh(mesh: trimesh.Trimesh, path: str | Path) -> Path:
    """Write ``mesh`` atomically; the format (binary STL or PLY) follows the extension."""
    path = Path(path)
    kind = path.suffix.lower().lstrip(".")
    if kind not in MESH_FORMATS:
        raise ValueError(f"{path}: unsupported mesh format, use one of {MESH_FORMATS}")
    with atomic_path(path) as tmp:
        mesh.export(str(tmp), file_type=kind)
    return path


def display_triangles(mesh: trimesh.Trimesh, max_faces: int = 4000) -> np.ndarray:
    """Triangles [F, 3, 3] of ``mesh`` decimated by vertex clustering to about ``max_faces``.

    Vertices are snapped to a grid whose cell is sized from the surface area, each cell's
    vertices merge into their mean, and collapsed triangles are dropped: coarse, hole-free and
    cheap, which is all a thumbnail needs.
    """
    if len(mesh.faces) <= max_faces:
        return mesh.vertices[mesh.faces]
    cell = float(np.sqrt(2.0 * mesh.area / max_faces))
    keys = np.floor(mesh.vertices / cell).astype(np.int64)
    _, cluster, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    cluster = cluster.ravel()
    centres = np.zeros((len(counts), 3))
    np.add.at(centres, cluster, mesh.vertices)
    centres /= counts[:, None]
    faces = cluster[mesh.faces]
    keep = (
        (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    )
    faces = np.unique(faces[keep], axis=0)
    return centres[faces]
