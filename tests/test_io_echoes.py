"""Multi-echo DICOM series: one echo read at a time, the first by default choice ``echo=1``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from jointseg.data.io import ScanReadError, dicom_echoes, dicom_series_files, read_image
from tests.dicom_series import SERIES_UID, _mr_dataset, phantom, slice_position

ECHO_TIMES = (12.5, 6.25)  # written in this order: the reader must sort them


def write_echo_series(folder: Path, pixels_per_echo: list[np.ndarray], tags: bool = True) -> None:
    """One MR series holding every slice once per echo (files named in mixed order)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

    folder.mkdir(parents=True)
    number = 0
    for echo_index, (pixels, echo_time) in enumerate(zip(pixels_per_echo, ECHO_TIMES, strict=True)):
        for k in range(len(pixels)):
            number += 1
            uid = f"{SERIES_UID}.{number}"
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MRImageStorage
            meta.MediaStorageSOPInstanceUID = uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = _mr_dataset(pixels[k], uid, slice_position(k), (0, 1, 0, 0, 0, -1), k)
            ds.InstanceNumber = number
            if tags or echo_index == 0:
                ds.EchoTime = echo_time
                ds.EchoNumbers = 2 - echo_index  # the second written is echo 1
            ds.file_meta = meta
            ds.save_as(folder / f"im{(number * 7) % 97:03d}.dcm", enforce_file_format=True)


def two_echoes() -> tuple[np.ndarray, np.ndarray]:
    first = phantom(slices=5)
    return first, (first // 2 + 7).astype(np.uint16)  # the later echo: darker


def test_the_first_echo_comes_out(tmp_path: Path) -> None:
    first, later = two_echoes()
    folder = tmp_path / "mese"
    write_echo_series(folder, [later, first])  # written: TE 12.5 (echo 2), then TE 6.25 (echo 1)
    assert [key for key in dicom_echoes(dicom_series_files(folder, echo=1))] == [(1.0, 6.25)]
    image = read_image(folder, echo=1)
    assert image.GetSize() == (32, 32, 5)
    assert np.array_equal(sitk.GetArrayFromImage(image), first)
    assert np.array_equal(sitk.GetArrayFromImage(read_image(folder, echo=2)), later)
    assert image.GetSpacing()[2] == pytest.approx(3.0)  # the slice step, not 0 (duplicates)


def test_a_multi_echo_series_without_a_choice_is_refused_with_its_echoes(tmp_path: Path) -> None:
    folder = tmp_path / "mese"
    write_echo_series(folder, list(two_echoes()))
    with pytest.raises(ScanReadError, match=r"mese: a multi-echo series: 2 echoes of 5") as e:
        read_image(folder)
    assert "echo 1 TE 6.25 ms" in str(e.value) and "--echo 1" in str(e.value)
    with pytest.raises(ScanReadError, match="no echo 3: the series holds 2 echoes"):
        read_image(folder, echo=3)


def test_a_series_mixing_tagged_and_untagged_echoes_names_a_file(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    write_echo_series(folder, list(two_echoes()), tags=False)
    with pytest.raises(ScanReadError, match=r"im\d{3}\.dcm: no Echo Numbers or Echo Time"):
        read_image(folder, echo=1)


def test_a_single_echo_series_reads_as_before(tmp_path: Path) -> None:
    from tests.dicom_series import write_mr_series

    folder = tmp_path / "single"
    write_mr_series(folder, phantom(slices=4))
    assert read_image(folder).GetSize() == read_image(folder, echo=1).GetSize() == (32, 32, 4)
    with pytest.raises(ScanReadError, match="no echo 2: the series holds 1 echo$"):
        read_image(folder, echo=2)
    nifti = tmp_path / "scan.nii.gz"
    sitk.WriteImage(read_image(folder), str(nifti))
    with pytest.raises(ScanReadError, match="echoes are chosen in a DICOM series folder"):
        read_image(nifti, echo=1)
