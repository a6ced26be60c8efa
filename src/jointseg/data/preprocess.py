"""Volume -> canonical 2D slices, and the exact inverse (see docs/preprocessing.md).

The forward map is a single resampling of the scan onto a *slice grid*: a 3D grid whose index
axes are the scan's own voxel axes, reordered to the canonical LPS orientation (as
``sitk.DICOMOrient(image, "LPS")`` would), with the slice axis first in numpy order, the in-plane
spacing set to ``target_spacing`` and the in-plane extent the scan's whole field of view.
Because the slice grid only re-indexes the scan's voxels (no rotation), the inverse is one
resampling back onto the scan's own grid, and it is exact wherever no spacing change is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import SimpleITK as sitk

from jointseg.config import PreprocessingConfig
from jointseg.data.io import geometry_mismatches
from jointseg.data.scan_checks import NO_FINITE_INTENSITY, image_shape_problem

ORIENTATION = "LPS"
"""Canonical orientation (DICOM convention): index axes x, y, z run to Left, Posterior, Superior."""

_SPACING_RTOL = 1e-5  # in-plane spacings this close to the target are kept as they are
_AXIS_TIE_RTOL = 1e-3  # 'auto' slice axis: spacings this close count as equal (lowest axis wins)
_STATS_SAMPLE = 1 << 21  # voxels sampled for the intensity percentiles and moments


@dataclass
class InverseInfo:
    """Both grids of a preprocessed case: the scan's own and the slice grid (SimpleITK order).

    ``grid_*`` describe the slice stack as an image of size (W, H, S); ``original_*`` the scan.
    ``slice_axis`` is the canonical numpy axis (z=0, y=1, x=2) the slices were cut along.
    """

    original_size: tuple[int, int, int]
    original_spacing: tuple[float, float, float]
    original_origin: tuple[float, float, float]
    original_direction: tuple[float, ...]
    grid_size: tuple[int, int, int]
    grid_spacing: tuple[float, float, float]
    grid_origin: tuple[float, float, float]
    grid_direction: tuple[float, ...]
    slice_axis: int
    resampled: bool
    orientation: str = ORIENTATION

    @property
    def slice_shape(self) -> tuple[int, int, int]:
        """Shape [S, H, W] of the slice stack."""
        w, h, s = self.grid_size
        return (s, h, w)

    @property
    def slice_spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) of the slice stack along S, H and W."""
        w, h, s = self.grid_spacing
        return (s, h, w)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable dict (floats round-trip exactly through JSON)."""
        out: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            out[item.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InverseInfo:
        kwargs: dict[str, Any] = {}
        for item in fields(cls):
            if item.name not in data:
                continue
            value = data[item.name]
            kwargs[item.name] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)

    def grid_image(self, array: np.ndarray) -> sitk.Image:
        """Wrap an [S, H, W] array as an image placed on the slice grid."""
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(self.grid_spacing)
        image.SetOrigin(self.grid_origin)
        image.SetDirection(self.grid_direction)
        return image

    def to_original(
        self, image: sitk.Image, interpolator: int, default: float, pixel_type: int
    ) -> sitk.Image:
        """Resample a slice-grid image onto the scan's own grid."""
        return sitk.Resample(
            image,
            list(self.original_size),
            sitk.Transform(),
            interpolator,
            list(self.original_origin),
            list(self.original_spacing),
            list(self.original_direction),
            default,
            pixel_type,
        )


@dataclass
class PreprocessedCase:
    image: np.ndarray  # [S, H, W] float32, normalized
    label: np.ndarray | None  # [S, H, W] uint8, on-disk label values
    inverse: InverseInfo


def canonical_axes(direction: tuple[float, ...]) -> tuple[list[int], list[bool]]:
    """Permutation and flips that bring a scan to ``ORIENTATION``.

    Canonical SimpleITK axis ``c`` is the scan's axis ``perm[c]``, reversed when ``flips[c]``.
    """
    probe = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    probe.SetDirection(direction)
    orient = sitk.DICOMOrientImageFilter()
    orient.SetDesiredCoordinateOrientation(ORIENTATION)
    orient.Execute(probe)
    return list(orient.GetPermuteOrder()), [bool(f) for f in orient.GetFlipAxes()]


def resolve_slice_axis(canonical_spacing: tuple[float, ...], setting: str | int) -> int:
    """Numpy axis (z=0, y=1, x=2) of the canonical volume to slice along.

    ``auto`` takes the largest spacing (the acquisition's slice direction); ties go to the lowest
    numpy axis, so isotropic scans are cut axially.
    """
    if setting != "auto":
        return int(setting)
    numpy_spacing = list(reversed(canonical_spacing))
    top = max(numpy_spacing)
    return next(i for i, s in enumerate(numpy_spacing) if s >= top * (1 - _AXIS_TIE_RTOL))


