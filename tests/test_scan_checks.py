"""The scan checks: one sentence per problem, the same in ``jointseg check`` as where a scan
is refused (preprocessing, prediction)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from jointseg.config import PreprocessingConfig
from jointseg.data.checks import check_path
from jointseg.data.io import read_image, write_image
from jointseg.data.preprocess import preprocess_case
from jointseg.data.scan_checks import (
    NO_FINITE_INTENSITY,
    components_problem,
    constant_problem,
    dimension_problem,
    nonfinite_problem,
    shape_problem,
)
from jointseg.inference.slices import InputError, check_scan
from tests.conftest import write_dataset


def test_each_problem_is_one_sentence_or_none() -> None:
    assert components_problem(1) is None
    assert components_problem(3) == (
        "has 3 components per voxel; a single-channel scan is expected"
    )
    assert dimension_problem((8, 8, 4)) is None
    assert dimension_problem([8, 8]) == "the scan is 2D (size (8, 8)); a 3D scan is needed"
    assert shape_problem((8, 8, 4, 2), 2) == components_problem(2)  # channels said first
    assert shape_problem((8, 8, 4, 2), 1) == dimension_problem((8, 8, 4, 2))
    assert nonfinite_problem(0, 10) is None
    assert nonfinite_problem(3, 10) == "3 NaN or infinite intensities"
    assert nonfinite_problem(10, 10) == NO_FINITE_INTENSITY


def test_constant_scan_is_said_alike_by_check_and_prediction(tmp_path: Path) -> None:
    flat = sitk.Image([6, 5, 4], sitk.sitkInt16) + 120
    expected = "every voxel has the same intensity (120); there is nothing to segment"
    assert constant_problem(flat) == expected
    varied = sitk.Image(flat)
    varied[0, 0, 0] = 121
    assert constant_problem(varied) is None
    with pytest.raises(InputError) as refused:
        check_scan(flat)
    assert str(refused.value) == expected
    folder = write_dataset(tmp_path)
    image_path = folder / "imagesTr" / "toy_000_0000.nii.gz"
    image = read_image(image_path)
    constant = sitk.GetImageFromArray(np.full(sitk.GetArrayViewFromImage(image).shape, 120.0))
    constant.CopyInformation(image)
    write_image(sitk.Cast(constant, image.GetPixelID()), image_path)
    messages = [str(p) for p in check_path(folder, progress=False).errors]
    assert messages == [f"{image_path}: {expected}"]


def test_preprocessing_refuses_what_is_not_a_3d_single_channel_scan() -> None:
    cfg = PreprocessingConfig(target_spacing=None, patch_size=(32, 32))
    two_d = sitk.GetImageFromArray(np.arange(64, dtype=np.float32).reshape(8, 8))
    with pytest.raises(ValueError, match=r"^the scan is 2D \(size \(8, 8\)\); a 3D scan"):
        preprocess_case(two_d, None, cfg)
    volume = sitk.GetImageFromArray(np.arange(256, dtype=np.float32).reshape(4, 8, 8))
    with pytest.raises(ValueError, match="^has 2 components per voxel"):
        preprocess_case(sitk.Compose(volume, volume), None, cfg)
