"""The knee's statistical shape modes (``musculoskeletal-models`` LLP26) on the MyoSuite bones."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import trimesh
from scipy.spatial.transform import Rotation

from jointseg.synth import shape_modes as sm
from jointseg.synth.anatomy import geom_mesh
from jointseg.synth.generate import subject_params


def _mesh(bone: str) -> tuple[np.ndarray, np.ndarray]:
    return geom_mesh("myolegs", f"{bone}_r")


def test_model_is_read_by_bone_with_a_numpy_only_unpickler() -> None:
    model = sm.shape_model()
    counts = {name: len(points) for name, points in model.mean.items()}
    assert counts == {"pelvis": 1946, "femur": 634, "patella": 74, "tibia_fibula": 571}
    assert model.modes["femur"].shape == (26, 634, 3)
    assert np.all(np.diff(model.variances) <= 0) and model.variances[-1] >= 0
    # Unit modes across all bones; a femur is about 430 mm long (mm, not m).
    norms = sum((m[:5] ** 2).sum(axis=(1, 2)) for m in model.modes.values())
    assert np.allclose(norms, 1.0)
    assert 400 < np.ptp(model.mean["femur"][:, 2]) < 470
    assert sm.shape_model() is model  # cached
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        sm._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(io.StringIO))).load()


def test_zero_coefficients_leave_the_mesh_unchanged() -> None:
    vertices, _ = _mesh("femur")
    modes = sm.bone_modes("knee", "femur")
    assert np.abs(modes.deform([0.0] * 5, vertices) - vertices).max() < 1e-9
    points = vertices.T.copy()
    assert sm.pull_back("knee", "femur", [], points) is points
    assert np.abs(sm.pull_back("knee", "femur", [0.0] * 5, points) - points).max() < 1e-9


def test_one_mode_moves_the_bone_by_its_standard_deviation() -> None:
    model = sm.shape_model()
    aligned = sm.aligned_bone("knee", "femur")
    transform = sm.Similarity(np.eye(3), aligned.scale, np.zeros(3))
    carried = sm.carry_modes(model.modes["femur"][:5], model.variances[:5], transform)
    expected = (
        aligned.scale
        * np.sqrt(model.variances[:5])
        * np.linalg.norm(model.modes["femur"][:5], axis=(1, 2))
    )
    assert np.allclose(np.linalg.norm(carried, axis=(1, 2)), expected)
    # The model's own first mode moves femur nodes by about 6 mm rms (mostly size, which the
    # knee's transfer removes); what is left near the knee is a shape change of 0.3-2 mm rms.
    assert 4.0 < np.sqrt((carried[0] ** 2).sum(-1).mean()) < 9.0
    vertices, _ = _mesh("femur")
    modes = sm.bone_modes("knee", "femur")
    near_knee = np.linalg.norm(vertices - sm.bone_field("knee", "femur").joint_center, axis=1) < 80
    one = modes.displacement([1.0], vertices[near_knee])
    rms = np.sqrt((one**2).sum(-1).mean())
    assert 0.2 < rms < 2.0
    assert np.allclose(modes.displacement([-2.0], vertices[near_knee]), -2.0 * one)


def test_alignment_recovers_a_known_similarity() -> None:
    source = sm.shape_model().mean["femur"]
    rotation = Rotation.from_rotvec([0.4, -2.6, 0.9]).as_matrix()
    truth = sm.Similarity(rotation, 0.8, np.array([-60.0, 25.0, 400.0]))
    found, residual = sm.align(source, truth(source))
    assert residual < 1e-6
    assert np.allclose(found.rotation, rotation, atol=1e-6)
    assert found.scale == pytest.approx(0.8, abs=1e-6)
    assert np.allclose(found.translation, truth.translation, atol=1e-4)


def test_similarity_part_of_a_displacement_is_removed() -> None:
    points = sm.shape_model().mean["femur"] - [100.0, 30.0, 1000.0]
    rotation = Rotation.from_rotvec([0.01, -0.02, 0.015]).as_matrix()
    moves = (1.03 * points @ rotation.T + [1.0, -2.0, 0.5] - points)[None]
    left = sm.remove_similar_part(points, moves, np.zeros(3), 50.0)
    assert np.abs(left).max() < 0.02 * np.abs(moves).max()


def test_coefficients_are_seeded_clipped_and_recorded() -> None:
    knee = subject_params("knee", "train", 3, seed=7)
    assert knee.shape_modes == subject_params("knee", "train", 3, seed=7).shape_modes
    assert knee.shape_modes != subject_params("knee", "train", 4, seed=7).shape_modes
    assert len(knee.shape_modes) == sm.N_MODES and knee.to_dict()["shape_modes"] == knee.shape_modes
    assert subject_params("ankle", "train", 3, seed=7).shape_modes == []
    draws = np.array(sm.sample_coefficients(np.random.default_rng(0), 20000))
    assert draws.min() == -sm.CLIP and draws.max() == sm.CLIP and abs(draws.std() - 1) < 0.05


@pytest.mark.parametrize("bone", ["femur", "patella", "fibula"])
def test_deformed_bones_stay_watertight(bone: str) -> None:
    vertices, faces = _mesh(bone)
    before = trimesh.Trimesh(vertices, faces, process=False)
    moved = sm.bone_modes("knee", bone).deform([2.5, -2.5, 2.5, -2.5, 2.5], vertices)
    after = trimesh.Trimesh(moved, faces, process=False)
    assert before.is_watertight and after.is_watertight
    assert len(after.faces) == len(before.faces)
    assert after.volume == pytest.approx(before.volume, rel=0.1)
    assert np.linalg.norm(moved - vertices, axis=1).max() < 10.0
    # Smooth and moderate: no face turns over.
    assert (before.face_normals * after.face_normals).sum(axis=1).min() > 0.5


def test_rendering_samples_the_deformed_mesh() -> None:
    """The lattice's pull-back undoes the vertex displacement (what the rendering samples)."""
    vertices, _ = _mesh("tibia")
    coefficients = [1.5, -1.0, 2.0, 0.5, -2.5]
    modes = sm.bone_modes("knee", "tibia")
    moved = modes.deform(coefficients, vertices)
    back = sm.pull_back("knee", "tibia", coefficients, moved.T).T
    near = np.linalg.norm(vertices - sm.bone_field("knee", "tibia").joint_center, axis=1) < 100
    assert np.abs(moved - vertices)[near].max() > 1.0
    assert np.abs(back - vertices)[near].max() < 0.3


def test_bones_that_meet_move_alike() -> None:
    """Where femur and tibia face each other, one standard deviation of a mode changes their
    distance by at most 1.5 mm."""
    femur, _ = _mesh("femur")
    tibia, _ = _mesh("tibia")
    (rf, tf), (rt, tt) = sm._bone_pose("knee", "femur"), sm._bone_pose("knee", "tibia")
    world_f, world_t = femur @ rf.T + tf, tibia @ rt.T + tt
    distance, nearest = sm.cKDTree(world_t).query(world_f)
    close = distance < 8.0
    assert close.sum() > 10
    p, q = world_f[close], world_t[nearest[close]]
    normal = (q - p) / distance[close, None]
    for mode in np.eye(sm.N_MODES):
        moved_f = sm.bone_modes("knee", "femur").displacement(mode, femur[close]) @ rf.T
        moved_t = sm.bone_modes("knee", "tibia").displacement(mode, tibia[nearest[close]]) @ rt.T
        assert np.abs(((moved_f - moved_t) * normal).sum(axis=1)).max() < 1.5
