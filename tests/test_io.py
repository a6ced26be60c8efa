"""Scan I/O: round trips of every format, DICOM series, errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from jointseg.data.io import (
    ScanReadError,
    geometry_mismatches,
    read_image,
    scan_extension,
    strip_extension,
    write_image,
)
from tests.conftest import make_volume_pair


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_round_trip_keeps_voxels_and_geometry(tmp_path: Path, ext: str) -> None:
    image, _ = make_volume_pair()
    direction = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
    image.SetDirection(direction)
    path = tmp_path / f"scan{ext}"
    write_image(image, path)
    back = read_image(path)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert geometry_mismatches(back, image) == []
    assert np.allclose(back.GetDirection(), direction)
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file may remain"


def test_dicom_series_folder_is_read_with_its_geometry(tmp_path: Path) -> None:
    array = (np.arange(4 * 16 * 16).reshape(4, 16, 16) % 200).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.5, 0.5, 2.0))
    image.SetOrigin((1.0, 2.0, 3.0))
    series = tmp_path / "dicom"
    series.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.1"
    for z in range(array.shape[0]):
        slice_image = image[:, :, z]
        origin = image.TransformIndexToPhysicalPoint((0, 0, z))
        for tag, value in (
            ("0020|000e", uid),
            ("0020|000d", uid + ".0"),
            ("0008|0060", "MR"),
            ("0020|0032", "\\".join(f"{v}" for v in origin)),
            ("0020|0037", "1\\0\\0\\0\\1\\0"),
            ("0020|0013", str(z + 1)),
            ("0028|0030", "0.5\\0.5"),
            ("0018|0050", "2.0"),
        ):
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(series / f"slice{z:03d}.dcm"))
        writer.Execute(slice_image)
    back = read_image(series)
    assert back.GetSize() == (16, 16, 4)
    assert np.allclose(back.GetSpacing(), (0.5, 0.5, 2.0))
    assert np.allclose(back.GetOrigin(), (1.0, 2.0, 3.0))
    assert np.array_equal(sitk.GetArrayFromImage(back), array)


def test_corrupt_file_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"this is not a nifti file")
    with pytest.raises(ScanReadError, match="broken.nii.gz"):
        read_image(path)


def test_missing_and_empty_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ScanReadError, match="no such file"):
        read_image(tmp_path / "nothing.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScanReadError, match="without any DICOM series"):
        read_image(tmp_path / "empty")


def test_extension_helpers() -> None:
    assert scan_extension("a/b/case_0000.nii.gz") == ".nii.gz"
    assert scan_extension("x.NRRD") == ".nrrd"
    assert scan_extension("x.png") is None
    assert strip_extension("dir/knee_003_0000.nii.gz") == "knee_003_0000"


def test_failed_write_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    image, _ = make_volume_pair()
    path = tmp_path / "scan.nrrd"
    write_image(image, path)
    before = path.read_bytes()

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", explode)
    with pytest.raises(RuntimeError):
        write_image(image, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nrrd"]


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    import os

    from jointseg.utils.atomic import atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask
