"""Preprocessing: whole-view slice grid, normalization and the exact inverse."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from jointseg.config import PreprocessingConfig
from jointseg.data.preprocess import (
    InverseInfo,
    preprocess_case,
    restore_labels,
    restore_probabilities,
    slice_stack_shape,
)


def rotation(axis: int, degrees: float) -> np.ndarray:
    t = math.radians(degrees)
    i, j = (k for k in range(3) if k != axis)
    r = np.eye(3)
    r[i, i] = r[j, j] = math.cos(t)
    r[i, j], r[j, i] = -math.sin(t), math.sin(t)
    return r


IDENTITY = np.eye(3)
# A sagittal-like acquisition: permuted, flipped axes, tilted by 17 degrees.
OBLIQUE = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]) @ rotation(1, 17)


def blob_case(
    shape=(6, 72, 64), spacing=(0.5, 0.6, 3.0), direction=IDENTITY, radii=(22, 14), seed=0
) -> tuple[sitk.Image, sitk.Image]:
    """Noisy image with two ellipsoidal structures (label values 1 and 3), z, y, x shape."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    zc = (shape[0] - 1) / 2
    label = np.zeros(shape, dtype=np.uint8)
    big = ((y - 0.45 * shape[1]) / radii[0]) ** 2 + ((x - 0.45 * shape[2]) / radii[0]) ** 2
    label[big + ((z - zc) / shape[0]) ** 2 < 1] = 1
    small = ((y - 0.78 * shape[1]) / radii[1]) ** 2 + ((x - 0.75 * shape[2]) / radii[1]) ** 2
    label[small + ((z - zc) / shape[0]) ** 2 < 1] = 3
    values = rng.normal(100, 10, shape) + 60 * (label > 0)
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin((12.5, -40.0, 7.25))
    image.SetDirection(direction.ravel().tolist())
    lab = sitk.GetImageFromArray(label)
    lab.CopyInformation(image)
    return image, lab


def same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and a.GetSpacing() == b.GetSpacing()
        and a.GetOrigin() == b.GetOrigin()
        and a.GetDirection() == b.GetDirection()
    )


def dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    x, y = a == value, b == value
    return 2 * float((x & y).sum()) / float(x.sum() + y.sum())


