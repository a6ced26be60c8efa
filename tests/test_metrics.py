"""3D metrics against values worked out by hand on small cubes with anisotropic spacing.

Surfaces are the foreground voxels with a 6-connected background neighbour. For a 3x3x3 cube
that is every voxel but the centre (26 voxels).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from jointseg.evaluation.metrics import GeometryMismatchError, score_case, structure_metrics

SPACING_ZYX = (2.0, 1.0, 0.5)
GRID = (6, 6, 6)


def cube(z0: int, y0: int, x0: int, size=(3, 3, 3)) -> np.ndarray:
    mask = np.zeros(GRID, dtype=bool)
    mask[z0 : z0 + size[0], y0 : y0 + size[1], x0 : x0 + size[2]] = True
    return mask


def test_cubes_offset_by_one_voxel_along_z() -> None:
    ref = cube(1, 1, 1)
    pred = cube(2, 1, 1)
    m = structure_metrics(pred, ref, SPACING_ZYX)
    # Overlap: 2 of 3 layers = 18 voxels of 27 each.
    assert m["dice"] == pytest.approx(2 * 18 / 54)
    assert m["sensitivity"] == pytest.approx(18 / 27)
    # 216 voxels, union 36 -> TN 180; reference negatives 216 - 27 = 189.
    assert m["specificity"] == pytest.approx(180 / 189)
    assert m["ravd"] == 0.0
    # From the reference surface (26 voxels) to the prediction's: the bottom face (9 voxels)
    # is one slice away (2 mm); the top face's centre is the prediction's interior voxel, whose
    # nearest surface voxel is one column away (0.5 mm); the other 16 lie on it (0 mm).
    # The other direction is the mirror image. MSSD = 2 * (9 * 2 + 0.5) / 52.
    assert m["mssd"] == pytest.approx(37 / 52, rel=1e-6)
    # Each direction sorted: 16 zeros, 0.5, nine 2s; the 95th percentile (position 23.75) is 2.
    assert m["hd95"] == pytest.approx(2.0)


def test_offset_along_x_uses_the_x_spacing() -> None:
    m = structure_metrics(cube(1, 1, 2), cube(1, 1, 1), SPACING_ZYX)
    assert m["dice"] == pytest.approx(2 / 3)
    # Same geometry as along z, but one step is now 0.5 mm: faces 9 * 0.5, centre 0.5.
    assert m["mssd"] == pytest.approx(2 * (9 * 0.5 + 0.5) / 52, rel=1e-6)
    assert m["hd95"] == pytest.approx(0.5)


def test_over_segmentation_volume_difference_and_distances() -> None:
    ref = cube(1, 1, 1)
    pred = cube(1, 1, 1, size=(4, 3, 3))  # one extra layer of 9 voxels on top
    m = structure_metrics(pred, ref, SPACING_ZYX)
    assert m["dice"] == pytest.approx(2 * 27 / (36 + 27))
    assert m["sensitivity"] == 1.0
    assert m["specificity"] == pytest.approx(180 / 189)
    assert m["ravd"] == pytest.approx(9 / 27)
    # Prediction surface: 36 - 2 interior = 34 voxels; only its new top face (9) is off the
    # reference surface, by 2 mm. Reference surface: 26 voxels; its top-face centre is interior
    # to the prediction, 0.5 mm from the prediction's surface.
    assert m["mssd"] == pytest.approx((9 * 2 + 0.5) / (34 + 26), rel=1e-6)
    assert m["hd95"] == pytest.approx(2.0)


def test_both_empty_is_perfect_agreement() -> None:
    empty = np.zeros(GRID, dtype=bool)
    m = structure_metrics(empty, empty, SPACING_ZYX)
    assert m == {"dice": 1.0, "sensitivity": 1.0, "specificity": 1.0,
                 "mssd": 0.0, "hd95": 0.0, "ravd": 0.0}  # fmt: skip


def test_empty_prediction_of_a_present_structure() -> None:
    m = structure_metrics(np.zeros(GRID, dtype=bool), cube(1, 1, 1), SPACING_ZYX)
    assert m["dice"] == 0.0 and m["sensitivity"] == 0.0
    assert m["specificity"] == 1.0
    assert m["ravd"] == 1.0
    assert math.isnan(m["mssd"]) and math.isnan(m["hd95"])


def test_prediction_of_an_absent_structure() -> None:
    m = structure_metrics(cube(1, 1, 1), np.zeros(GRID, dtype=bool), SPACING_ZYX)
    assert m["dice"] == 0.0
    assert m["specificity"] == pytest.approx((216 - 27) / 216)
    for key in ("sensitivity", "mssd", "hd95", "ravd"):
        assert math.isnan(m[key]), key


def test_shape_and_spacing_are_checked() -> None:
    with pytest.raises(ValueError, match="shape"):
        structure_metrics(np.zeros((2, 2, 2), bool), np.zeros((2, 2, 3), bool), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        structure_metrics(np.zeros((2, 2, 2), bool), np.zeros((2, 2, 2), bool), (1, 1))


def _label_image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(tuple(reversed(SPACING_ZYX)))  # SimpleITK order: x, y, z
    image.SetOrigin((3.0, -2.0, 1.0))
    return image


def test_score_case_reads_spacing_in_simpleitk_order_and_labels_by_value() -> None:
    ref = np.zeros(GRID, dtype=np.uint8)
    pred = np.zeros(GRID, dtype=np.uint8)
    ref[cube(1, 1, 1)] = 3
    pred[cube(2, 1, 1)] = 3  # offset along z (2 mm per voxel)
    rows = score_case(_label_image(pred), _label_image(ref), {"talus": 3, "calcaneus": 5})
    assert [r["structure"] for r in rows] == ["talus", "calcaneus"]
    assert rows[0]["dice"] == pytest.approx(2 / 3)
    assert rows[0]["mssd"] == pytest.approx(37 / 52, rel=1e-6)
    assert rows[1]["dice"] == 1.0 and rows[1]["mssd"] == 0.0  # absent in both


def test_score_case_refuses_different_grids() -> None:
    ref = _label_image(np.zeros(GRID, dtype=np.uint8))
    pred = _label_image(np.zeros(GRID, dtype=np.uint8))
    pred.SetSpacing((0.5, 1.0, 3.0))
    with pytest.raises(GeometryMismatchError, match="spacing"):
        score_case(pred, ref, {"talus": 1})
    small = _label_image(np.zeros((5, 6, 6), dtype=np.uint8))
    with pytest.raises(GeometryMismatchError, match="size"):
        score_case(small, ref, {"talus": 1})
