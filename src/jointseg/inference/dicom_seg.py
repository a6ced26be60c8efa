"""A label map as a DICOM Segmentation object (DICOM-SEG) that references its source series.

One segment per structure (its name, its SNOMED CT code from
:mod:`jointseg.inference.terminology`, its display colour), the algorithm identified as
``jointseg`` with its version and the run, and one binary frame per segment and source slice
that holds any of it, each referencing its source instance (SOP Instance UID) and carrying the
slice's position. Built with highdicom; PACS viewers, OHIF and 3D Slicer (QuantitativeReporting)
read it.

The source series must be the one the label map was predicted from: every slice parallel, none
missing (:func:`jointseg.data.io.verify_scan`), and each slice at a whole slice index of the
label map's grid. Slice Thickness is a Type 2 attribute (present, possibly empty, or left out by
some writers); where a source slice has none, the segmentation's is the slice spacing, measured
between the Image Position (Patient) of consecutive slices: the label map's voxels are that thick.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from jointseg._version import __version__
from jointseg.data.io import ScanReadError, dicom_series_files, verify_scan
from jointseg.inference.label_tables import LabelEntry, label_entries
from jointseg.inference.slices import InputError
from jointseg.inference.terminology import structure_term
from jointseg.utils.atomic import atomic_path

logger = logging.getLogger(__name__)

ALGORITHM_NAME = "jointseg"
POSITION_TOLERANCE = 0.01  # voxels: how far a slice's position may sit from the label map's grid


class DicomSegError(InputError):
    """A DICOM-SEG that cannot be written; the message names the series folder and why."""


@dataclass(frozen=True)
class Algorithm:
    """The algorithm a DICOM-SEG names: the run that predicted it."""

    run: str  # the run's name
    identifier: str  # what identifies its weights (a digest)
    domain: str
    scheme: str = ""

    def parameters(self) -> dict[str, str]:
        found = {"run": self.run, "weights": self.identifier, "domain": self.domain}
        if self.scheme:
            found["scheme"] = self.scheme
        return found


def read_source_series(folder: str | Path) -> list:
    """The pydicom datasets (without pixel data) of the DICOM series in ``folder``, after the
    series is checked (parallel slices, none missing or duplicated)."""
    import pydicom

    folder = Path(folder)
    try:
        verify_scan(folder)
    except ScanReadError as error:
        raise DicomSegError(str(error)) from None
    datasets = []
    for name in dicom_series_files(folder):
        try:
            datasets.append(pydicom.dcmread(name, stop_before_pixels=True))
        except Exception as error:  # pydicom raises several types for a bad file
            raise DicomSegError(f"{name}: cannot read the DICOM file: {error}") from None
    return datasets


def source_slice_indices(datasets: Sequence, label_map: sitk.Image, folder: Path) -> list[int]:
    """The label map's slice index of every source dataset; refuses a series whose slices do
    not lie on the label map's grid (another series, or a resampled label map)."""
    size = label_map.GetSize()
    indices = []
    for ds in datasets:
        name = f"{folder}: instance {getattr(ds, 'SOPInstanceUID', '?')}"
        if (int(ds.Columns), int(ds.Rows)) != size[:2]:
            raise DicomSegError(
                f"{name} has {ds.Columns}x{ds.Rows} pixels, the label map's slices "
                f"{size[0]}x{size[1]}"
            )
        position = tuple(float(v) for v in ds.ImagePositionPatient)
        i, j, k = label_map.TransformPhysicalPointToContinuousIndex(position)
        whole = round(k)
        if max(abs(i), abs(j), abs(k - whole)) > POSITION_TOLERANCE or not 0 <= whole < size[2]:
            raise DicomSegError(
                f"{name} at {position} is not on a slice of the label map's grid "
                f"(continuous index {i:.3f}, {j:.3f}, {k:.3f})"
            )
        indices.append(whole)
    if sorted(indices) != list(range(size[2])):
        raise DicomSegError(
            f"{folder}: its {len(datasets)} slices do not cover the label map's {size[2]} slices "
            "once each"
        )
    return indices