def one_hot(label: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[label].transpose(0, 3, 1, 2)


@pytest.mark.parametrize("direction", [IDENTITY, OBLIQUE], ids=["identity", "oblique"])
@pytest.mark.parametrize("axis", ["auto", 0, 1, 2])
def test_forward_inverse_exact_without_resampling(direction, axis):
    image, label = blob_case(direction=direction)
    cfg = PreprocessingConfig(slice_axis=axis, target_spacing=None, patch_size=(96, 96))
    result = preprocess_case(image, label, cfg)
    assert result.image.dtype == np.float32 and result.label.dtype == np.uint8
    assert result.image.shape == result.label.shape
    assert result.image.size == math.prod(image.GetSize())  # the whole field of view, never cut
    assert set(np.unique(result.label)) == {0, 1, 3}
    restored = restore_labels(result.label, result.inverse)
    assert same_geometry(restored, image)
    assert np.array_equal(sitk.GetArrayFromImage(restored), sitk.GetArrayFromImage(label))


def test_auto_axis_is_the_thick_axis_and_every_slice_is_kept():
    image, label = blob_case(direction=OBLIQUE)  # 3 mm along the array's z axis, 6 slices
    cfg = PreprocessingConfig(target_spacing=None, patch_size=(96, 96))
    result = preprocess_case(image, label, cfg)
    assert result.image.shape[0] == 6
    assert result.inverse.grid_spacing[2] == pytest.approx(3.0)
    shape = slice_stack_shape(image.GetSize(), image.GetSpacing(), image.GetDirection(), cfg)
    assert shape == result.image.shape
    for axis, slices in ((0, 6), (1, 72), (2, 64)):
        cfg_axis = PreprocessingConfig(slice_axis=axis, target_spacing=None, patch_size=(96, 96))
        shape = slice_stack_shape(
            image.GetSize(), image.GetSpacing(), (1, 0, 0, 0, 1, 0, 0, 0, 1), cfg_axis
        )
        assert shape[0] == (6, 72, 64)[axis] == slices


def test_slices_follow_the_slice_axis_in_order():
    image, label = blob_case()
    cfg = PreprocessingConfig(slice_axis=0, target_spacing=None, patch_size=(96, 96))
    result = preprocess_case(image, label, cfg)
    array = sitk.GetArrayFromImage(label)
    for k in range(array.shape[0]):
        assert result.label[k].sum() == array[k].sum()
    assert result.label[0].sum() < result.label[3].sum()  # ellipsoid: small at the ends


def test_exact_when_target_equals_spacing():
    image, label = blob_case(spacing=(0.7, 0.7, 2.5), direction=OBLIQUE)
    cfg = PreprocessingConfig(target_spacing=0.7, patch_size=(96, 96))
    result = preprocess_case(image, label, cfg)
    assert not result.inverse.resampled
    restored = restore_labels(result.label, result.inverse)
    assert np.array_equal(sitk.GetArrayFromImage(restored), sitk.GetArrayFromImage(label))


@pytest.mark.parametrize("factor", [0.5, 0.75, 1.5, 2.0])
def test_forward_inverse_dice_with_resampling(factor):
    # Structures of realistic size: radii of 20-24 mm at 0.5 mm in-plane spacing (a 2x coarser
    # grid can only place boundaries on its own voxel edges: Dice ~ 1 - 0.64 / radius).
    image, label = blob_case(
        shape=(4, 200, 190), spacing=(0.5, 0.5, 3.0), radii=(48, 40), direction=OBLIQUE
    )
    side = 32 * math.ceil(200 / factor / 32) + 32  # the patch holds the whole field of view
    cfg = PreprocessingConfig(target_spacing=0.5 * factor, patch_size=(side, side))
    result = preprocess_case(image, label, cfg)
    assert result.inverse.resampled
    assert result.inverse.grid_spacing[:2] == (0.5 * factor, 0.5 * factor)
    restored = restore_labels(result.label, result.inverse)
    assert same_geometry(restored, image)
    original, back = sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(restored)
    for value in (1, 3):
        assert dice(original, back, value) >= 0.98


def test_restore_probabilities_agrees_with_restore_labels_on_one_hot():
    image, label = blob_case(direction=OBLIQUE)
    lut = np.array([0, 1, 0, 2], dtype=np.uint8)  # disk values 0, 1, 3 -> classes 0, 1, 2
    cfg = PreprocessingConfig(target_spacing=None, patch_size=(96, 96))
    result = preprocess_case(image, label, cfg)
    local = lut[result.label]
    from_probs = restore_probabilities(one_hot(local, 3), result.inverse)
    from_labels = restore_labels(local, result.inverse)
    assert same_geometry(from_probs, image)
    assert np.array_equal(sitk.GetArrayFromImage(from_probs), sitk.GetArrayFromImage(from_labels))

    cfg = PreprocessingConfig(target_spacing=0.9, patch_size=(64, 64))
    result = preprocess_case(image, label, cfg)
    local = lut[result.label]
    a = sitk.GetArrayFromImage(restore_probabilities(one_hot(local, 3), result.inverse))
    b = sitk.GetArrayFromImage(restore_labels(local, result.inverse))
    assert (a == b).mean() > 0.99
    for value in (1, 2):
        assert dice(a, b, value) >= 0.95


def test_restore_probabilities_prefers_the_most_probable_class():
    image, label = blob_case()
    cfg = PreprocessingConfig(target_spacing=None, patch_size=(96, 96))
    info = preprocess_case(image, None, cfg).inverse
    probs = np.zeros((*info.slice_shape[:1], 3, *info.slice_shape[1:]), dtype=np.float32)
    probs[:, 0], probs[:, 1], probs[:, 2] = 0.2, 0.5, 0.3
    restored = sitk.GetArrayFromImage(restore_probabilities(probs, info))
    assert restored.dtype == np.uint8 and set(np.unique(restored)) == {1}


def test_normalization_zero_mean_unit_std_within_clip():
    image, _ = blob_case(shape=(5, 64, 64), spacing=(0.5, 0.5, 2.0))
    array = sitk.GetArrayFromImage(image)
    array[0, 0, :5] = [1e4, -1e4, 5e3, 3e3, -2e3]  # outliers, clipped away
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.5, 0.5, 2.0))
    cfg = PreprocessingConfig(target_spacing=None, patch_size=(64, 64), clip_percentiles=(1, 99))
    out = preprocess_case(image, None, cfg).image
    assert abs(float(out.mean())) < 1e-4
    assert float(out.std()) == pytest.approx(1.0, abs=1e-4)
    low, high = np.percentile(array, (1, 99))
    clipped = np.clip(array, low, high)
    scale = clipped.std()
    assert float(out.max()) == pytest.approx((high - clipped.mean()) / scale, rel=1e-4)
    assert float(out.min()) == pytest.approx((low - clipped.mean()) / scale, rel=1e-4)


