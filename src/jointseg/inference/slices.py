"""Slice-level helpers of inference: input checks and restoration onto the scan's grid."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import psutil
import SimpleITK as sitk

from jointseg.data.io import read_header, read_image
from jointseg.data.preprocess import InverseInfo, restore_labels, restore_probabilities
from jointseg.data.scan_checks import constant_problem, shape_problem

MAX_SCAN_VOXELS = 1 << 30  # larger scans are refused from their header, before reading
BYTES_PER_VOXEL = 5  # peak memory of a prediction per scan voxel, roughly


class InputError(ValueError):
    """A scan that cannot be segmented (2D, multi-channel, ...); the message says why."""


def check_scan(image: sitk.Image) -> None:
    """Refuse what cannot be segmented (not a 3D single-channel scan, too large, constant)."""
    _check_shape(image.GetSize(), image.GetNumberOfComponentsPerPixel())
    problem = constant_problem(image)
    if problem:
        raise InputError(problem)


def load_scan(scan: str | Path | sitk.Image) -> sitk.Image:
    """A scan to segment, checked: a file or DICOM folder is refused from its header alone
    (before its voxels take memory) when it is not 3D, single-channel and small enough."""
    if not isinstance(scan, sitk.Image):
        header = read_header(scan)
        _check_shape(header.size, header.components)
        scan = read_image(scan)
    check_scan(scan)
    return scan


def _check_shape(size: tuple[int, ...], components: int) -> None:
    problem = shape_problem(size, components)
    if problem:
        raise InputError(problem)
    if min(size) < 2:
        raise InputError(f"the scan is a single 2D slice (size {size}); a 3D scan is needed")
    voxels = math.prod(size)
    if voxels > MAX_SCAN_VOXELS:
        raise InputError(
            f"the scan has {voxels:,} voxels (size {size}), more than the {MAX_SCAN_VOXELS:,} "
            f"this program segments (about {BYTES_PER_VOXEL} bytes of memory per voxel); "
            "crop or resample it first"
        )
    needed, available = voxels * BYTES_PER_VOXEL, available_memory()
    if needed > available:
        raise InputError(
            f"the scan has {voxels:,} voxels (size {size}): segmenting it takes about "
            f"{needed / 1e9:.1f} GB of memory, and {available / 1e9:.1f} GB are available; "
            "crop or resample it, or free memory"
        )


def available_memory() -> int:
    """Bytes of memory available to a new allocation without swapping (psutil)."""
    return int(psutil.virtual_memory().available)


def restore_class_probabilities(probabilities: np.ndarray, inverse: InverseInfo) -> sitk.Image:
    """Probabilities [S, C, H, W] as a C-component float32 image on the scan's grid."""
    channels = []
    for c in range(probabilities.shape[1]):
        grid = inverse.grid_image(np.ascontiguousarray(probabilities[:, c], dtype=np.float32))
        channels.append(
            inverse.to_original(grid, sitk.sitkLinear, 1.0 if c == 0 else 0.0, sitk.sitkFloat32)
        )
    return sitk.Compose(channels)


def to_disk_values(local: sitk.Image, lut: np.ndarray) -> sitk.Image:
    """Map a label map of local classes through ``lut`` (local class -> on-disk value)."""
    dtype = np.uint8 if lut.max() < 256 else np.uint16
    if np.array_equal(lut, np.arange(len(lut))):
        return sitk.Cast(local, sitk.sitkUInt8 if dtype is np.uint8 else sitk.sitkUInt16)
    array = lut.astype(dtype)[sitk.GetArrayViewFromImage(local)]
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(local)
    return out


def restore_prediction(
    labels: np.ndarray,
    probabilities: np.ndarray | None,
    inverse: InverseInfo,
    disk_values: np.ndarray,
    return_probabilities: bool = False,
) -> tuple[sitk.Image, sitk.Image | None]:
    """A slice-grid prediction on the scan's grid: the label map in on-disk values (from the
    probabilities, class by class, when given, else the argmax slices by nearest neighbour) and,
    with ``return_probabilities``, the class probabilities as a vector image."""
    if probabilities is not None:
        local = restore_probabilities(probabilities, inverse)
    else:
        local = restore_labels(labels, inverse)
    prob_image = None
    if return_probabilities and probabilities is not None:
        prob_image = restore_class_probabilities(probabilities, inverse)
    return to_disk_values(local, disk_values), prob_image
