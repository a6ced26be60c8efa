"""Augmentation built from AugmentationConfig: labels, shapes, seeds, flips, disabled."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jointseg.config import AugmentationConfig
from jointseg.data.augment import build_augmentation

NOTHING = {
    "rotate_degrees": 0.0,
    "scale_range": 0.0,
    "translate_fraction": 0.0,
    "elastic_probability": 0.0,
    "probability": 0.0,
    "flip_axes": [],
}
EVERYTHING = {
    "affine_probability": 1.0,
    "elastic_probability": 1.0,
    "probability": 1.0,
    "flip_axes": [0, 1],
    "flip_probability": 0.5,
}


def _sample(size: int = 64, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(1, size, size, generator=generator)
    label = torch.zeros(1, size, size, dtype=torch.uint8)
    label[0, 10:30, 12:40] = 1
    label[0, 35:50, 20:28] = 2
    label[0, 40:44, 44:60] = 3
    return {"image": image, "label": label}


def _run(pipeline, data: dict) -> dict:
    return pipeline({key: value.clone() for key, value in data.items()})


def test_disabled_gives_none_and_nothing_enabled_is_identity() -> None:
    assert build_augmentation(AugmentationConfig(enabled=False)) is None
    pipeline = build_augmentation(AugmentationConfig(**NOTHING))
    data = _sample()
    out = _run(pipeline, data)
    assert torch.equal(torch.as_tensor(out["image"]), data["image"])
    assert torch.equal(torch.as_tensor(out["label"]), data["label"])


def test_full_pipeline_keeps_shapes_and_label_classes() -> None:
    pipeline = build_augmentation(AugmentationConfig(**EVERYTHING), seed=1)
    data = _sample()
    changed = 0
    for _ in range(5):
        out = _run(pipeline, data)
        assert out["image"].shape == (1, 64, 64)
        assert out["label"].shape == (1, 64, 64)
        values = set(torch.unique(torch.as_tensor(out["label"])).tolist())
        assert values <= {0, 1, 2, 3}
        changed += not torch.equal(torch.as_tensor(out["label"]).to(torch.uint8), data["label"])
    assert changed == 5


def test_deterministic_with_a_seed() -> None:
    data = _sample()
    first = build_augmentation(AugmentationConfig(**EVERYTHING), seed=7)
    second = build_augmentation(AugmentationConfig(**EVERYTHING), seed=7)
    other = build_augmentation(AugmentationConfig(**EVERYTHING), seed=8)
    for _ in range(3):
        a, b, c = _run(first, data), _run(second, data), _run(other, data)
        assert torch.equal(torch.as_tensor(a["image"]), torch.as_tensor(b["image"]))
        assert torch.equal(torch.as_tensor(a["label"]), torch.as_tensor(b["label"]))
        assert not torch.equal(torch.as_tensor(a["image"]), torch.as_tensor(c["image"]))


@pytest.mark.parametrize("axes", [[0], [1], [0, 1]])
def test_flips_mirror_exactly_the_listed_axes(axes: list[int]) -> None:
    config = AugmentationConfig(**{**NOTHING, "flip_axes": axes, "flip_probability": 1.0})
    pipeline = build_augmentation(config)
    data = _sample()
    out = _run(pipeline, data)
    dims = [axis + 1 for axis in axes]  # channel-first tensors: spatial axis a is dim a + 1
    assert torch.equal(torch.as_tensor(out["image"]), data["image"].flip(dims))
    assert torch.equal(torch.as_tensor(out["label"]), data["label"].flip(dims))


def test_flip_axes_outside_the_plane_are_rejected() -> None:
    with pytest.raises(ValueError, match="flip_axes"):
        build_augmentation(AugmentationConfig(flip_axes=[2]))


def test_intensity_operations_leave_the_label_alone() -> None:
    config = AugmentationConfig(**{**NOTHING, "probability": 1.0})
    pipeline = build_augmentation(config, seed=3)
    data = _sample()
    out = _run(pipeline, data)
    assert torch.equal(torch.as_tensor(out["label"]), data["label"])
    assert not torch.allclose(torch.as_tensor(out["image"]), data["image"])
    assert torch.isfinite(torch.as_tensor(out["image"])).all()


def test_translation_is_a_fraction_of_the_slice_size() -> None:
    config = AugmentationConfig(
        **{**NOTHING, "translate_fraction": 0.25, "affine_probability": 1.0}
    )
    pipeline = build_augmentation(config, seed=0)
    shifts = []
    for size in (32, 128):
        data = {"image": torch.zeros(1, size, size), "label": torch.zeros(1, size, size)}
        data["label"][0, size // 2, size // 2] = 1
        for _ in range(20):
            out = _run(pipeline, data)
            where = np.argwhere(torch.as_tensor(out["label"])[0].numpy() > 0)
            assert len(where) == 1
            shifts.append((size, np.abs(where[0] - size // 2).max()))
    for size, shift in shifts:
        assert shift <= 0.25 * size + 1
    assert max(shift for size, shift in shifts if size == 128) > 0.25 * 32 + 1


CONTRAST = {
    **NOTHING,
    "probability": 1.0,
    "gamma_range": (1.0, 1.0),
    "noise_std": 0.0,
    "bias_field_coefficient": 0.0,
    "blur_sigma": (0.0, 0.0),
}
ROBUST = {
    **NOTHING,
    "probability": 1.0,
    "contrast_range": (0.6, 1.4),
    "histogram_shift_points": 6,
    "invert_probability": 0.5,
    "low_resolution_zoom": (0.3, 0.8),
}


def test_contrast_operations_are_left_out_by_default() -> None:
    pipeline = build_augmentation(AugmentationConfig(), seed=0)
    names = [type(t).__name__ for t in pipeline.transforms]
    assert names == ["RandAffineFractiond", "RandBiasFieldd", "RandAdjustContrastd"] + [
        "RandGaussianSmoothd",
        "RandGaussianNoised",
    ]


def test_inversion_and_contrast_factor_are_exact() -> None:
    data = _sample()
    inverted = _run(
        build_augmentation(AugmentationConfig(**CONTRAST, invert_probability=1.0)), data
    )
    assert torch.equal(torch.as_tensor(inverted["image"]), -data["image"])
    scaled = _run(build_augmentation(AugmentationConfig(**CONTRAST, contrast_range=(2, 2))), data)
    assert torch.allclose(torch.as_tensor(scaled["image"]), 2.0 * data["image"])
    for out in (inverted, scaled):
        assert torch.equal(torch.as_tensor(out["label"]), data["label"])


def test_low_resolution_simulation_removes_fine_detail() -> None:
    config = AugmentationConfig(**CONTRAST, low_resolution_zoom=(0.5, 0.5))
    rows, cols = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    checker = ((rows + cols) % 2).float()[None]  # one-pixel checkerboard: mean 0.5
    data = {"image": checker, "label": torch.zeros(1, 64, 64, dtype=torch.uint8)}
    out = torch.as_tensor(_run(build_augmentation(config), data)["image"])
    assert out.shape == (1, 64, 64)
    # 2x2 area averages of the checkerboard are 0.5 everywhere, and so is their up-sampling
    assert torch.allclose(out, torch.full_like(out, 0.5), atol=1e-5)


def test_contrast_robust_pipeline_keeps_labels_and_is_deterministic_per_seed() -> None:
    data = _sample()
    first = build_augmentation(AugmentationConfig(**ROBUST), seed=5)
    second = build_augmentation(AugmentationConfig(**ROBUST), seed=5)
    other = build_augmentation(AugmentationConfig(**ROBUST), seed=6)
    signs = set()
    for _ in range(6):
        a, b, c = _run(first, data), _run(second, data), _run(other, data)
        assert torch.equal(torch.as_tensor(a["image"]), torch.as_tensor(b["image"]))
        assert not torch.equal(torch.as_tensor(a["image"]), torch.as_tensor(c["image"]))
        for out in (a, c):
            assert torch.equal(torch.as_tensor(out["label"]), data["label"])
            assert torch.isfinite(torch.as_tensor(out["image"])).all()
        correlation = torch.corrcoef(
            torch.stack([torch.as_tensor(a["image"]).flatten(), data["image"].flatten()])
        )[0, 1]
        signs.add(bool(correlation > 0))
    assert signs == {True, False}  # inverted in some draws, not in others


@pytest.mark.parametrize(
    "field, value",
    [
        ("contrast_range", (0.0, 1.2)),
        ("contrast_range", (1.3, 1.2)),
        ("histogram_shift_points", 2),
        ("low_resolution_zoom", (0.5, 1.2)),
        ("low_resolution_zoom", (0.0, 0.5)),
        ("invert_probability", 1.5),
    ],
)
def test_contrast_options_are_validated(field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        AugmentationConfig(**{field: value})
