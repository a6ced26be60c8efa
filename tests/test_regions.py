"""Measures of where a segmentation fails within a bone (evaluation/regions.py), by hand."""

from __future__ import annotations

import numpy as np
import pytest

from jointseg.evaluation.regions import far_part_sensitivity, outside_share


def test_far_part_sensitivity_counts_the_upper_half_of_the_bone() -> None:
    truth = np.zeros((2, 10, 4), np.uint8)
    truth[:, 2:10, 1:3] = 1  # rows 2-9: the upper half is rows 2-5 (16 voxels)
    predicted = np.zeros_like(truth)
    predicted[:, 6:10, 1:3] = 1  # only the lower half found
    assert far_part_sensitivity(predicted, truth, 1) == 0.0
    predicted[0, 2:6, 1:3] = 1  # half of the upper half
    assert far_part_sensitivity(predicted, truth, 1) == pytest.approx(0.5)
    assert far_part_sensitivity(predicted, truth, 2) is None
    # along another axis: the first quarter of columns 1-2 is column 1
    assert far_part_sensitivity(truth, truth, 1, axis=2, share=0.25) == 1.0


def test_outside_share_ignores_a_margin_around_the_bone() -> None:
    truth = np.zeros((5, 12, 12), np.uint8)
    truth[2, 5:7, 5:7] = 3  # 4 voxels
    predicted = truth.copy()
    predicted[2, 4, 5] = 3  # touching: within the margin
    assert outside_share(predicted, truth, 3) == 0.0
    predicted[2, 0:2, 0:4] = 3  # 8 voxels far away
    assert outside_share(predicted, truth, 3) == pytest.approx(8 / 4)
    assert outside_share(predicted, truth, 3, margin=0) == pytest.approx(9 / 4)
    assert outside_share(predicted, np.zeros_like(truth), 3) is None
