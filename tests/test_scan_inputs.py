"""Scans as they come: orientations, anisotropy, tiny fields of view, voxel types, and scans that
are refused (constant, 4D, multi-channel, too large) with the file named."""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from jointseg.inference import slices
from jointseg.inference.predict import predict_path
from jointseg.inference.predictor import InputError
from jointseg.models.inferer import PATCH_MULTIPLE
from tests.tiny_model import DOMAINS, OBLIQUE, make_scan, same_geometry

# Bounds on a trained model: CI runs these tests under a second CPU-kernel setting too.
pytestmark = pytest.mark.trains

ORIENTATIONS = list(
    itertools.product(itertools.permutations(range(3)), itertools.product((0, 1), repeat=3))
)
FAST_ORIENTATIONS = ORIENTATIONS[::6]  # 8 of the 48: every permutation, varied flips


def reorient(image: sitk.Image, perm: tuple[int, ...], flips: tuple[int, ...]) -> sitk.Image:
    """The same physical scan stored with its index axes permuted and flipped.

    Index axis ``j`` of the result walks along axis ``perm[j]`` of ``image``, backwards where
    ``flips[j]``; spacing, direction and origin follow, so every voxel keeps its position.
    """
    size = np.asarray(image.GetSize())
    spacing = np.asarray(image.GetSpacing())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    origin = np.asarray(image.GetOrigin(), dtype=float)
    columns = np.empty((3, 3))
    for j, (axis, flip) in enumerate(zip(perm, flips, strict=True)):
        columns[:, j] = direction[:, axis] * (-1.0 if flip else 1.0)
        if flip:
            origin = origin + direction[:, axis] * spacing[axis] * (size[axis] - 1)
    array = sitk.GetArrayFromImage(image)  # numpy axis 2 - k is index axis k
    array = np.transpose(array, [2 - perm[2 - a] for a in range(3)])
    for j, flip in enumerate(flips):
        if flip:
            array = np.flip(array, 2 - j)
    result = sitk.GetImageFromArray(np.ascontiguousarray(array))
    result.SetSpacing(tuple(float(spacing[axis]) for axis in perm))
    result.SetDirection(tuple(columns.ravel()))
    result.SetOrigin(tuple(origin))
    return result


def back_to(image: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """``image`` on ``reference``'s grid (nearest neighbour: the voxel centres coincide)."""
    return sitk.GetArrayFromImage(
        sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    )


def dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    x, y = a == value, b == value
    return 2.0 * (x & y).sum() / max(1, x.sum() + y.sum())


def check_orientations(predictor, orientations) -> None:
    image, _ = make_scan("knee", 5, direction=OBLIQUE)
    maps = []
    for perm, flips in orientations:
        turned = reorient(image, perm, flips)
        assert np.array_equal(back_to(turned, image), sitk.GetArrayFromImage(image))
        prediction = predictor.predict(turned)
        assert prediction.domain == "knee", (perm, flips)
        assert same_geometry(prediction.label_map, turned)
        maps.append(back_to(prediction.label_map, image))
    for value in DOMAINS["knee"].values():
        assert all((m == value).sum() > 100 for m in maps)
        worst = min(dice(a, b, value) for a, b in itertools.combinations(maps, 2))
        assert worst >= 0.99, value


def test_reorient_keeps_every_voxel_in_place() -> None:
    image, _ = make_scan("knee", 0, direction=OBLIQUE)
    for perm, flips in ORIENTATIONS:
        turned = reorient(image, perm, flips)
        assert np.array_equal(back_to(turned, image), sitk.GetArrayFromImage(image))
        corner = [0, 0, 0]
        for axis, flip in zip(perm, flips, strict=True):
            corner[axis] = image.GetSize()[axis] - 1 if flip else 0
        np.testing.assert_allclose(
            turned.GetOrigin(), image.TransformIndexToPhysicalPoint(corner), atol=1e-9
        )


def test_orientations_give_the_same_segmentation(predictor) -> None:
    check_orientations(predictor, FAST_ORIENTATIONS)


@pytest.mark.slow
def test_all_48_orientations_give_the_same_segmentation(predictor) -> None:
    check_orientations(predictor, ORIENTATIONS)


def test_extreme_anisotropy(predictor) -> None:
    image, _ = make_scan("knee", 6)
    grid = sitk.Image([352, 320, 7], sitk.sitkFloat32)  # 0.2 x 0.2 x 8 mm: the same field of view
    grid.SetSpacing((0.2, 0.2, 8.0))
    grid.SetOrigin(image.GetOrigin())
    grid.SetDirection(image.GetDirection())
    thin = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0)
    prediction = predictor.predict(thin, domain="knee")
    assert same_geometry(prediction.label_map, thin)
    assert set(np.unique(sitk.GetArrayViewFromImage(prediction.label_map))) <= {0, 1, 2}
    assert prediction.details["slices"] == 7  # the 8 mm axis is the slice axis
    assert all(side % PATCH_MULTIPLE == 0 for side in prediction.details["grid"])


