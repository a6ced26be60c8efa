"""Slice-level helpers of inference: input checks, grids, flips, head outputs, restoration."""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk
import torch

from jointseg.config import PreprocessingConfig
from jointseg.data.preprocess import InverseInfo, canonical_axes, resolve_slice_axis

PATCH_MULTIPLE = 32  # the network's input sides must be multiples of this
MAX_IN_PLANE = 1024  # a full-view grid wider than this falls back to the training patch


class InputError(ValueError):
    """A scan that cannot be segmented (2D, multi-channel, ...); the message says why."""


def check_scan(image: sitk.Image) -> None:
    """Refuse what cannot be a 3D single-channel scan, with the reason."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"the scan has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "a single-channel scan is needed"
        )
    if image.GetDimension() != 3:
        raise InputError(
            f"the scan is {image.GetDimension()}D (size {image.GetSize()}); a 3D scan is needed"
        )
    if min(image.GetSize()) < 2:
        raise InputError(
            f"the scan is a single 2D slice (size {image.GetSize()}); a 3D scan is needed"
        )


def torch_device(name: str) -> torch.device:
    """``name`` as a torch device, refusing CUDA where there is none."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {name!r}: {error}") from None


def full_view_preprocessing(cfg: PreprocessingConfig, image: sitk.Image) -> PreprocessingConfig:
    """``cfg`` with a patch covering the scan's whole in-plane field of view.

    The network is fully convolutional, so the patch grows to the field of view at the target
    spacing, rounded up to a multiple of 32 (never smaller than the training patch). Beyond
    :data:`MAX_IN_PLANE` the training patch is kept.
    """
    size = np.asarray(image.GetSize())
    spacing = np.asarray(image.GetSpacing())
    perm, _ = canonical_axes(image.GetDirection())
    c_size, c_spacing = size[perm], spacing[perm]
    slice_axis = 2 - resolve_slice_axis(tuple(float(s) for s in c_spacing), cfg.slice_axis)
    w_axis, h_axis = sorted({0, 1, 2} - {slice_axis})
    target = cfg.target_spacing

    def extent(axis: int, trained: int) -> int:
        n = c_size[axis] * c_spacing[axis] / target if target else c_size[axis]
        rounded = PATCH_MULTIPLE * math.ceil(round(float(n), 3) / PATCH_MULTIPLE)
        return max(trained, rounded)

    patch = (extent(h_axis, cfg.patch_size[0]), extent(w_axis, cfg.patch_size[1]))
    if max(patch) > MAX_IN_PLANE or patch == tuple(cfg.patch_size):
        return cfg
    return cfg.model_copy(update={"patch_size": patch})


def flip_sets(flip_axes: list[int] | tuple[int, ...]) -> list[tuple[int, ...]]:
    """Tensor dims to flip for TTA: every combination of the in-plane axes (0 = rows, 1 = cols)
    given, or of both when none are; the identity first."""
    dims = [2 + a for a in sorted(set(flip_axes)) or [0, 1]]
    flips: list[tuple[int, ...]] = [()]
    for d in dims:
        flips += [(*f, d) for f in flips]
    return flips


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