def slice_stack_shape(
    size: tuple[int, ...],
    spacing: tuple[float, ...],
    direction: tuple[float, ...],
    cfg: PreprocessingConfig,
) -> tuple[int, int, int]:
    """Shape [S, H, W] that :func:`preprocess_case` gives a scan of this geometry."""
    perm, _ = canonical_axes(direction)
    c_size = [int(size[p]) for p in perm]
    c_spacing = [float(spacing[p]) for p in perm]
    slice_axis = 2 - resolve_slice_axis(tuple(c_spacing), cfg.slice_axis)
    w_axis, h_axis = sorted({0, 1, 2} - {slice_axis})
    height, width = (
        _in_plane(c_size[a], c_spacing[a], cfg.target_spacing)[1] for a in (h_axis, w_axis)
    )
    return (c_size[slice_axis], height, width)


def _in_plane(size: int, spacing: float, target: float | None) -> tuple[float, int, bool]:
    """(spacing, voxel count, resampled) of one in-plane axis of the slice grid: the whole
    field of view at the target spacing (spacings within a relative 1e-5 are kept)."""
    if target is None or abs(target - spacing) <= _SPACING_RTOL * spacing:
        return spacing, size, False
    return float(target), max(1, round(size * spacing / target)), True


def intensity_statistics(
    image: sitk.Image, percentiles: tuple[float, float]
) -> tuple[float, float, float, float]:
    """Clip bounds (percentiles) and mean and std of the clipped, finite intensities.

    Large volumes are sampled with a fixed stride co-prime to the row and plane lengths.
    """
    flat = sitk.GetArrayViewFromImage(image).reshape(-1)
    step = max(1, math.ceil(flat.size / _STATS_SAMPLE))
    plane = image.GetSize()[0] * image.GetSize()[1]
    while step > 1 and math.gcd(step, plane) != 1:
        step += 1
    sample = np.array(flat[::step], dtype=np.float64)  # a copy: clipped in place below
    sample = sample[np.isfinite(sample)]  # NaN or infinite voxels (a scanner's or a converter's)
    if sample.size == 0:
        raise ValueError(NO_FINITE_INTENSITY)
    low, high = (float(v) for v in np.percentile(sample, percentiles))
    np.clip(sample, low, high, out=sample)
    mean, std = float(sample.mean()), float(sample.std())
    return low, high, mean, std if std > 1e-8 * max(1.0, abs(mean)) else 1.0


def _slice_grid(image: sitk.Image, cfg: PreprocessingConfig) -> InverseInfo:
    size = np.asarray(image.GetSize())
    spacing = np.asarray(image.GetSpacing())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    perm, flips = canonical_axes(image.GetDirection())
    c_size, c_spacing = size[perm], spacing[perm]
    c_direction = direction[:, perm] * np.where(flips, -1.0, 1.0)
    axis = resolve_slice_axis(tuple(c_spacing), cfg.slice_axis)
    slice_axis = 2 - axis  # SimpleITK order
    in_plane = sorted({0, 1, 2} - {slice_axis})  # W, then H

    start = np.zeros(3)  # canonical continuous index of the slice grid's first voxel
    grid_spacing, grid_size, resampled = [], [], False
    for a in in_plane:
        step, count, changed = _in_plane(int(c_size[a]), float(c_spacing[a]), cfg.target_spacing)
        ratio = step / c_spacing[a]  # canonical voxels per slice-grid voxel
        start[a] = 0.5 * ratio - 0.5  # the first voxel's edge on the scan's first edge
        grid_spacing.append(step)
        grid_size.append(count)
        resampled = resampled or changed
    grid_spacing.append(float(c_spacing[slice_axis]))

    original_start = np.where(flips, c_size - 1 - start, start)
    index = np.empty(3)
    index[perm] = original_start
    axes = [*in_plane, slice_axis]
    return InverseInfo(
        original_size=tuple(int(n) for n in size),
        original_spacing=tuple(float(s) for s in spacing),
        original_origin=tuple(float(o) for o in image.GetOrigin()),
        original_direction=tuple(float(d) for d in image.GetDirection()),
        grid_size=(grid_size[0], grid_size[1], int(c_size[slice_axis])),
        grid_spacing=tuple(grid_spacing),
        grid_origin=image.TransformContinuousIndexToPhysicalPoint(index.tolist()),
        grid_direction=tuple(float(d) for d in c_direction[:, axes].ravel()),
        slice_axis=axis,
        resampled=resampled,
    )


def _to_grid(
    image: sitk.Image, info: InverseInfo, interpolator: int, default: float, pixel_type: int
) -> np.ndarray:
    out = sitk.Resample(
        image,
        list(info.grid_size),
        sitk.Transform(),
        interpolator,
        list(info.grid_origin),
        list(info.grid_spacing),
        list(info.grid_direction),
        default,
        pixel_type,
    )
    return sitk.GetArrayFromImage(out)


