"""SliceDataset and collate_slices over stand-in caches; seeded augmentation with workers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from jointseg.config import AugmentationConfig
from jointseg.data.augment import build_augmentation
from jointseg.data.dataset import SliceDataset, collate_slices, seed_worker
from jointseg.data.sampling import MultiDomainBatchSampler


@dataclass
class FakeCache:
    """The attributes of a slice cache that the dataset and sampler use."""

    images: np.ndarray
    labels: np.ndarray
    case_slices: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def foreground(self) -> np.ndarray:
        return self.labels.reshape(len(self.labels), -1).max(axis=1) > 0

    def rows(self, case_ids: list[str]) -> np.ndarray:
        return np.concatenate([np.arange(*self.case_slices[c]) for c in case_ids])


def _cache(n: int, classes: int, offset: float, folder: Path | None = None) -> FakeCache:
    rng = np.random.default_rng(int(offset))
    images = (offset + np.arange(n, dtype=np.float32)[:, None, None]) * np.ones((n, 32, 32))
    images = (images + rng.normal(0, 0.01, images.shape)).astype(np.float32)
    labels = rng.integers(0, classes, (n, 32, 32)).astype(np.uint8)
    labels[0] = 0
    if folder is not None:  # memory-mapped, as the real cache stores them
        path = folder / f"images{int(offset)}.npy"
        np.save(path, images)
        images = np.load(path, mmap_mode="r")
    half = n // 2
    return FakeCache(images, labels, {"a": (0, half), "b": (half, n)})


def _caches(folder: Path | None = None) -> list[FakeCache]:
    return [_cache(6, 3, 0.0, folder), _cache(8, 5, 100.0, folder)]


def test_items_have_the_right_rows_shapes_and_dtypes(tmp_path: Path) -> None:
    caches = _caches(tmp_path)
    dataset = SliceDataset(caches)
    assert len(dataset) == 14
    for domain, row in [(0, 0), (0, 5), (1, 3)]:
        item = dataset[(domain, row)]
        assert item["domain"] == domain
        assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
        assert item["label"].shape == (32, 32) and item["label"].dtype == torch.long
        np.testing.assert_array_equal(item["image"][0].numpy(), caches[domain].images[row])
        np.testing.assert_array_equal(item["label"].numpy(), caches[domain].labels[row])
        assert type(item["image"]) is torch.Tensor and type(item["label"]) is torch.Tensor


def test_items_do_not_write_back_into_the_cache() -> None:
    caches = _caches()
    before = caches[0].images.copy()
    dataset = SliceDataset(caches, transform=lambda d: {k: v.mul_(0) for k, v in d.items()})
    item = dataset[(0, 2)]
    assert item["image"].abs().sum() == 0
    np.testing.assert_array_equal(caches[0].images, before)


def test_collate_stacks_a_mixed_batch() -> None:
    dataset = SliceDataset(_caches())
    batch = collate_slices([dataset[key] for key in [(0, 1), (1, 2), (1, 7), (0, 3)]])
    assert batch["image"].shape == (4, 1, 32, 32)
    assert batch["label"].shape == (4, 32, 32) and batch["label"].dtype == torch.long
    assert batch["domain"].tolist() == [0, 1, 1, 0] and batch["domain"].dtype == torch.long


def test_augmented_items_keep_labels_and_are_seeded() -> None:
    caches = _caches()
    config = AugmentationConfig(affine_probability=1.0, probability=1.0, flip_axes=[1])

    def items(seed: int) -> list[dict]:
        dataset = SliceDataset(caches, build_augmentation(config), seed=seed)
        return [dataset[(1, row)] for row in range(4)]

    first, again, other = items(5), items(5), items(6)
    for a, b, c in zip(first, again, other, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
        assert not torch.equal(a["image"], c["image"])
        assert a["label"].dtype == torch.long and set(a["label"].unique().tolist()) <= set(range(5))


def _loader_batches(workers: int, seed: int) -> list[dict]:
    caches = _caches()
    sampler = MultiDomainBatchSampler.from_caches(
        caches, [["a", "b"], ["a", "b"]], batch_size=4, iterations=4, seed=seed
    )
    config = AugmentationConfig(affine_probability=1.0, probability=1.0)
    dataset = SliceDataset(caches, build_augmentation(config), seed=seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_slices,
        num_workers=workers,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed),
    )
    return list(loader)


def test_loader_with_workers_is_deterministic() -> None:
    first, again = _loader_batches(2, seed=0), _loader_batches(2, seed=0)
    assert len(first) == 4
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
        assert torch.equal(a["domain"], b["domain"])
        assert a["image"].shape == (4, 1, 32, 32)
    other = _loader_batches(2, seed=1)
    assert any(not torch.equal(a["image"], b["image"]) for a, b in zip(first, other, strict=True))


def test_workers_augment_differently() -> None:
    """Without per-worker reseeding both workers would repeat one augmentation sequence."""
    config = AugmentationConfig(affine_probability=1.0, probability=1.0)
    dataset = SliceDataset(_caches(), build_augmentation(config), seed=0)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=[[(0, 1)]] * 2,  # batch i goes to worker i: same slice, first draw each
        collate_fn=collate_slices,
        num_workers=2,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(0),
    )
    first, second = list(loader)
    assert not torch.equal(first["image"], second["image"])
