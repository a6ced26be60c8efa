"""Meshes, measurements, label tables and previews of label maps: geometry and numbers."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
import trimesh

from jointseg.inference.label_tables import (
    itksnap_table,
    label_entries,
    slicer_table,
    write_label_tables,
)
from jointseg.inference.measurements import (
    csv_rows,
    measure_labels,
    update_measurements_csv,
)
from jointseg.inference.meshes import (
    Geometry,
    display_triangles,
    largest_component,
    mask_to_mesh,
    write_mesh,
)
from jointseg.inference.preview import render_preview, representative_slices

SPACING = (0.6, 0.7, 1.5)  # x, y, z
ORIGIN = (10.0, -20.0, 5.0)
RADII = (8, 20, 18)  # voxels along z, y, x


def oblique_direction() -> tuple[float, ...]:
    """A rotation about two axes combined with a flip (determinant -1)."""
    a, b = np.deg2rad(25), np.deg2rad(-40)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return tuple((rz @ rx @ np.diag([1, 1, -1])).ravel())


def ellipsoid(shape=(40, 80, 70), radii=RADII, offset=(0.3, 0.0, -0.2)) -> np.ndarray:
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    c = np.array(shape) / 2 + np.array(offset)
    return ((z - c[0]) / radii[0]) ** 2 + ((y - c[1]) / radii[1]) ** 2 + (
        (x - c[2]) / radii[2]
    ) ** 2 <= 1


def ellipsoid_area(a: float, b: float, c: float) -> float:
    """Thomsen's approximation of an ellipsoid's surface area (error below 1.1 %)."""
    p = 1.6075
    return 4 * np.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)


@pytest.fixture
def geometry() -> Geometry:
    return Geometry(SPACING, ORIGIN, oblique_direction())


def test_geometry_matches_simpleitk(geometry):
    image = sitk.Image([5, 6, 7], sitk.sitkUInt8)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(geometry.direction)
    for zyx in [(0, 0, 0), (6, 5, 4), (3, 1, 2)]:
        expected = image.TransformIndexToPhysicalPoint([int(v) for v in zyx[::-1]])
        np.testing.assert_allclose(geometry.to_physical(np.array([zyx]))[0], expected, atol=1e-9)
    assert Geometry.of(image) == geometry


def test_mesh_is_watertight_outward_and_keeps_volume(geometry):
    mask = ellipsoid()
    mesh = mask_to_mesh(mask, geometry)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0  # outward normals despite the flipped direction
    voxel_volume = mask.sum() * geometry.voxel_volume
    assert mesh.volume == pytest.approx(voxel_volume, rel=0.01)
    analytic = 4 / 3 * np.pi * np.prod([r * s for r, s in zip(RADII, SPACING[::-1], strict=True)])
    assert voxel_volume == pytest.approx(analytic, rel=0.01)


def test_mesh_lies_where_the_label_is_in_physical_space(geometry):
    mask = ellipsoid()
    mesh = mask_to_mesh(mask, geometry)
    centres = geometry.to_physical(np.argwhere(mask))
    # The surface passes half a voxel outside the outermost voxel centres, never further.
    slack = 0.5 * np.linalg.norm(SPACING) + 0.05
    assert np.all(mesh.bounds[0] <= centres.min(0) + 0.05)
    assert np.all(mesh.bounds[0] >= centres.min(0) - slack)
    assert np.all(mesh.bounds[1] >= centres.max(0) - 0.05)
    assert np.all(mesh.bounds[1] <= centres.max(0) + slack)
    np.testing.assert_allclose(mesh.center_mass, centres.mean(0), atol=0.1)


def test_mesh_of_mask_touching_the_border_is_closed(geometry):
    mask = np.zeros((10, 12, 14), bool)
    mask[:5, :, 3:9] = True  # touches four faces of the array
    mesh = mask_to_mesh(mask, geometry, smooth_iterations=0)
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(mask.sum() * geometry.voxel_volume, rel=0.15)


def test_largest_component_only(geometry):
    mask = ellipsoid()
    mask[2:5, 2:5, 2:5] = True  # a separate speck
    assert largest_component(mask).sum() == mask.sum() - 27
    mesh = mask_to_mesh(mask, geometry)
    assert len(mesh.split(only_watertight=False)) == 1
    both = mask_to_mesh(mask, geometry, largest_only=False)
    assert len(both.split(only_watertight=False)) == 2
    assert mask_to_mesh(np.zeros((4, 4, 4), bool), geometry) is None


@pytest.mark.parametrize("kind", ["stl", "ply"])
def test_written_meshes_reload_in_mm(tmp_path, geometry, kind):
    mesh = mask_to_mesh(ellipsoid(), geometry)
    path = write_mesh(mesh, tmp_path / f"bone.{kind}")
    loaded = trimesh.load(path)
    assert loaded.is_watertight
    np.testing.assert_allclose(loaded.bounds, mesh.bounds, atol=1e-3)
    assert [p.name for p in tmp_path.iterdir()] == [f"bone.{kind}"]  # no temporary left
    with pytest.raises(ValueError, match="unsupported mesh format"):
        write_mesh(mesh, tmp_path / "bone.obj")


def test_display_triangles_are_fewer(geometry):
    mesh = mask_to_mesh(ellipsoid(), geometry)
    triangles = display_triangles(mesh, max_faces=1000)
    assert triangles.shape[1:] == (3, 3)
    assert 300 < len(triangles) <= 1500 < len(mesh.faces)


def test_measurements(geometry):
    labels = np.zeros((40, 80, 70), np.uint8)
    labels[ellipsoid()] = 4
    labels[1:3, 1:3, 1:3] = 4  # a second component
    labels[30:35, 60:70, 50:60] = 9
    items = measure_labels(labels, {"femur": 4, "patella": 9, "absent": 2}, geometry)
    femur, patella, absent = items
    voxel = np.prod(SPACING)
    assert femur.volume_ml == pytest.approx((labels == 4).sum() * voxel / 1000, abs=1e-4)
    assert femur.components == 2
    sizes = [r * s for r, s in zip(RADII, SPACING[::-1], strict=True)]
    assert femur.surface_area_mm2 == pytest.approx(ellipsoid_area(*sizes), rel=0.05)
    assert patella.components == 1
    assert patella.extent_mm == pytest.approx((10 * 0.6, 10 * 0.7, 5 * 1.5))
    assert patella.volume_ml == pytest.approx(500 * voxel / 1000, abs=1e-4)
    assert absent.voxels == 0 and absent.components == 0 and absent.centroid_mm is None


def test_measurements_csv_replaces_a_cases_rows(tmp_path, geometry):
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[2:6, 2:6, 2:6] = 1
    items = measure_labels(labels, {"tibia": 1}, geometry)
    path = tmp_path / "measurements.csv"
    update_measurements_csv(path, "b", csv_rows("b", "knee", items))
    update_measurements_csv(path, "a", csv_rows("a", "knee", items))
    update_measurements_csv(path, "b", csv_rows("b", "ankle", items))
    rows = list(csv.DictReader(path.open()))
    assert [(r["case"], r["domain"]) for r in rows] == [("a", "knee"), ("b", "ankle")]
    assert float(rows[0]["volume_ml"]) == pytest.approx(64 * np.prod(SPACING) / 1000, abs=1e-4)


def test_label_tables(tmp_path):
    structures = {"tibia": 3, "femur": 1, "Odd bone": 12}
    entries = label_entries(structures)
    assert [e.value for e in entries] == [1, 3, 12]
    assert len({e.color for e in entries}) == 3
    assert entries[1].color == label_entries({"tibia": 5})[0].color  # same bone, same colour
    paths = write_label_tables(tmp_path, "case1", structures, domain="knee")
    table = json.loads(paths[0].read_text(encoding="utf-8"))
    assert table["domain"] == "knee"
    assert [(x["value"], x["name"]) for x in table["labels"]] == [
        (0, "background"), (1, "femur"), (3, "tibia"), (12, "Odd bone"),
    ]  # fmt: skip
    snap = [
        line.split() for line in itksnap_table(entries).splitlines() if not line.startswith("#")
    ]
    assert [int(row[0]) for row in snap] == [0, 1, 3, 12]
    assert snap[-1][-2:] == ['"Odd', 'bone"'] and len(snap[1]) == 8
    slicer = slicer_table(entries).splitlines()
    assert slicer[0].startswith("# Color table file") and slicer[1] == "# 4 values"
    assert slicer[-1].split()[:2] == ["12", "Odd_bone"] and slicer[-1].split()[-1] == "255"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "case1_seg.ctbl", "case1_seg.json", "case1_seg_itksnap.txt",
    ]  # fmt: skip


def test_preview_png(geometry):
    labels = np.zeros((40, 80, 70), np.uint8)
    labels[ellipsoid()] = 1
    image = sitk.GetImageFromArray((labels * 100.0 + 10).astype(np.float32))
    image.SetSpacing(SPACING)
    np.testing.assert_allclose(representative_slices(labels), (20, 40, 35), atol=1)
    entries = label_entries({"femur": 1})
    png = render_preview(image, labels, entries, {"femur": mask_to_mesh(labels == 1, geometry)})
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    flat = render_preview(image, np.zeros_like(labels), entries, None, title="empty")
    assert flat[:8] == b"\x89PNG\r\n\x1a\n"


def test_preview_views_are_named_by_anatomical_plane():
    from jointseg.inference.preview import view_names

    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert view_names(identity) == ("axial (z)", "coronal (y)", "sagittal (x)")
    # a sagittal acquisition: columns run A-P, rows S-I, slices L-R
    sagittal = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
    assert view_names(sagittal) == ("sagittal (z)", "axial (y)", "coronal (x)")
    # tilted by 30 degrees about L-R: still the closest planes
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    tilted = np.array(sagittal).reshape(3, 3)
    tilted = np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ tilted
    assert view_names(tuple(tilted.ravel())) == ("sagittal (z)", "axial (y)", "coronal (x)")