def slice_spacing(datasets: Sequence, folder: Path) -> float:
    """The distance (mm) between consecutive slices of a series, along the slices' normal, from
    their Image Position (Patient); refuses a series of one slice."""
    orientation = np.asarray([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    offsets = np.sort(
        [float(normal @ [float(v) for v in ds.ImagePositionPatient]) for ds in datasets]
    )
    steps = np.diff(offsets)
    if steps.size == 0 or steps.min() <= 0:
        raise DicomSegError(
            f"{folder}: no Slice Thickness, and the slices' positions give no spacing "
            f"({len(datasets)} slice(s) along the normal)"
        )
    return round(float(np.median(steps)), 6)


def with_slice_thickness(datasets: Sequence, folder: Path) -> list:
    """``datasets``, those without a Slice Thickness (absent or empty) copied with the slice
    spacing as their thickness (:func:`slice_spacing`); the others as they are."""
    from pydicom.valuerep import DSfloat

    missing = [ds.get("SliceThickness") in (None, "") for ds in datasets]
    if not any(missing):
        return list(datasets)
    thickness = slice_spacing(datasets, folder)
    logger.info(
        "%s: no Slice Thickness; the DICOM-SEG's is the slice spacing, %g mm, from the slices' "
        "positions",
        folder,
        thickness,
    )
    completed = []
    for ds, absent in zip(datasets, missing, strict=True):
        if absent:
            ds = copy.deepcopy(ds)
            ds.SliceThickness = DSfloat(thickness, auto_format=True)
        completed.append(ds)
    return completed


def build_dicom_seg(
    datasets: Sequence,
    label_map: sitk.Image,
    structures: dict[str, int],
    algorithm: Algorithm,
    folder: Path,
    series_number: int = 1001,
):
    """The highdicom Segmentation of ``label_map`` (dataset label values) on ``datasets``."""
    import highdicom as hd

    indices = source_slice_indices(datasets, label_map, folder)
    order = np.argsort(indices)
    sources = with_slice_thickness([datasets[i] for i in order], folder)
    entries = label_entries(structures)
    lut = np.zeros(int(max([e.value for e in entries], default=0)) + 1, np.uint16)
    for number, entry in enumerate(entries, start=1):
        lut[entry.value] = number
    labels = sitk.GetArrayViewFromImage(label_map)
    unknown = sorted(set(np.unique(labels).tolist()) - {0, *(e.value for e in entries)})
    if unknown:
        raise DicomSegError(f"{folder}: the label map holds values {unknown} of no structure")
    segments = lut[labels]  # [slice, row, column], slice k = label map slice k
    identification = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME,
        family=_codes().cid7162.ArtificialIntelligence,
        version=__version__,
        parameters=algorithm.parameters(),
    )
    descriptions = [
        _segment_description(number, entry, identification)
        for number, entry in enumerate(entries, start=1)
    ]
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=segments,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=ALGORITHM_NAME,
        manufacturer_model_name=f"{ALGORITHM_NAME} {algorithm.run}"[:64],
        software_versions=__version__,
        device_serial_number=algorithm.identifier[:64] or "unknown",
        content_label="JOINTSEG",
        content_description=f"{algorithm.domain} bones"[:64],
        series_description=f"jointseg {algorithm.domain}"[:64],
        content_creator_name="jointseg^automatic",
    )


def _segment_description(number: int, entry: LabelEntry, identification):
    import highdicom as hd

    term = structure_term(entry.name)
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=entry.name[:64],
        segmented_property_category=term.category,
        segmented_property_type=term.type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=identification,
        display_color=hd.color.CIELabColor.from_rgb(*entry.color) if entry.color else None,
    )


def _codes():
    from pydicom.sr.codedict import codes

    return codes


def write_dicom_seg(
    folder: str | Path,
    label_map: sitk.Image,
    structures: dict[str, int],
    algorithm: Algorithm,
    path: str | Path,
) -> Path:
    """Write the DICOM-SEG of ``label_map`` predicted from the series in ``folder`` to ``path``
    (atomically); returns the path."""
    folder, path = Path(folder), Path(path)
    datasets = read_source_series(folder)
    try:
        seg = build_dicom_seg(datasets, label_map, structures, algorithm, folder)
    except DicomSegError:
        raise
    except (AttributeError, ValueError, TypeError) as error:  # highdicom on incomplete sources
        raise DicomSegError(f"{folder}: cannot build a DICOM-SEG on this series: {error}") from None
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp))
    logger.info("%s: DICOM-SEG with %d frames", path, int(seg.NumberOfFrames))
    return path


__all__ = [
    "ALGORITHM_NAME",
    "Algorithm",
    "DicomSegError",
    "build_dicom_seg",
    "read_source_series",
    "slice_spacing",
    "source_slice_indices",
    "with_slice_thickness",
    "write_dicom_seg",
]
