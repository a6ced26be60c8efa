"""Shape modes of an adult lower-limb statistical shape model carried onto the knee's bones.

The model is ``LLP26`` of the ``musculoskeletal-models`` package (MPL-2.0, Auckland
Bioengineering Institute): the mean and principal modes of pelvis, femur, patella and
tibia-fibula of 26 adults, rigidly aligned, in mm (the right side, mirrored from the left). Its
nodes and the MyoSuite meshes share no correspondence, so each model bone is aligned to the
MyoSuite bone(s) by a similarity transform (principal axes, then ICP) and a MyoSuite point moves
by the inverse-distance-weighted displacements of its nearest aligned model nodes (those of all
the knee's bones, so that facing joint surfaces move alike). Each bone's translation, rotation
and uniform scaling near the knee are removed from its displacements: the model's bones were
aligned as a whole limb while ours are placed by the joint's kinematics, and size comes from
the subject's stature and per-bone scaling.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from jointseg.synth.anatomy import geom_mesh, joint_spec, posture
from jointseg.synth.fields import bone_field

#: The model file and, in the order of its node list, its bones and their mean meshes (read for
#: their node counts only).
MODEL_FILE = "shape_models/LLP26_right_mirrored_from_left_rigid.pc"
MODEL_BONES = {
    "pelvis": "atlas_meshes/pelvis_combined_cubic_mean_rigid_LLP26.geof",
    "femur": "atlas_meshes/femur_right_mirrored_from_left_mean_rigid_LLP26.geof",
    "patella": "atlas_meshes/patella_right_mirrored_from_left_mean_rigid_LLP26.geof",
    "tibia_fibula": (
        "atlas_meshes/tibia_fibula_cubic_right_mirrored_from_left_mean_rigid_LLP26.geof"
    ),
}
#: Joints whose bones take the modes, and the model bone each of their bones follows.
SOURCES = {
    "knee": {
        "femur": "femur",
        "patella": "patella",
        "tibia": "tibia_fibula",
        "fibula": "tibia_fibula",
    }
}
N_MODES = 5
CLIP = 2.5
NEIGHBOURS = 8
#: Softening (mm) of the inverse-distance weights, about half the model's node spacing.
SOFTEN_MM = 5.0
#: Width (adult mm) of the Gaussian weight around the knee centre over which a bone's
#: displacement's similarity part (translation, rotation, uniform scaling) is fitted and removed.
SIMILAR_SIGMA_MM = 50.0
#: The modes act on the knee region: they fade out between these distances (adult mm) from
#: the knee centre (the long bones are shown to 110 mm from it), leaving hip and ankle alone.
FADE_MM = (120.0, 170.0)
#: Spacing (adult mm) of the lattice on which a bone's mode displacements are tabulated.
LATTICE_MM = 2.5


@dataclass(frozen=True)
class ShapeModel:
    """Mean nodes (n, 3) and unit modes (M, n, 3) per model bone, in mm; mode variances."""

    mean: dict[str, np.ndarray]
    modes: dict[str, np.ndarray]
    variances: np.ndarray


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays in plain containers; refuses every other class."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _array_reconstruct()
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _array_reconstruct():
    """numpy's array reconstructor (``numpy._core`` in numpy 2, ``numpy.core`` before)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def read_numpy_pickle(path: Path) -> dict:
    """A pickle that holds only numpy arrays and plain Python data (nothing else is built)."""
    with open(path, "rb") as handle:
        return _NumpyOnlyUnpickler(handle).load()


def _package_file(name: str) -> Path:
    return Path(str(resources.files("musculoskeletal.models").joinpath(name)))


def _node_count(geof: str) -> int:
    with open(_package_file(geof)) as handle:
        return len(json.load(handle)["field_parameters"])


@lru_cache(maxsize=1)
def shape_model() -> ShapeModel:
    """The LLP26 model split by bone (cached per process)."""
    record = read_numpy_pickle(_package_file(MODEL_FILE))
    mean = np.asarray(record["mean"], np.float64)
    modes = np.asarray(record["modes"], np.float64)
    variances = np.asarray(record["weights"], np.float64)
    counts = [_node_count(geof) for geof in MODEL_BONES.values()]
    if 3 * sum(counts) != mean.size or modes.shape[0] != mean.size:
        raise ValueError(f"{MODEL_FILE}: {mean.size} values for {sum(counts)} nodes")
    # Values are component-first: every node's x, then every y, then every z.
    points = mean.reshape(3, -1).T
    vectors = modes.T.reshape(len(variances), 3, -1).transpose(0, 2, 1)
    bounds = np.cumsum([0, *counts])
    names = list(MODEL_BONES)
    return ShapeModel(
        {n: points[a:b] for n, a, b in zip(names, bounds[:-1], bounds[1:], strict=True)},
        {n: vectors[:, a:b] for n, a, b in zip(names, bounds[:-1], bounds[1:], strict=True)},
        variances,
    )


