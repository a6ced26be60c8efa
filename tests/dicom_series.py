"""Small MR DICOM series written with pydicom, for the DICOM-SEG tests (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
SERIES_UID = "1.2.826.0.1.3680043.8.498.2"
FRAME_OF_REFERENCE_UID = "1.2.826.0.1.3680043.8.498.3"

ROW = (0.0, 1.0, 0.0)  # direction of a row (increasing column index), LPS
COLUMN = (0.0, 0.0, -1.0)  # direction of a column (increasing row index): a sagittal series
PIXEL_SPACING = (0.8, 0.7)  # between rows, between columns (mm)
SLICE_STEP = 3.0  # mm, along the normal ROW x COLUMN
ORIGIN = (-12.0, 20.0, 40.0)


def slice_position(k: float) -> np.ndarray:
    """Image Position (Patient) of slice ``k`` (fractions allowed, to make gaps)."""
    normal = np.cross(ROW, COLUMN)
    return np.asarray(ORIGIN) + k * SLICE_STEP * normal


def write_mr_series(
    folder: Path,
    pixels: np.ndarray,
    positions: list[np.ndarray] | None = None,
    orientations: list[tuple[float, ...]] | None = None,
    shuffle: bool = True,
    slice_thickness: float | str | None = SLICE_STEP,
) -> list[str]:
    """Write ``pixels`` [slices, rows, columns] as one MR file per slice; returns the SOP
    Instance UIDs in slice order. Files are named in a shuffled order (readers must sort).
    ``slice_thickness`` None leaves Slice Thickness out, "" writes it empty (Type 2)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

    folder.mkdir(parents=True)
    count = len(pixels)
    positions = positions or [slice_position(k) for k in range(count)]
    orientations = orientations or [(*ROW, *COLUMN)] * count
    names = np.random.default_rng(0).permutation(count) if shuffle else np.arange(count)
    uids = []
    for k in range(count):
        uid = f"{SERIES_UID}.{k + 1}"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = _mr_dataset(pixels[k], uid, positions[k], orientations[k], k)
        if slice_thickness is None:
            del ds.SliceThickness
        else:
            ds.SliceThickness = slice_thickness
        ds.file_meta = meta
        ds.save_as(folder / f"im{names[k]:03d}.dcm", enforce_file_format=True)
        uids.append(uid)
    return uids


def _mr_dataset(pixels: np.ndarray, uid: str, position, orientation, k: int):
    from pydicom.dataset import Dataset
    from pydicom.uid import MRImageStorage

    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = SERIES_UID
    ds.FrameOfReferenceUID = FRAME_OF_REFERENCE_UID
    ds.PatientName = "Test^Knee"
    ds.PatientID = "JS0001"
    ds.PatientBirthDate = "20150101"
    ds.PatientSex = "F"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = "A1"
    ds.ReferringPhysicianName = ""
    ds.Modality = "MR"
    ds.Manufacturer = "test"
    ds.SeriesNumber = 3
    ds.InstanceNumber = k + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.PixelSpacing = list(PIXEL_SPACING)
    ds.SliceThickness = SLICE_STEP
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    return ds


def phantom(slices: int = 8, rows: int = 32, columns: int = 32) -> np.ndarray:
    """MR-like pixels: a bright disc per slice whose centre moves with the slice."""
    r, c = np.mgrid[:rows, :columns]
    out = np.full((slices, rows, columns), 200, np.uint16)
    for k in range(slices):
        out[k][(r - 10 - k) ** 2 + (c - 12) ** 2 < 30] = 1200
    return out
