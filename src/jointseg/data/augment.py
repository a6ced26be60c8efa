"""2D training augmentation from an :class:`AugmentationConfig`, built from MONAI transforms.

The pipeline works on dictionaries with ``image`` (float, [k, H, W]: the slice and its
context slices) and ``label`` (class indices, [1, H, W]); spatial transforms move both with one
draw for every channel (bilinear image, nearest label, border padding), intensity transforms
touch the image only (bias field and gamma alike on every channel, noise drawn per voxel).
Order: flips, affine, elastic, bias field, gamma, histogram shift (a random non-linear intensity
map), contrast (a random factor), inversion, blur, low-resolution simulation (area
down-sampling, bilinear up-sampling), noise. An operation whose magnitude or probability is
zero (or whose range is the identity) is left out.

Randomness comes from the transforms' own states (``Compose.set_random_state``), seeded by
``build_augmentation(cfg, seed)``; DataLoader workers reseed their copy through
:func:`jointseg.data.dataset.seed_worker`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np
from monai.transforms import (
    Compose,
    MapTransform,
    Rand2DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandHistogramShiftd,
    RandLambdad,
    Randomizable,
    RandScaleIntensityd,
    RandSimulateLowResolutiond,
)

from jointseg.config import AugmentationConfig

KEYS = ("image", "label")
SPATIAL_MODES = ("bilinear", "nearest")
PADDING = "border"
ELASTIC_SPACING = (16.0, 16.0)  # control-point spacing of the elastic grid, in pixels
ELASTIC_MAGNITUDE = (1.0, 3.0)  # displacement scale of the control points, in pixels


class RandAffineFractiond(Randomizable, MapTransform):
    """:class:`monai.transforms.RandAffined` with the translation given as a fraction of size.

    MONAI's translation range is in pixels; slices of any size get the same relative shift. Each
    slice size gets its own ``RandAffined`` (``translate_range`` = fraction x size), seeded with
    the seed (or state) this transform was given.
    """

    def __init__(self, keys: tuple[str, ...], translate_fraction: float, **kwargs: Any) -> None:
        MapTransform.__init__(self, keys)
        self.translate_fraction = translate_fraction
        self.kwargs = kwargs
        self.seed: int | None = None
        self.state: np.random.RandomState | None = None
        self.seeded = False
        self.by_size: dict[tuple[int, ...], RandAffined] = {}

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandAffineFractiond:
        super().set_random_state(seed, state)
        self.seed, self.state, self.seeded = seed, state, True
        self.by_size.clear()
        return self

    def randomize(self, data: Any = None) -> None:
        """The draws happen in the ``RandAffined`` of the slice size."""

    def transform_for(self, size: tuple[int, ...]) -> RandAffined:
        """The ``RandAffined`` of slices of ``size`` (H, W), built on first use."""
        if size not in self.by_size:
            translate = tuple(self.translate_fraction * extent for extent in size)
            transform = RandAffined(self.keys, translate_range=translate, **self.kwargs)
            if self.seeded:
                transform.set_random_state(self.seed, self.state)
            self.by_size[size] = transform
        return self.by_size[size]

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict:
        size = tuple(data[self.first_key(dict(data))].shape[1:])
        return self.transform_for(size)(data, lazy)


def invert(image: Any) -> Any:
    """The normalized image's contrast inverted (bright becomes dark; zero mean is kept)."""
    return -image


def build_augmentation(cfg: AugmentationConfig, seed: int = 0) -> Callable[[dict], dict] | None:
    """The augmentation pipeline of ``cfg``, seeded; ``None`` when augmentation is disabled."""
    if not cfg.enabled:
        return None
    bad_axes = [axis for axis in cfg.flip_axes if axis not in (0, 1)]
    if bad_axes:
        raise ValueError(f"flip_axes must be in-plane axes 0 (rows) or 1 (cols), got {bad_axes}")
    transforms: list[Any] = [*_spatial(cfg), *_intensity(cfg)]
    pipeline = Compose(transforms)
    pipeline.set_random_state(seed=seed % 2**32)
    return pipeline


def _spatial(cfg: AugmentationConfig) -> list[Any]:
    transforms: list[Any] = []
    if cfg.flip_probability > 0:
        for axis in sorted(set(cfg.flip_axes)):
            transforms.append(RandFlipd(KEYS, prob=cfg.flip_probability, spatial_axis=axis))
    has_affine = cfg.rotate_degrees > 0 or cfg.scale_range > 0 or cfg.translate_fraction > 0
    if has_affine and cfg.affine_probability > 0:
        transforms.append(
            RandAffineFractiond(
                KEYS,
                translate_fraction=cfg.translate_fraction,
                prob=cfg.affine_probability,
                rotate_range=math.radians(cfg.rotate_degrees),
                scale_range=(cfg.scale_range, cfg.scale_range),
                mode=SPATIAL_MODES,
                padding_mode=PADDING,
            )
        )
    if cfg.elastic_probability > 0:
        transforms.append(
            Rand2DElasticd(
                KEYS,
                spacing=ELASTIC_SPACING,
                magnitude_range=ELASTIC_MAGNITUDE,
                prob=cfg.elastic_probability,
                mode=SPATIAL_MODES,
                padding_mode=PADDING,
            )
        )
    return transforms


def _intensity(cfg: AugmentationConfig) -> list[Any]:
    p = cfg.probability
    if p <= 0:
        return []
    transforms: list[Any] = []
    if cfg.bias_field_coefficient > 0:
        c = cfg.bias_field_coefficient
        transforms.append(RandBiasFieldd("image", coeff_range=(-c, c), prob=p))
    if tuple(cfg.gamma_range) != (1.0, 1.0):
        transforms.append(
            RandAdjustContrastd("image", gamma=tuple(cfg.gamma_range), retain_stats=True, prob=p)
        )
    if cfg.histogram_shift_points:
        points = cfg.histogram_shift_points
        transforms.append(RandHistogramShiftd("image", num_control_points=points, prob=p))
    if tuple(cfg.contrast_range) != (1.0, 1.0):
        factors = (cfg.contrast_range[0] - 1.0, cfg.contrast_range[1] - 1.0)
        transforms.append(RandScaleIntensityd("image", factors=factors, prob=p))
    if cfg.invert_probability > 0:
        transforms.append(RandLambdad("image", func=invert, prob=cfg.invert_probability))
    if max(cfg.blur_sigma) > 0:
        sigma = tuple(cfg.blur_sigma)
        transforms.append(RandGaussianSmoothd("image", sigma_x=sigma, sigma_y=sigma, prob=p))
    if tuple(cfg.low_resolution_zoom) != (1.0, 1.0):
        transforms.append(
            RandSimulateLowResolutiond(
                "image",
                prob=p,
                downsample_mode="area",
                upsample_mode="bilinear",
                zoom_range=tuple(cfg.low_resolution_zoom),
            )
        )
    if cfg.noise_std > 0:
        transforms.append(RandGaussianNoised("image", std=cfg.noise_std, prob=p))
    return transforms