def sample_coefficients(rng: np.random.Generator, count: int = N_MODES) -> list[float]:
    """Mode coefficients in standard deviations: N(0, 1) clipped to +-CLIP."""
    return [round(float(v), 4) for v in np.clip(rng.standard_normal(count), -CLIP, CLIP)]


def has_modes(joint: str) -> bool:
    return joint in SOURCES


@dataclass(frozen=True)
class Similarity:
    """x -> scale * rotation @ x + translation."""

    rotation: np.ndarray
    scale: float
    translation: np.ndarray

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Transform points (n, 3)."""
        return self.scale * points @ self.rotation.T + self.translation


def fit_similarity(
    source: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None
) -> Similarity:
    """Weighted least-squares similarity (proper rotation) taking paired points (n, 3) onto
    (n, 3) (Umeyama's solution; trimesh's weighted ``procrustes`` is not optimal for non-uniform
    weights, which the symmetric ICP below uses)."""
    w = np.full(len(source), 1.0 / len(source)) if weights is None else weights / weights.sum()
    mu_s, mu_t = w @ source, w @ target
    a, b = source - mu_s, target - mu_t
    u, s, vt = np.linalg.svd((b * w[:, None]).T @ a)
    flip = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ flip @ vt
    scale = float(np.trace(np.diag(s) @ flip) / (w @ (a**2).sum(axis=1)))
    return Similarity(rotation, scale, mu_t - scale * rotation @ mu_s)


def _principal_axes(points: np.ndarray) -> np.ndarray:
    _, _, vt = np.linalg.svd(points - points.mean(axis=0), full_matrices=False)
    return vt  # rows: axes by decreasing spread


def _spread(points: np.ndarray) -> float:
    return float(np.sqrt(((points - points.mean(axis=0)) ** 2).sum(axis=1).mean()))


def align(source: np.ndarray, target: np.ndarray, iterations: int = 30) -> tuple[Similarity, float]:
    """Similarity taking point cloud ``source`` onto ``target`` (no correspondence), and the
    symmetric mean nearest-point distance (mm) left.

    Principal axes give four proper starting rotations (the axes' sign ambiguity); each is
    refined by symmetric ICP (nearest pairs both ways, which keeps the scale from shrinking)
    and the one with the lowest residual is kept.
    """
    tree = cKDTree(target)
    axes_s, axes_t = _principal_axes(source), _principal_axes(target)
    scale = _spread(target) / _spread(source)
    best: tuple[Similarity, float] | None = None
    for signs in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)):
        rotation = axes_t.T @ np.diag(signs) @ axes_s
        if np.linalg.det(rotation) < 0:
            rotation = axes_t.T @ np.diag(signs) @ np.diag([1, 1, -1]) @ axes_s
        start = Similarity(rotation, scale, target.mean(0) - scale * rotation @ source.mean(0))
        result = _icp(source, target, tree, start, iterations)
        if best is None or result[1] < best[1]:
            best = result
    return best


def _icp(source, target, tree, transform: Similarity, iterations: int):
    weights = np.concatenate(
        [np.full(len(source), 0.5 / len(source)), np.full(len(target), 0.5 / len(target))]
    )
    for step in range(iterations + 1):
        moved = transform(source)
        forward, nearest = tree.query(moved)
        backward, nearest_source = cKDTree(moved).query(target)
        residual = 0.5 * (forward.mean() + backward.mean())
        if step == iterations:
            return transform, float(residual)
        pairs_s = np.concatenate([source, source[nearest_source]])
        pairs_t = np.concatenate([target[nearest], target])
        transform = fit_similarity(pairs_s, pairs_t, weights)


def surface_points(vertices: np.ndarray, faces: np.ndarray, spacing: float = 3.0) -> np.ndarray:
    """Vertices and evenly spread points (about one per ``spacing`` squared) of a triangle
    surface; the same points every call."""
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    counts = np.ceil(area / spacing**2).astype(int)
    owner = np.repeat(np.arange(len(faces)), counts)
    u, v = np.random.default_rng(0).random((2, len(owner)))
    fold = u + v > 1
    u[fold], v[fold] = 1 - u[fold], 1 - v[fold]
    inside = a[owner] + u[:, None] * (b - a)[owner] + v[:, None] * (c - a)[owner]
    return np.concatenate([vertices, inside])


def shepard_weights(distance: np.ndarray, soften: float = SOFTEN_MM) -> np.ndarray:
    """Weights (n, k) of the k nearest nodes from distances (n, k + 1), sorted ascending.

    Softened inverse squared distances 1 / (d^2 + s^2) less that of the (k+1)-th node: they
    fall to zero as a node leaves the neighbourhood, so the interpolated field is continuous,
    and ``soften`` keeps it smooth between the model's nodes.
    """
    inverse = 1.0 / (distance**2 + soften**2)
    weights = inverse[:, :-1] - inverse[:, -1:]
    total = weights.sum(axis=1, keepdims=True)
    tie = total[:, 0] <= 0  # all k+1 nodes at one distance
    weights[tie] = 1.0
    return weights / np.where(tie[:, None], weights.shape[1], total)


@dataclass(frozen=True)
class BoneModes:
    """A bone's aligned model nodes and mode displacements, in its mesh frame (adult mm)."""

    nodes: np.ndarray  # (n, 3)
    modes: np.ndarray  # (M, n, 3): displacement per standard deviation of each mode
    centre: np.ndarray  # (3,) the knee centre
    residual: float  # symmetric mean nearest-point distance (mm) after alignment
    scale: float  # size of the MyoSuite bone relative to the model's mean

    def neighbours(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse-distance weights (n, k) and indices (n, k) of the nodes nearest points,
        faded out away from the knee."""
        distance, index = cKDTree(self.nodes).query(points, NEIGHBOURS + 1)
        return shepard_weights(distance) * self.fade(points)[:, None], index[:, :-1]

    def fade(self, points: np.ndarray) -> np.ndarray:
        """1 within FADE_MM[0] of the knee centre, 0 beyond FADE_MM[1], smooth between."""
        radius = np.linalg.norm(points - self.centre, axis=1)
        t = np.clip((radius - FADE_MM[0]) / (FADE_MM[1] - FADE_MM[0]), 0.0, 1.0)
        return 0.5 + 0.5 * np.cos(np.pi * t)

    def displacement(self, coefficients, points: np.ndarray) -> np.ndarray:
        """Displacements (n, 3) at points (n, 3): inverse-distance weights of the nearest nodes."""
        node_moves = np.tensordot(
            np.asarray(coefficients, float), self.modes[: len(coefficients)], 1
        )
        weights, index = self.neighbours(points)
        return np.einsum("nk,nkc->nc", weights, node_moves[index])

    def deform(self, coefficients, vertices: np.ndarray) -> np.ndarray:
        """Mesh vertices (n, 3) moved by the modes (faces unchanged)."""
        return vertices + self.displacement(coefficients, vertices)


def remove_similar_part(
    points: np.ndarray, moves: np.ndarray, centre: np.ndarray, sigma: float
) -> np.ndarray:
    """``moves`` (M, n, 3) at ``points`` (n, 3) less their weighted best-fitting small
    similarity motion t + w x r + s r (r = p - centre), Gaussian weights of width ``sigma``
    around ``centre``."""
    offset = points - centre
    weights = np.exp(-(offset**2).sum(1) / (2 * sigma**2))
    # Linear map (t, w, s) -> displacement at each point: [I | -[r]x | r].
    basis = np.zeros((len(points), 3, 7))
    basis[:, :, :3] = np.eye(3)
    basis[:, :, 6] = offset
    x, y, z = offset.T
    basis[:, 0, 4], basis[:, 0, 5] = z, -y
    basis[:, 1, 3], basis[:, 1, 5] = -z, x
    basis[:, 2, 3], basis[:, 2, 4] = y, -x
    a = (basis * np.sqrt(weights)[:, None, None]).reshape(-1, 7)
    out = np.empty_like(moves)
    for m, move in enumerate(moves):
        rhs = (move * np.sqrt(weights)[:, None]).reshape(-1)
        params = np.linalg.lstsq(a, rhs, rcond=None)[0]
        out[m] = move - basis @ params
    return out


def _bone_pose(joint: str, bone: str) -> tuple[np.ndarray, np.ndarray]:
    """Rotation and translation (mm) of a bone's mesh frame at the model's rest pose, with the
    joint's position correction."""
    spec = joint_spec(joint)
    geom = next(b.geom for b in spec.bones if b.name == bone)
    rotation, translation = posture(spec.model, {}).geom_pose(geom)
    return rotation, translation + np.asarray(spec.shifts.get(bone, (0.0, 0.0, 0.0)))


def _mesh_in_world(joint: str, bone: str) -> np.ndarray:
    spec = joint_spec(joint)
    bone_spec = next(b for b in spec.bones if b.name == bone)
    vertices, faces = geom_mesh(spec.model, bone_spec.geom, bone_spec.part)
    rotation, translation = _bone_pose(joint, bone)
    return surface_points(vertices, faces) @ rotation.T + translation


def carry_modes(modes: np.ndarray, variances: np.ndarray, transform: Similarity) -> np.ndarray:
    """Unit modes (M, n, 3) as displacements per standard deviation, rotated and scaled by
    ``transform`` (the translation does not act on displacements)."""
    steps = np.sqrt(variances)[:, None, None]
    return transform.scale * (steps * modes) @ transform.rotation.T


@dataclass(frozen=True)
class AlignedBone:
    """A model bone aligned onto its MyoSuite bone(s) at the rest pose (world, adult mm)."""

    nodes: np.ndarray  # (n, 3)
    modes: np.ndarray  # (M, n, 3): displacement per standard deviation of each mode
    residual: float  # symmetric mean nearest-point distance (mm) after alignment
    scale: float  # size of the MyoSuite bone relative to the model's mean


@cache
def aligned_bone(joint: str, source: str) -> AlignedBone:
    """Model bone ``source`` aligned to the bones of ``joint`` that follow it (cached)."""
    model = shape_model()
    partners = [b for b, s in SOURCES[joint].items() if s == source]
    target = np.concatenate([_mesh_in_world(joint, b) for b in partners])
    transform, residual = align(model.mean[source], target)
    nodes = transform(model.mean[source])
    moves = carry_modes(model.modes[source][:N_MODES], model.variances[:N_MODES], transform)
    spec = joint_spec(joint)
    centre = posture(spec.model, {}).body_position(spec.center_body)
    moves = remove_similar_part(nodes, moves, centre, SIMILAR_SIGMA_MM)
    return AlignedBone(nodes, moves, residual, transform.scale)


@cache
def bone_modes(joint: str, bone: str) -> BoneModes:
    """The modes of ``bone`` of ``joint`` in its mesh frame (cached per process).

    The nodes of every model bone of the joint are kept, so that where two bones meet both
    move alike and keep their joint space.
    """
    source = SOURCES.get(joint, {}).get(bone)
    if source is None:
        raise ValueError(f"no shape modes for {joint!r} {bone!r}")
    bones = [aligned_bone(joint, s) for s in dict.fromkeys(SOURCES[joint].values())]
    nodes = np.concatenate([b.nodes for b in bones])
    moves = np.concatenate([b.modes for b in bones], axis=1)
    rotation, translation = _bone_pose(joint, bone)
    spec = joint_spec(joint)
    centre = (posture(spec.model, {}).body_position(spec.center_body) - translation) @ rotation
    own = aligned_bone(joint, source)
    return BoneModes(
        (nodes - translation) @ rotation, moves @ rotation, centre, own.residual, own.scale
    )


@dataclass(frozen=True)
class ModeLattice:
    """A bone's mode displacements tabulated on a lattice of its mesh frame (adult mm)."""

    origin: np.ndarray  # (3,)
    spacing: float
    values: np.ndarray  # (M, 3, nx, ny, nz) float32

    def field(self, coefficients) -> np.ndarray:
        """The displacement grid (3, nx, ny, nz) of a set of coefficients."""
        b = np.asarray(coefficients, np.float32)
        return np.tensordot(b, self.values[: len(b)], axes=1)

    def displacement(self, coefficients, points: np.ndarray, grid=None) -> np.ndarray:
        """Trilinear displacements (3, N) at component-first points (3, N)."""
        grid = self.field(coefficients) if grid is None else grid
        index = (points - self.origin[:, None]) / self.spacing
        return np.stack([ndimage.map_coordinates(g, index, order=1, mode="nearest") for g in grid])

    def pull_back(self, coefficients, points: np.ndarray) -> np.ndarray:
        """Where the undeformed bone is sampled for points (3, N) of the deformed one: the
        inverse of p -> p + u(p), by two fixed-point steps."""
        grid = self.field(coefficients)
        source = points - self.displacement(coefficients, points, grid)
        return points - self.displacement(coefficients, source, grid)


@cache
def mode_lattice(joint: str, bone: str) -> ModeLattice:
    """Each mode's displacement field over the box of the bone's distance grid (mesh frame,
    adult mm; cached per process). Beyond the box the edge values are repeated."""
    grid = bone_field(joint, bone).grid
    low = np.asarray(grid.origin, float)
    high = low + (np.asarray(grid.values.shape) - 1) * grid.spacing
    shape = tuple(int(np.ceil((high[c] - low[c]) / LATTICE_MM)) + 1 for c in range(3))
    axes = [low[c] + LATTICE_MM * np.arange(shape[c]) for c in range(3)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    modes = bone_modes(joint, bone)
    weights, index = modes.neighbours(points)
    values = np.einsum("nk,mnkc->mcn", weights, modes.modes[:, index])
    return ModeLattice(low, LATTICE_MM, values.reshape(-1, 3, *shape).astype(np.float32))


def pull_back(joint: str, bone: str, coefficients, points: np.ndarray) -> np.ndarray:
    """Mesh-frame points (3, N) of the mode-deformed bone mapped to where the undeformed bone
    is sampled; unchanged for a bone without modes or with no coefficients."""
    if not coefficients or bone not in SOURCES.get(joint, {}):
        return points
    return mode_lattice(joint, bone).pull_back(coefficients, points)
