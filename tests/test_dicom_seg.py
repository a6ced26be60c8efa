"""DICOM-SEG: frames on their source slices, the label map's voxels, names and SNOMED codes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from jointseg.data.io import read_image, write_image
from jointseg.inference.dicom_seg import Algorithm, DicomSegError, write_dicom_seg
from tests.dicom_series import (
    FRAME_OF_REFERENCE_UID,
    PIXEL_SPACING,
    SLICE_STEP,
    STUDY_UID,
    phantom,
    slice_position,
    write_mr_series,
)

STRUCTURES = {"femur": 1, "tibia": 2, "femur_physis": 5}
ALGORITHM = Algorithm(run="knee-full", identifier="0123456789ab", domain="knee", scheme="full")
# The SNOMED CT codes (value, meaning) each structure must carry; growth plates have none of
# their own in the code dictionary and are coded as an anatomical structure.
EXPECTED_TYPES = {
    "femur": ("71341001", "Femur"),
    "tibia": ("12611008", "Tibia"),
    "femur_physis": ("91723000", "Anatomical Structure"),
}


def label_array(shape: tuple[int, int, int]) -> np.ndarray:
    """Labels [slice, row, column]: slice 0 empty, femur discs, a tibia block, a physis line."""
    z, r, c = np.mgrid[: shape[0], : shape[1], : shape[2]]
    labels = np.zeros(shape, np.uint8)
    labels[((r - 10 - z) ** 2 + (c - 12) ** 2 < 30) & (z > 0)] = 1
    labels[(r > 22) & (r < 28) & (c > 4) & (c < 20) & (z > 2)] = 2
    labels[(r == 20) & (c > 6) & (c < 18) & (z > 1) & (z < 6)] = 5
    return labels


def series_and_labels(tmp_path: Path) -> tuple[Path, list[str], sitk.Image]:
    folder = tmp_path / "knee_series"
    uids = write_mr_series(folder, phantom())
    image = read_image(folder)
    labels = sitk.GetImageFromArray(label_array(sitk.GetArrayViewFromImage(image).shape))
    labels.CopyInformation(image)
    return folder, uids, labels


def test_dicom_seg_frames_reference_their_slices_and_hold_the_label_map(tmp_path: Path):
    import highdicom as hd

    folder, uids, labels = series_and_labels(tmp_path)
    nifti = tmp_path / "knee_seg.nii.gz"
    write_image(labels, nifti)
    truth = sitk.GetArrayFromImage(read_image(nifti))
    # The series is sagittal with its files in shuffled order: slice k of the label map is
    # the instance uids[k] at slice_position(k).
    np.testing.assert_allclose(labels.GetOrigin(), slice_position(0), atol=1e-6)
    path = write_dicom_seg(folder, labels, STRUCTURES, ALGORITHM, tmp_path / "knee_seg.dcm")

    seg = hd.seg.segread(path)
    assert seg.StudyInstanceUID == STUDY_UID and seg.FrameOfReferenceUID == FRAME_OF_REFERENCE_UID
    assert seg.SegmentationType == "BINARY" and seg.ContentLabel == "JOINTSEG"
    numbers = {s.SegmentLabel: int(s.SegmentNumber) for s in seg.SegmentSequence}
    assert numbers == {"femur": 1, "tibia": 2, "femur_physis": 3}
    value_of = {numbers[name]: value for name, value in STRUCTURES.items()}
    # every frame: its source instance, that instance's position, that slice's voxels
    frames = seg.pixel_array.reshape(-1, *truth.shape[1:])
    seen = set()
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = uids.index(source)
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, slice_position(k), atol=1e-4)
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        np.testing.assert_array_equal(frame.astype(bool), truth[k] == value_of[number])
        seen.add((k, number))
    expected = {
        (k, n) for k in range(len(uids)) for n in value_of if (truth[k] == value_of[n]).any()
    }
    assert seen == expected  # a frame for every non-empty segment slice, none for empty ones
    # the whole label map back, by source instance
    combined = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    back = np.zeros_like(truth)
    for number, value in value_of.items():
        back[combined == number] = value
    np.testing.assert_array_equal(back, truth)


def test_dicom_seg_names_codes_and_algorithm(tmp_path: Path):
    import highdicom as hd

    folder, _, labels = series_and_labels(tmp_path)
    seg = hd.seg.segread(write_dicom_seg(folder, labels, STRUCTURES, ALGORITHM, tmp_path / "s.dcm"))
    for segment in seg.SegmentSequence:
        category = segment.SegmentedPropertyCategoryCodeSequence[0]
        kind = segment.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodingSchemeDesignator, category.CodeValue) == ("SCT", "91723000")
        assert kind.CodingSchemeDesignator == "SCT"
        assert (kind.CodeValue, kind.CodeMeaning) == EXPECTED_TYPES[segment.SegmentLabel]
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "jointseg"
        from jointseg import __version__

        assert algorithm.AlgorithmVersion == __version__
        assert "run=knee-full" in algorithm.AlgorithmParameters
        assert "weights=0123456789ab" in algorithm.AlgorithmParameters
        assert len(segment.RecommendedDisplayCIELabValue) == 3
    assert seg.ManufacturerModelName == "jointseg knee-full"
    assert seg.DeviceSerialNumber == "0123456789ab"


def test_series_with_a_gap_or_tilted_slice_is_refused_naming_the_folder(tmp_path: Path):
    pixels = phantom()
    positions = [slice_position(k if k < 4 else k + 1) for k in range(len(pixels))]
    gap = tmp_path / "gap_series"
    write_mr_series(gap, pixels, positions=positions)
    labels = sitk.Image(32, 32, 8, sitk.sitkUInt8)
    with pytest.raises(DicomSegError, match=r"gap_series: missing slices"):
        write_dicom_seg(gap, labels, STRUCTURES, ALGORITHM, tmp_path / "gap.dcm")

    tilted = tmp_path / "tilted_series"
    a = np.deg2rad(10)
    orientations = [(0.0, 1.0, 0.0, 0.0, 0.0, -1.0)] * 8
    orientations[5] = (0.0, np.cos(a), np.sin(a), 0.0, np.sin(a), -np.cos(a))
    write_mr_series(tilted, pixels, orientations=orientations)
    with pytest.raises(DicomSegError, match=r"tilted_series: the slices are not parallel"):
        write_dicom_seg(tilted, labels, STRUCTURES, ALGORITHM, tmp_path / "tilted.dcm")
    assert not list(tmp_path.glob("*.dcm"))


def test_label_map_of_another_grid_is_refused(tmp_path: Path):
    folder, _, labels = series_and_labels(tmp_path)
    moved = sitk.Image(labels)
    moved.SetOrigin(tuple(np.asarray(labels.GetOrigin()) + (0.0, 0.35, 0.0)))
    with pytest.raises(DicomSegError, match=r"knee_series: .* not on a slice of the label map"):
        write_dicom_seg(folder, moved, STRUCTURES, ALGORITHM, tmp_path / "moved.dcm")
    with pytest.raises(DicomSegError, match=r"values \[11\] of no structure"):
        write_dicom_seg(
            folder, labels + 9 * (labels == 2), STRUCTURES, ALGORITHM, tmp_path / "x.dcm"
        )


def _labels_on(folder: Path) -> sitk.Image:
    image = read_image(folder)
    labels = sitk.GetImageFromArray(label_array(sitk.GetArrayViewFromImage(image).shape))
    labels.CopyInformation(image)
    return labels


@pytest.mark.parametrize(
    ("thickness", "expected"),
    [(None, SLICE_STEP), ("", SLICE_STEP), (2.0, 2.0)],
    ids=["absent", "empty", "recorded"],
)
def test_series_without_slice_thickness_gets_the_spacing_of_its_positions(
    tmp_path: Path, thickness: float | str | None, expected: float
):
    import highdicom as hd

    folder = tmp_path / "series"
    uids = write_mr_series(folder, phantom(), slice_thickness=thickness)
    labels = _labels_on(folder)
    assert labels.GetSpacing()[2] == pytest.approx(SLICE_STEP)
    seg = hd.seg.segread(write_dicom_seg(folder, labels, STRUCTURES, ALGORITHM, tmp_path / "s.dcm"))
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == pytest.approx(expected)  # a recorded one is kept
    assert float(measures.SpacingBetweenSlices) == pytest.approx(SLICE_STEP)
    assert [float(v) for v in measures.PixelSpacing] == pytest.approx(PIXEL_SPACING)
    combined = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    truth = sitk.GetArrayFromImage(labels)
    np.testing.assert_array_equal(combined > 0, truth > 0)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
@pytest.mark.parametrize("thickness", [SLICE_STEP, None], ids=["recorded", "absent"])
def test_dciodvfy_finds_no_error_in_the_dicom_seg(tmp_path: Path, thickness: float | None):
    folder = tmp_path / "series"
    write_mr_series(folder, phantom(), slice_thickness=thickness)
    path = write_dicom_seg(folder, _labels_on(folder), STRUCTURES, ALGORITHM, tmp_path / "s.dcm")
    result = subprocess.run(
        ["dciodvfy", str(path)],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=120,
    )
    report = result.stdout + result.stderr
    assert "Segmentation" in report, report  # it recognized the IOD
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert not errors, report
