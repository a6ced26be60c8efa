"""Building blocks of the synthetic MR generator: voxelization, growth, sampling, geometry, MR."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

from jointseg.synth import growth
from jointseg.synth.generate import subject_params
from jointseg.synth.geometry import CoarseGrid, plane_direction, scan_geometry
from jointseg.synth.mr import signal_tables
from jointseg.synth.noise import upsample
from jointseg.synth.phantom import CORTEX, FAT, FAT_FRACTION, FLUID, MARROW, MUSCLE
from jointseg.synth.quality import oracle_threshold
from jointseg.synth.synthesis import majority_label
from jointseg.synth.voxelize import close_holes, occupancy, signed_distance_grid


def test_sphere_distance_is_accurate() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=10.0)
    grid = signed_distance_grid(np.asarray(sphere.vertices), np.asarray(sphere.faces), 0.5, 4.0)
    points = np.array([[0, 0, 0], [10, 0, 0], [0, 12, 0], [0, 0, -7], [3, 4, 0]], float).T
    expected = np.array([-10.0, 0.0, 2.0, -3.0, -5.0])
    assert np.allclose(grid.sample(points), expected, atol=0.35)
    volume = (grid.values < 0).sum() * 0.5**3
    assert abs(volume - sphere.volume) / sphere.volume < 0.05


def test_open_mesh_with_stray_faces_is_filled() -> None:
    box = trimesh.creation.box(extents=(20.0, 20.0, 20.0))
    vertices, faces = np.asarray(box.vertices), np.asarray(box.faces)
    # Remove the two triangles of the top face (a square hole) and add a stray inner triangle.
    top = np.where(vertices[faces][:, :, 2].min(axis=1) > 9.0)[0]
    faces = np.delete(faces, top, axis=0)
    inner = np.array([[-3.0, -3.0, 0.0], [3.0, -3.0, 0.0], [0.0, 3.0, 0.0]])
    faces = np.vstack([faces, np.arange(3) + len(vertices)])
    vertices = np.vstack([vertices, inner])
    closed_v, closed_f = close_holes(vertices, faces)
    assert len(closed_f) > len(faces)
    shape = (31, 31, 31)
    inside = occupancy(vertices, faces, np.array([-15.0, -15.0, -15.0]), 1.0, shape)
    # Voxels at -10..10 (21 per axis) are inside or on the surface.
    assert inside[15, 15, 15] and inside[15, 15, 24] and not inside[15, 15, 27]
    assert abs(int(inside.sum()) - 21**3) < 0.02 * 21**3


def test_growth_follows_the_charts() -> None:
    assert growth.median_stature(10, "M") == pytest.approx(138.4)
    assert growth.median_stature(4, "F") == pytest.approx(101.5)
    ages = np.linspace(4, 18, 30)
    for sex in ("M", "F"):
        heights = [growth.median_stature(a, sex) for a in ages]
        assert np.all(np.diff(heights) > 0)
    assert 0.5 < growth.body_scale(growth.stature(4, "F", -2)) < 0.55
    assert growth.physis_thickness(8, "M", "femur_distal") > 1.0
    assert growth.physis_thickness(17, "F", "femur_distal") == 0.0
    assert growth.articular_cartilage(4) > growth.articular_cartilage(16) > 2.0
    assert growth.unossified_epiphysis(4) > 3 * growth.unossified_epiphysis(10)
    with pytest.raises(ValueError, match="sex"):
        growth.median_stature(8, "X")


def test_subject_parameters_are_keyed_and_serializable() -> None:
    a = subject_params("knee", "train", 3, seed=7)
    b = subject_params("knee", "train", 3, seed=7)
    assert a == b
    assert subject_params("knee", "train", 4, seed=7) != a
    assert subject_params("knee", "test", 3, seed=7) != a
    assert subject_params("knee", "train", 3, seed=8) != a
    ages = [subject_params("ankle", "train", i, 0).age for i in range(40)]
    assert 4.0 <= min(ages) and max(ages) < 18.0 and np.std(ages) > 2.5
    record = json.loads(json.dumps(a.to_dict()))
    assert record["case_id"] == "knee_003" and record["joint"] == "knee"
    assert set(record["angles"]) == {"knee_angle_r"}
    assert 0.0 <= record["angles"]["knee_angle_r"] <= 0.45


def test_scan_geometry_slice_axis_is_the_thickest() -> None:
    for plane in ("sagittal", "coronal", "axial"):
        direction = plane_direction(plane)
        assert np.allclose(direction.T @ direction, np.eye(3))
        assert np.linalg.det(direction) == pytest.approx(1.0)
    oblique = plane_direction("coronal-oblique", np.array([0.5, 0.8, 0.1]))
    assert np.allclose(oblique.T @ oblique, np.eye(3), atol=1e-12)
    geometry = scan_geometry(
        np.array([1.0, 2.0, 3.0]), plane_direction("sagittal"), 140.0, 224, 30, 3.3
    )
    assert np.argmax(geometry.spacing) == 2
    centre = geometry.origin + geometry.direction @ (
        (np.asarray(geometry.size) - 1) / 2 * geometry.spacing
    )
    assert np.allclose(centre, [1.0, 2.0, 3.0])
    assert geometry.fine_shape == (30 * geometry.sub, 224, 224) and geometry.sub == 3
    with pytest.raises(ValueError, match="thickness"):
        scan_geometry(np.zeros(3), plane_direction("axial"), 100.0, 100, 10, 0.5)


def test_coarse_lattice_interpolates_affine_fields_exactly() -> None:
    geometry = scan_geometry(np.zeros(3), plane_direction("coronal"), 60.0, 40, 6, 3.0)
    coarse = CoarseGrid.over(geometry, (geometry.sub, 4, 4))
    nodes = coarse.points(geometry)
    fine = geometry.fine_points(geometry.full_box())
    field = 0.3 * nodes[0] - 1.2 * nodes[1] + 2.0 * nodes[2] + 5.0
    expected = 0.3 * fine[0] - 1.2 * fine[1] + 2.0 * fine[2] + 5.0
    assert np.allclose(upsample(field, geometry.fine_shape), expected, atol=1e-3)


def test_signal_contrast_follows_the_sequence() -> None:
    def signal(tables, tissue, ff=None):
        water, fat, _ = tables
        f = FAT_FRACTION[tissue] if ff is None else ff
        return water[tissue] * (1 - f) + fat[tissue] * f

    t1 = signal_tables("se", 550.0, 12.0, 90.0, {})
    assert signal(t1, FAT) > signal(t1, MARROW, 0.8) > signal(t1, MUSCLE) > signal(t1, FLUID)
    t2 = signal_tables("se", 4000.0, 90.0, 90.0, {})
    assert signal(t2, FLUID) > 3 * signal(t2, MUSCLE)
    gre = signal_tables("gre", 600.0, 15.0, 30.0, {})
    assert signal(gre, MARROW, 0.7) < signal(gre, MUSCLE) < signal(gre, FLUID)
    for tables in (t1, t2, gre):
        assert signal(tables, CORTEX) < 0.02


def test_oracle_threshold_finds_the_best_interval() -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 100, 20000)
    mask = (image > 40) & (image < 60)
    result = oracle_threshold(image, mask)
    assert result.dice > 0.97 and 38 < result.low < 42 and 58 < result.high < 62
    noise_mask = rng.random(20000) < 0.2
    assert oracle_threshold(image, noise_mask).dice < 0.4
    with pytest.raises(ValueError, match="empty"):
        oracle_threshold(image, np.zeros(20000, bool))


def test_majority_label_over_sub_slices() -> None:
    label = np.zeros((6, 2, 2), np.uint8)
    label[0:2, 0, 0] = 1  # 2 of 3 sub-slices: kept
    label[3, 1, 1] = 2  # 1 of 3: dropped
    label[3:5, 0, 1] = 3
    out = majority_label(label, 3)
    assert out.shape == (2, 2, 2)
    assert out[0, 0, 0] == 1 and out[1, 1, 1] == 0 and out[1, 0, 1] == 3
