"""Volumes that show no joint, for checking that joint recognition refuses them.

- :func:`noise_volume`: Gaussian noise;
- :func:`brain_like`: an ellipsoid head: bright scalp fat, a dark skull, grey matter around
  brighter white matter, dark ventricles;
- :func:`abdomen_like`: a large body ellipse (axial: in-plane ellipse, through every slice) with
  a fat rim, muscle, organ-like blobs (liver, kidneys, bowel) and no bone.

Each is an image of ``shape`` (z, y, x) at ``spacing`` (x, y, z mm, SimpleITK order), intensities
0-1000 with mild Gaussian noise, deterministic given ``seed``.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def _image(array: np.ndarray, spacing: tuple[float, float, float]) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(spacing)
    return image


def _radius(shape: tuple[int, int, int], spacing, centre_mm, radii_mm) -> np.ndarray:
    """Normalized ellipsoid radius (1 on the surface) of every voxel (z, y, x arrays)."""
    axes = [(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing[::-1], strict=True)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    cz, cy, cx = centre_mm
    rz, ry, rx = radii_mm
    return np.sqrt(((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2)


def _extent(shape, spacing) -> np.ndarray:
    return np.asarray(shape, float) * np.asarray(spacing[::-1], float)


def noise_volume(shape, spacing, seed: int = 0) -> sitk.Image:
    """Gaussian noise (mean 300, sd 100)."""
    return _image(np.random.default_rng(seed).normal(300.0, 100.0, shape), spacing)


def brain_like(shape, spacing, seed: int = 0) -> sitk.Image:
    """An ellipsoid head filling most of the field: scalp, skull, grey and white matter and
    two ventricles (T1-like contrast)."""
    rng = np.random.default_rng(seed)
    size = _extent(shape, spacing)
    centre = size / 2
    radii = size * 0.45 * rng.uniform(0.9, 1.0, 3)
    r = _radius(shape, spacing, centre, radii)
    image = np.zeros(shape)
    image[r <= 1.0] = 900.0  # scalp fat
    image[r <= 0.93] = 80.0  # skull
    image[r <= 0.86] = 450.0  # grey matter
    image[r <= 0.72] = 700.0  # white matter
    for side in (-1, 1):
        offset = centre + np.array([0.0, 0.0, side * 0.12 * radii[2]])
        ventricle = _radius(shape, spacing, offset, radii * np.array([0.3, 0.35, 0.08]))
        image[ventricle <= 1.0] = 150.0
    return _image(image + rng.normal(0.0, 25.0, shape), spacing)


def abdomen_like(shape, spacing, seed: int = 0) -> sitk.Image:
    """A body ellipse through every slice: fat rim, muscle, liver, two kidneys, bowel loops;
    no bone."""
    rng = np.random.default_rng(seed)
    size = _extent(shape, spacing)
    centre = size / 2
    long = np.array([1e6, 1.0, 1.0])  # the body runs through every slice
    body = _radius(shape, spacing, centre, long * np.array([1.0, size[1] * 0.4, size[2] * 0.47]))
    image = np.zeros(shape)
    image[body <= 1.0] = 850.0  # subcutaneous fat
    image[body <= 0.88] = 350.0  # muscle and soft tissue
    organs = [  # (centre offset y, x as a share of the field, radii share, intensity)
        ((-0.05, -0.18), (0.5, 0.18, 0.16), 500.0),  # liver
        ((0.15, -0.22), (0.3, 0.07, 0.05), 600.0),  # kidneys
        ((0.15, 0.22), (0.3, 0.07, 0.05), 600.0),
    ]
    organs += [
        ((rng.uniform(-0.2, 0.1), rng.uniform(0.0, 0.25)), (0.25, 0.05, 0.05), 250.0)
        for _ in range(4)  # bowel loops
    ]
    for (dy, dx), (rz, ry, rx), value in organs:
        where = centre + np.array([0.0, dy * size[1], dx * size[2]])
        blob = _radius(shape, spacing, where, np.array([rz, ry, rx]) * size)
        image[blob <= 1.0] = value
    return _image(image + rng.normal(0.0, 25.0, shape), spacing)
