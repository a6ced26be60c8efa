"""A DICOM folder holding several series: the largest by default, with a warning listing the
others once; ``series=UID`` reads another; ``jointseg convert`` writes the one chosen."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from jointseg.cli import app
from jointseg.data.io import ScanReadError, convert_scan, dicom_series, read_header, read_image
from tests.dicom_series import PIXEL_SPACING, SERIES_UID, SLICE_STEP, phantom, write_mr_series

OTHER_UID = "1.2.826.0.1.3680043.8.498.9"


def two_series(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A folder with a 6-slice series (SERIES_UID) and a 4-slice one (OTHER_UID, darker,
    described as a localizer)."""
    import pydicom

    folder = tmp_path / "exam"
    large, small = phantom(slices=6), (phantom(slices=4) // 3).astype(np.uint16)
    write_mr_series(folder, large)
    write_mr_series(tmp_path / "other", small)
    for k, path in enumerate(sorted((tmp_path / "other").iterdir())):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = OTHER_UID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{OTHER_UID}.{k + 1}"
        ds.SeriesNumber = 1
        ds.SeriesDescription = "localizer"
        ds.save_as(folder / f"loc{k:03d}.dcm", enforce_file_format=True)
    return folder, large, small


def test_the_largest_series_is_read_and_the_others_are_listed_once(tmp_path, caplog):
    folder, large, _ = two_series(tmp_path)
    found = dicom_series(folder)
    assert [(s.uid, len(s.files), s.description) for s in found] == [
        (SERIES_UID, 6, "3"), (OTHER_UID, 4, "1 localizer")
    ]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="jointseg.data.io"):
        image = read_image(folder)
        read_image(folder)
    assert np.array_equal(sitk.GetArrayFromImage(image), large)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"2 DICOM series; reading the largest, {SERIES_UID} (6 files, 3)" in warnings[0]
    assert f"The others: {OTHER_UID} (4 files, 1 localizer)" in warnings[0]
    assert "--series UID" in warnings[0]


def test_a_series_is_chosen_by_its_uid(tmp_path):
    folder, _, small = two_series(tmp_path)
    image = read_image(folder, series=OTHER_UID)
    assert np.array_equal(sitk.GetArrayFromImage(image), small)
    assert image.GetSpacing() == pytest.approx((PIXEL_SPACING[1], PIXEL_SPACING[0], SLICE_STEP))
    assert read_header(folder, series=OTHER_UID).size == (32, 32, 4)
    with pytest.raises(ScanReadError, match=r"exam: no series 1\.2\.3 here; it holds 1\.2"):
        read_image(folder, series="1.2.3")
    with pytest.raises(ScanReadError, match="series 1.2.3 asked of a file"):
        read_image(next(folder.iterdir()), series="1.2.3")


def test_convert_writes_the_chosen_series_with_its_geometry(tmp_path):
    folder, _, small = two_series(tmp_path)
    out = tmp_path / "dataset" / "imagesTr" / "knee_000_0000.nii.gz"
    convert_scan(folder, out, series=OTHER_UID)
    written, source = sitk.ReadImage(str(out)), read_image(folder, series=OTHER_UID)
    assert np.array_equal(sitk.GetArrayFromImage(written), small)
    assert written.GetOrigin() == pytest.approx(source.GetOrigin(), abs=1e-4)
    assert written.GetDirection() == pytest.approx(source.GetDirection(), abs=1e-6)
    assert not list(out.parent.glob(".*"))  # no temporary left


def test_the_convert_command_lists_and_writes(tmp_path):
    folder, large, _ = two_series(tmp_path)
    runner = CliRunner()
    listed = runner.invoke(app, ["convert", str(folder), "--list"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines() == [
        f"{SERIES_UID} (6 files, 3)", f"{OTHER_UID} (4 files, 1 localizer)"
    ]  # fmt: skip
    out = tmp_path / "scan.nii.gz"
    done = runner.invoke(app, ["convert", str(folder), str(out)])
    assert done.exit_code == 0, done.output
    assert "(32x32x6 voxels of 0.7x0.8x3 mm)" in done.output
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), large)
    missing = runner.invoke(app, ["convert", str(folder), str(out), "--series", "9.9"])
    assert missing.exit_code == 1 and "no series 9.9 here" in missing.output
    bare = runner.invoke(app, ["convert", str(folder)])
    assert bare.exit_code == 2 and "give the scan to write (OUT), or --list" in bare.output