def test_tiny_field_of_view(predictor) -> None:
    image, _ = make_scan("knee", 6)
    tiny = image[28:36, 20:28, 8:11]  # 8 x 8 x 3 voxels
    prediction = predictor.predict(tiny, domain="knee")
    assert same_geometry(prediction.label_map, tiny)
    assert set(np.unique(sitk.GetArrayViewFromImage(prediction.label_map))) <= {0, 1, 2}


PIXELS = {
    "int16": sitk.sitkInt16,
    "uint8": sitk.sitkUInt8,
    "uint16": sitk.sitkUInt16,
    "float64": sitk.sitkFloat64,
}


@pytest.mark.parametrize("pixel", list(PIXELS))
def test_voxel_types(predictor, tmp_path: Path, pixel: str) -> None:
    image, _ = make_scan("knee", 7)
    reference = sitk.GetArrayFromImage(predictor.predict(image).label_map)
    if pixel == "uint8":
        image = sitk.RescaleIntensity(image, 0, 255)
    typed = sitk.Cast(image, PIXELS[pixel])
    path = tmp_path / f"scan_{pixel}.nii.gz"
    sitk.WriteImage(typed, str(path))
    prediction = predictor.predict(path)
    got = sitk.GetArrayFromImage(prediction.label_map)
    assert sitk.ReadImage(str(path)).GetPixelIDTypeAsString() == typed.GetPixelIDTypeAsString()
    assert prediction.domain == "knee"
    for value in DOMAINS["knee"].values():
        assert dice(got, reference, value) >= 0.95, value


def test_constant_scan_is_refused(trained_run, tmp_path: Path) -> None:
    image, _ = make_scan("knee", 0)
    flat = sitk.GetImageFromArray(np.full(sitk.GetArrayViewFromImage(image).shape, 120, np.int16))
    flat.CopyInformation(image)
    path = tmp_path / "flat.nii.gz"
    sitk.WriteImage(flat, str(path))
    out = tmp_path / "out"
    for domain in ("auto", "knee"):
        with pytest.raises(InputError, match=r"flat.nii.gz: every voxel has the same intensity"):
            predict_path(trained_run, path, out, domain=domain)
    assert not out.exists() or not any(out.iterdir())


def test_4d_and_multichannel_files_are_refused(trained_run, tmp_path: Path) -> None:
    image, _ = make_scan("knee", 0)
    four_d = tmp_path / "series4d.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([image, image]), str(four_d))
    with pytest.raises(
        InputError, match=r"series4d.nii.gz: the scan is 4D \(size \(64, 64, 20, 2\)"
    ):
        predict_path(trained_run, four_d, tmp_path / "out")
    two = tmp_path / "two_channels.nrrd"
    sitk.WriteImage(sitk.Compose(image, image), str(two))
    with pytest.raises(OSError, match=r"two_channels.nrrd: has 2 components per voxel"):
        predict_path(trained_run, two, tmp_path / "out")


def big_header_file(path: Path, size: tuple[int, int, int]) -> Path:
    """An uncompressed int16 NIfTI of ``size`` whose voxels are a hole in a sparse file."""
    small = sitk.Image([2, 2, 2], sitk.sitkInt16)
    small.SetSpacing((0.3, 0.3, 0.5))
    sitk.WriteImage(small, str(path))
    header = bytearray(path.read_bytes()[:352])
    struct.pack_into("<3h", header, 42, *size)
    with open(path, "wb") as handle:
        handle.write(header)
        handle.truncate(352 + 2 * int(np.prod(size)))
    return path


def test_too_large_scan_is_refused_from_its_header(
    trained_run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = big_header_file(tmp_path / "huge.nii", (1024, 1024, 400))

    def no_reading(*args, **kwargs):
        raise AssertionError("the voxels were read")

    monkeypatch.setattr(slices, "read_image", no_reading)
    monkeypatch.setattr(slices, "MAX_SCAN_VOXELS", 400 * 1024 * 1024 - 1)
    with pytest.raises(InputError, match=r"huge.nii: the scan has 419,430,400 voxels"):
        predict_path(trained_run, path, tmp_path / "out")


def test_scan_larger_than_the_available_memory_is_refused_before_reading(
    trained_run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = big_header_file(tmp_path / "huge.nii", (1024, 1024, 400))

    def no_reading(*args, **kwargs):
        raise AssertionError("the voxels were read")

    monkeypatch.setattr(slices, "read_image", no_reading)
    monkeypatch.setattr(slices, "available_memory", lambda: 2 * 10**9)  # a 2 GB machine
    with pytest.raises(InputError, match=r"huge.nii: .* about 2.1 GB of memory, and 2.0 GB are"):
        predict_path(trained_run, path, tmp_path / "out")


def test_voxel_limit_applies_to_images_in_memory(
    predictor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image, _ = make_scan("knee", 0)
    predictor.predict(image)
    monkeypatch.setattr(slices, "MAX_SCAN_VOXELS", int(np.prod(image.GetSize())) - 1)
    with pytest.raises(InputError, match="81,920 voxels"):
        predictor.predict(image)
