"""Training patches inside whole-view slices: where a patch may start, and cutting it out.

A patch of side ``p`` on an axis of ``n`` voxels starts at a corner in ``[min(0, n - p),
max(0, n - p)]``: inside the slice where the slice is larger, holding the whole slice where it
is smaller. Voxels outside the slice are filled (images: the slice's minimum, the background
after normalization; labels: 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def corner_range(size: int, patch: int) -> tuple[int, int]:
    """Lowest and highest start of a patch of side ``patch`` on an axis of ``size`` voxels."""
    return min(0, size - patch), max(0, size - patch)


def centred_corner(centre: int, size: int, patch: int) -> int:
    """The start of a patch centred on ``centre``, moved into :func:`corner_range`.

    The centre stays inside the patch whenever it lies in the slice.
    """
    low, high = corner_range(size, patch)
    return int(min(max(centre - patch // 2, low), high))


def crop_patch(
    plane: np.ndarray, corner: Sequence[int], size: Sequence[int], fill: float
) -> np.ndarray:
    """The ``size`` window of a 2D array starting at ``corner`` (may be negative or reach past
    the end), a new array; voxels outside ``plane`` take ``fill``."""
    out = np.full(tuple(size), fill, dtype=plane.dtype)
    src, dst = [], []
    for start, side, n in zip(corner, size, plane.shape, strict=True):
        lo, hi = max(0, start), min(n, start + side)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[tuple(dst)] = plane[tuple(src)]
    return out


def foreground_corner(label: np.ndarray, patch: Sequence[int]) -> tuple[int, int]:
    """The start of a patch centred on the bounding box of a 2D label map's foreground (the
    slice's centre when it has none)."""
    rows, cols = np.nonzero(label)
    if rows.size == 0:
        centres = [n // 2 for n in label.shape]
    else:
        centres = [
            (int(rows.min()) + int(rows.max())) // 2,
            (int(cols.min()) + int(cols.max())) // 2,
        ]
    return (
        centred_corner(centres[0], label.shape[0], patch[0]),
        centred_corner(centres[1], label.shape[1], patch[1]),
    )
