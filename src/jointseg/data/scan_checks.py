"""What makes a scan unusable, said once: each check returns the problem as a sentence, or None.

The paths that refuse a scan (reading in :mod:`jointseg.data.io`, preprocessing, prediction's
``load_scan``) raise their own error with the sentence; ``jointseg check``
(:mod:`jointseg.data.checks`) lists it beside the file's name.
"""

from __future__ import annotations

from collections.abc import Sequence

import SimpleITK as sitk

NO_FINITE_INTENSITY = "the scan holds no finite intensity (every voxel NaN or infinite)"


def components_problem(components: int) -> str | None:
    """A scan with more than one component (channel) per voxel."""
    if components != 1:
        return f"has {components} components per voxel; a single-channel scan is expected"
    return None


def dimension_problem(size: Sequence[int]) -> str | None:
    """A scan that is not a 3D volume (a 2D image, a 4D series)."""
    if len(size) != 3:
        return f"the scan is {len(size)}D (size {tuple(size)}); a 3D scan is needed"
    return None


def shape_problem(size: Sequence[int], components: int) -> str | None:
    """A scan that is not a 3D single-channel volume (from its header or its image)."""
    return components_problem(components) or dimension_problem(size)


def image_shape_problem(image: sitk.Image) -> str | None:
    """:func:`shape_problem` of an image in memory."""
    return shape_problem(image.GetSize(), image.GetNumberOfComponentsPerPixel())


def nonfinite_problem(count: int, voxels: int) -> str | None:
    """``count`` NaN or infinite voxels among ``voxels``."""
    if count and count >= voxels:
        return NO_FINITE_INTENSITY
    if count:
        return f"{count} NaN or infinite intensities"
    return None


def constant_problem(image: sitk.Image) -> str | None:
    """A scan whose voxels all have one intensity: nothing to segment."""
    extrema = sitk.MinimumMaximumImageFilter()
    extrema.Execute(image)
    if extrema.GetMinimum() == extrema.GetMaximum():
        return (
            f"every voxel has the same intensity ({extrema.GetMinimum():g}); "
            "there is nothing to segment"
        )
    return None