def test_float64_scan_is_normalized_and_left_untouched():
    array = np.random.default_rng(0).normal(50.0, 10.0, size=(4, 32, 32))  # float64, small
    image = sitk.GetImageFromArray(array)
    cfg = PreprocessingConfig(target_spacing=None, patch_size=(32, 32), clip_percentiles=(1, 99))
    out = preprocess_case(image, None, cfg).image
    assert abs(float(out.mean())) < 1e-4
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), array)


def test_non_finite_voxels_are_set_to_the_clip_bounds():
    array = np.random.default_rng(0).normal(50.0, 10.0, size=(4, 32, 32)).astype(np.float32)
    finite = preprocess_case(sitk.GetImageFromArray(array), None, CLIPPED).image
    array[1, 5, 5], array[2, 7, 7], array[3, 9, 9] = np.nan, np.inf, -np.inf
    out = preprocess_case(sitk.GetImageFromArray(array), None, CLIPPED).image
    assert np.isfinite(out).all()
    others = np.ones(out.shape, bool)
    others[1, 5, 5] = others[2, 7, 7] = others[3, 9, 9] = False
    np.testing.assert_allclose(out[others], finite[others], atol=0.02)  # 3 voxels fewer sampled
    assert out[1, 5, 5] == out.min() and out[3, 9, 9] == out.min() and out[2, 7, 7] == out.max()
    array[:] = np.nan
    with pytest.raises(ValueError, match="no finite intensity"):
        preprocess_case(sitk.GetImageFromArray(array), None, CLIPPED)


CLIPPED = PreprocessingConfig(target_spacing=None, patch_size=(32, 32), clip_percentiles=(1, 99))


@pytest.mark.parametrize("target", [None, 0.7, 1.3])
def test_grid_is_the_whole_field_of_view(target):
    shape = (3, 200, 150)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    body = ((y - 12) ** 2 + (x - 140) ** 2) < 10**2  # at the edge of the field of view
    rng = np.random.default_rng(2)
    image = sitk.GetImageFromArray((rng.normal(5, 2, shape) + 200 * body).astype(np.float32))
    image.SetSpacing((0.5, 0.5, 3.0))
    label = sitk.GetImageFromArray(body.astype(np.uint8))
    label.CopyInformation(image)
    cfg = PreprocessingConfig(target_spacing=target, patch_size=(64, 64))
    result = preprocess_case(image, label, cfg)
    scale = 0.5 / (target or 0.5)
    assert result.image.shape == (3, round(200 * scale), round(150 * scale))
    assert slice_stack_shape(image.GetSize(), image.GetSpacing(), image.GetDirection(), cfg) == (
        result.image.shape
    )
    area = body.sum() * scale**2
    assert abs(int(result.label.sum()) - area) < 0.1 * area  # nothing of it was cut
    if target is None:
        restored = restore_labels(result.label, result.inverse)
        assert np.array_equal(sitk.GetArrayFromImage(restored), body.astype(np.uint8))


def test_inverse_info_json_round_trip():
    image, label = blob_case(direction=OBLIQUE)
    info = preprocess_case(image, label, PreprocessingConfig(patch_size=(64, 64))).inverse
    again = InverseInfo.from_dict(json.loads(json.dumps(info.to_dict())))
    assert again == info


def test_errors_are_clear():
    image, label = blob_case()
    cfg = PreprocessingConfig(target_spacing=None, patch_size=(96, 96))
    wide = sitk.Cast(label, sitk.sitkUInt16) * 100
    with pytest.raises(ValueError, match="0..255"):
        preprocess_case(image, wide, cfg)
    moved = sitk.Image(label)
    moved.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="origin"):
        preprocess_case(image, moved, cfg)
    info = preprocess_case(image, None, cfg).inverse
    with pytest.raises(ValueError, match="expected"):
        restore_labels(np.zeros((2, 96, 96), dtype=np.uint8), info)
    with pytest.raises(ValueError, match="integers"):
        restore_labels(np.zeros(info.slice_shape, dtype=np.float32), info)