def _check_scan(image: sitk.Image, label: sitk.Image | None) -> None:
    problem = image_shape_problem(image)
    if problem:
        raise ValueError(problem)
    if label is None:
        return
    problems = geometry_mismatches(image, label)
    if problems:
        raise ValueError("label and image grids differ: " + "; ".join(problems))
    extrema = sitk.MinimumMaximumImageFilter()
    extrema.Execute(label)
    low, high = extrema.GetMinimum(), extrema.GetMaximum()
    if low < 0 or high > 255:
        raise ValueError(f"label values must lie in 0..255, got {low:g}..{high:g}")


def preprocess_case(
    image: sitk.Image, label: sitk.Image | None, cfg: PreprocessingConfig
) -> PreprocessedCase:
    """Cut a scan (and its label map) into normalized slices of its whole field of view.

    Images are resampled linearly, labels by nearest neighbour; every slice is kept. Neither
    input is copied: the only large arrays made are the [S, H, W] outputs.
    """
    _check_scan(image, label)
    info = _slice_grid(image, cfg)
    low, high, mean, std = intensity_statistics(image, cfg.clip_percentiles)
    slices = _to_grid(image, info, sitk.sitkLinear, low, sitk.sitkFloat32)
    np.nan_to_num(slices, copy=False, nan=low, posinf=high, neginf=low)
    np.clip(slices, low, high, out=slices)
    slices -= mean
    slices /= std
    label_slices = None
    if label is not None:
        label_slices = _to_grid(label, info, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return PreprocessedCase(slices.astype(np.float32, copy=False), label_slices, info)


def _check_slices(array: np.ndarray, inverse: InverseInfo, what: str, channels: bool) -> None:
    expected = inverse.slice_shape
    shape = (array.shape[0], *array.shape[2:]) if channels else array.shape
    if array.ndim != (4 if channels else 3) or tuple(shape) != expected:
        layout = "[S, C, H, W]" if channels else "[S, H, W]"
        raise ValueError(f"{what}: expected {layout} with S, H, W = {expected}, got {array.shape}")


def _label_dtype(count: int) -> type:
    return np.uint8 if count <= 256 else np.uint16 if count <= 65536 else np.int32


def restore_labels(slices: np.ndarray, inverse: InverseInfo) -> sitk.Image:
    """Map [S, H, W] integer label slices back onto the scan's own grid (nearest neighbour).

    The result has exactly the scan's size, spacing, origin and direction; voxels outside the
    slice grid are background (0). Values up to 255 give a uint8 image.
    """
    slices = np.asarray(slices)
    _check_slices(slices, inverse, "label slices", channels=False)
    if slices.dtype.kind not in "biu":
        raise ValueError(f"label slices must be integers, got {slices.dtype}")
    if slices.size and slices.min() < 0:
        raise ValueError("label slices must be non-negative")
    top = int(slices.max()) + 1 if slices.size else 1
    grid = inverse.grid_image(slices.astype(_label_dtype(top), copy=False))
    return inverse.to_original(grid, sitk.sitkNearestNeighbor, 0, grid.GetPixelID())


def restore_probabilities(probabilities: np.ndarray, inverse: InverseInfo) -> sitk.Image:
    """Map [S, C, H, W] class probabilities onto the scan's grid and take the argmax there.

    Each class is resampled linearly on its own (one class in memory at a time), which gives
    smoother boundaries than nearest-neighbour label resampling. Outside the slice grid
    the background has probability one. Ties go to the lower class.
    """
    _check_slices(np.asarray(probabilities), inverse, "probabilities", channels=True)
    count = probabilities.shape[1]
    if count < 1:
        raise ValueError("probabilities need at least one class")
    best: np.ndarray | None = None
    labels = mask = None
    for c in range(count):
        grid = inverse.grid_image(np.ascontiguousarray(probabilities[:, c], dtype=np.float32))
        restored = inverse.to_original(
            grid, sitk.sitkLinear, 1.0 if c == 0 else 0.0, sitk.sitkFloat32
        )
        values = sitk.GetArrayViewFromImage(restored)
        if best is None:
            best = values.copy()
            labels = np.zeros(best.shape, dtype=_label_dtype(count))
            mask = np.empty(best.shape, dtype=bool)
            continue
        np.greater(values, best, out=mask)
        np.copyto(best, values, where=mask)
        np.copyto(labels, np.asarray(c, dtype=labels.dtype), where=mask)
    out = sitk.GetImageFromArray(labels)
    out.SetSpacing(inverse.original_spacing)
    out.SetOrigin(inverse.original_origin)
    out.SetDirection(inverse.original_direction)
    return out
