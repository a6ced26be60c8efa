"""Training patches in whole-view slices: structure oversampling rates, edges, determinism."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from jointseg.data.cache import CaseRows, class_locations
from jointseg.data.dataset import SliceDataset
from jointseg.data.patches import centred_corner, corner_range, crop_patch, foreground_corner
from jointseg.data.sampling import UNIFORM, MultiDomainBatchSampler

PATCH = (32, 32)


@dataclass
class PatchCache:
    """A slice cache of whole-view cases (the attributes training uses)."""

    images: CaseRows
    labels: CaseRows
    case_slices: dict[str, tuple[int, int]]
    foreground: np.ndarray
    locations: np.ndarray

    def rows(self, case_ids: list[str]) -> np.ndarray:
        return np.concatenate([np.arange(*self.case_slices[c]) for c in case_ids])


def make_cache(cases: list[np.ndarray]) -> PatchCache:
    """Cache of label stacks [S, H, W] (one per case); images are the labels plus noise."""
    rng = np.random.default_rng(0)
    images = [(c + rng.normal(0, 0.1, c.shape)).astype(np.float32) for c in cases]
    labels = [c.astype(np.uint8) for c in cases]
    starts = np.cumsum([0] + [len(c) for c in cases])
    classes = int(max(c.max() for c in cases)) + 1
    locations = np.concatenate(
        [
            class_locations(c, int(s), f"c{i}", classes)
            for i, (c, s) in enumerate(zip(labels, starts[:-1], strict=True))
        ]
    )
    return PatchCache(
        images=CaseRows(images),
        labels=CaseRows(labels),
        case_slices={f"c{i}": (int(starts[i]), int(starts[i + 1])) for i in range(len(cases))},
        foreground=np.concatenate([c.reshape(len(c), -1).any(axis=1) for c in labels]),
        locations=locations,
    )


def knee_like(shape: tuple[int, int, int] = (10, 60, 150)) -> np.ndarray:
    """A large bone (1), a small one (2) and a thin one at the right edge of the view (3)."""
    labels = np.zeros(shape, dtype=np.uint8)
    labels[:, 10:50, 20:100] = 1  # 3200 voxels a slice
    labels[2:8, 20:26, 110:116] = 2  # 36 voxels in 6 slices
    labels[4:6, 25:40, 147:150] = 3  # 45 voxels in 2 slices, touching the last column
    return labels


def sampler(cache: PatchCache, share: float, iterations: int = 400, **kwargs):
    return MultiDomainBatchSampler.from_caches(
        [cache],
        [list(cache.case_slices)],
        batch_size=12,
        iterations=iterations,
        min_per_domain=1,
        patch_size=PATCH,
        foreground_oversample=share,
        **kwargs,
    )


@pytest.mark.parametrize("share", [0.33, 0.6])
def test_each_structure_is_centred_on_at_its_rate(share: float) -> None:
    cache = make_cache([knee_like(), knee_like((6, 48, 140))])
    draws = [draw for batch in sampler(cache, share) for draw in batch]
    n = len(draws)
    structures = np.array([d[4] for d in draws])
    rate = share / 3  # three structures, however different their sizes
    tolerance = 4 * np.sqrt(rate * (1 - rate) / n)  # four binomial standard deviations
    for value in (1, 2, 3):
        assert abs(np.mean(structures == value) - rate) < tolerance
    assert abs(np.mean(structures == UNIFORM) - (1 - share)) < 4 * np.sqrt(share * (1 - share) / n)


def test_centred_patches_hold_their_structure_and_stay_in_the_slice() -> None:
    cache = make_cache([knee_like()])
    dataset = SliceDataset([cache], patch_size=PATCH)
    seen = {1: 0, 2: 0, 3: 0}
    for batch in sampler(cache, 0.5, iterations=100):
        for draw in batch:
            _, row, top, left, structure = draw
            assert 0 <= top <= 60 - 32 and 0 <= left <= 150 - 32  # inside: the slice is larger
            item = dataset[draw]
            assert item["image"].shape == (1, *PATCH) and item["label"].shape == PATCH
            window = cache.labels[row][top : top + 32, left : left + 32]
            assert np.array_equal(item["label"].numpy(), window)
            if structure != UNIFORM:
                assert (window == structure).any()
                seen[structure] += 1
    assert min(seen.values()) > 0


def test_a_structure_at_the_edge_of_the_view_appears_in_training_patches() -> None:
    cache = make_cache([knee_like()])
    dataset = SliceDataset([cache], patch_size=PATCH)
    draws = [draw for batch in sampler(cache, 0.33) for draw in batch]
    holding = np.mean([(dataset[d]["label"].numpy() == 3).any() for d in draws])
    assert holding > 0.33 / 3 * 0.8  # at least its centred share, give or take the noise
    # a single body-centred crop of the patch's size would never have shown it
    centre = crop_patch(knee_like()[4], foreground_corner(knee_like()[4] == 1, PATCH), PATCH, 0)
    assert not (centre == 3).any()


def test_uniform_draws_cover_the_whole_slice() -> None:
    cache = make_cache([knee_like()])
    draws = [d for batch in sampler(cache, 0.0) for d in batch]
    lefts = np.array([d[3] for d in draws])
    assert lefts.min() == 0 and lefts.max() == 150 - 32
    assert all(d[4] == UNIFORM for d in draws)


def test_slices_smaller_than_the_patch_are_padded() -> None:
    small = np.zeros((4, 20, 24), dtype=np.uint8)
    small[:, 5:10, 0:4] = 1
    cache = make_cache([small])
    dataset = SliceDataset([cache], patch_size=PATCH)
    for batch in sampler(cache, 0.5, iterations=20):
        for draw in batch:
            _, row, top, left, _ = draw
            assert -12 <= top <= 0 and -8 <= left <= 0  # the whole slice is in the patch
            item = dataset[draw]
            assert item["label"].sum() == (small[0] > 0).sum()
            image = item["image"][0].numpy()
            assert np.isclose(image[0, 0] if top < 0 else image[-1, -1], cache.images[row].min())


def test_patch_draws_are_deterministic_per_seed_and_epoch() -> None:
    cache = make_cache([knee_like()])
    first, again = sampler(cache, 0.33, iterations=5), sampler(cache, 0.33, iterations=5)
    assert list(first) == list(again)
    again.set_epoch(1)
    assert list(first) != list(again)
    assert list(sampler(cache, 0.33, iterations=5, seed=1)) != list(first)


def test_a_domain_without_locations_draws_uniformly() -> None:
    cache = make_cache([knee_like()])
    cache.locations = np.zeros((0, 4), dtype=np.int32)
    assert all(d[4] == UNIFORM for batch in sampler(cache, 1.0, iterations=5) for d in batch)


def test_corners_and_crops() -> None:
    assert corner_range(100, 32) == (0, 68) and corner_range(20, 32) == (-12, 0)
    assert centred_corner(0, 100, 32) == 0 and centred_corner(99, 100, 32) == 68
    assert centred_corner(50, 100, 32) == 34
    plane = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = crop_patch(plane, (-1, 2), (4, 4), fill=-5.0)
    assert np.array_equal(out[0], [-5] * 4) and np.array_equal(out[1:, :2], plane[:, 2:])
    assert (out[:, 2:] == -5).all()
    assert (crop_patch(plane, (10, 10), (2, 2), fill=7.0) == 7).all()
