"""Where a segmentation fails within a bone: the far part of a long bone, and labels outside it.

Two measures the real-anatomy failure modes need beyond Dice (``benchmarks/failure_modes.py``):
a long bone's shaft left out when the field of view reaches far up it, and a bone's label put on
soft tissue (a fat pad called patella). Arrays are label maps in (z, y, x) order.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def far_part_sensitivity(
    predicted: np.ndarray, truth: np.ndarray, value: int, axis: int = 1, share: float = 0.5
) -> float | None:
    """The share of the reference bone's voxels in the first ``share`` of its extent along
    ``axis`` (image rows run superior to inferior in sagittal and coronal scans: the upper part)
    that are predicted as the bone; None when the reference has no such voxel."""
    bone = np.asarray(truth) == value
    other = tuple(a for a in range(bone.ndim) if a != axis)
    positions = np.flatnonzero(bone.any(axis=other))
    if positions.size == 0:
        return None
    cut = positions[0] + max(1, int((positions[-1] - positions[0] + 1) * share))
    index = [slice(None)] * bone.ndim
    index[axis] = slice(0, cut)
    far = np.zeros_like(bone)
    far[tuple(index)] = bone[tuple(index)]
    hit = far & (np.asarray(predicted) == value)
    return float(hit.sum()) / float(far.sum())


def outside_share(
    predicted: np.ndarray, truth: np.ndarray, value: int, margin: int = 2
) -> float | None:
    """Voxels predicted as ``value`` farther than ``margin`` voxels (grown in 3D, 6-connected)
    from the reference bone, relative to the reference bone's volume; None without one."""
    bone = np.asarray(truth) == value
    if not bone.any():
        return None
    grown = ndimage.binary_dilation(bone, iterations=margin) if margin > 0 else bone
    outside = (np.asarray(predicted) == value) & ~grown
    return float(outside.sum()) / float(bone.sum())
