"""Smooth random fields and fast separable resampling for textures, bias and variations."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _resize_axis(array: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Linear resampling along one axis to ``n`` samples, end points aligned."""
    m = array.shape[axis]
    if m == n:
        return array
    if m == 1:
        return np.repeat(array, n, axis=axis)
    pos = np.linspace(0.0, m - 1.0, n)
    low = np.minimum(np.floor(pos).astype(np.intp), m - 2)
    frac = (pos - low).astype(np.float32)
    shape = [1] * array.ndim
    shape[axis] = n
    frac = frac.reshape(shape)
    a = np.take(array, low, axis=axis)
    b = np.take(array, low + 1, axis=axis)
    return a + (b - a) * frac


def upsample(coarse: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Separable linear resampling of an array to ``shape`` (float32, corners aligned).

    Element-wise only (no BLAS), so results do not depend on thread counts.
    """
    out = np.asarray(coarse, np.float32)
    # Smallest growth first keeps the intermediate arrays small.
    order = sorted(range(out.ndim), key=lambda a: shape[a] / out.shape[a])
    for axis in order:
        out = _resize_axis(out, shape[axis], axis)
    return np.ascontiguousarray(out)


def smooth_noise(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    cells: tuple[float, float, float],
) -> np.ndarray:
    """Zero-mean, unit-variance smooth noise of ``shape`` with a correlation length of about
    ``cells`` voxels per axis."""
    coarse_shape = tuple(
        max(2, int(np.ceil(n / c)) + 1) for n, c in zip(shape, cells, strict=False)
    )
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 0.7, mode="wrap")
    coarse = (coarse - coarse.mean()) / (coarse.std() + 1e-12)
    return upsample(coarse, shape)


def smoothstep(x: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, smooth in between."""
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)
