"""Slices of several domains' caches as training samples, keyed by a sampler's draw.

A cache is anything with ``images`` (float32 slices) and ``labels`` (local class indices)
indexable by row, e.g. the memory-mapped :class:`SliceCache`; only the rows asked for are read.
A draw ``(domain, row)`` gives the whole slice, ``(domain, row, top, left, structure)`` the
``patch_size`` patch starting there (:mod:`jointseg.data.patches`). With ``context_slices``
k > 1 the image holds the row's k neighbouring slices of its own case
(:func:`~jointseg.data.context.context_stack`; the cache's ``images`` must then be per-case
:class:`~jointseg.data.cache.CaseRows`); the label is the centre slice's. Use with
:class:`~jointseg.data.sampling.MultiDomainBatchSampler` as the DataLoader's ``batch_sampler``,
:func:`collate_slices` as ``collate_fn`` and :func:`seed_worker` as ``worker_init_fn``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.utils import convert_to_tensor

from jointseg.data.context import context_stack
from jointseg.data.patches import crop_patch


class SliceDataset(torch.utils.data.Dataset):
    """Item ``(d, r)``: row ``r`` of cache ``d``; item ``(d, r, top, left, structure)``: its
    patch of ``patch_size`` from ``(top, left)``, padded outside the slice (image: each
    channel's minimum, label: 0); either augmented by ``transform`` when one is given.

    Returns ``{"image": FloatTensor [k, H, W], "label": LongTensor [H, W], "domain": d}`` (k:
    ``context_slices``). The transform sees ``image`` [k, H, W] and ``label`` [1, H, W] tensors
    (one spatial transform for every channel); if it has MONAI's
    ``set_random_state`` it is seeded with ``seed`` here and reseeded per DataLoader worker by
    :func:`seed_worker`. ``domains`` gives the domain of each cache (default: its index), so
    that several caches (a domain's realistic and randomized slices) can share a domain; the
    keys' first entry is the cache's index.
    """

    def __init__(
        self,
        caches: Sequence[Any],
        transform: Callable[[dict], dict] | None = None,
        seed: int = 0,
        patch_size: tuple[int, int] | None = None,
        context_slices: int = 1,
        domains: Sequence[int] | None = None,
    ) -> None:
        self.caches = list(caches)
        self.domains = list(range(len(self.caches))) if domains is None else list(domains)
        if len(self.domains) != len(self.caches):
            raise ValueError(f"{len(self.caches)} caches but {len(self.domains)} domains")
        self.context_slices = context_slices
        self.transform = transform
        self.patch_size = patch_size
        self.seed = seed
        self.reseed(seed)

    def __len__(self) -> int:
        return sum(len(cache.images) for cache in self.caches)

    def __getitem__(self, key: tuple[int, ...]) -> dict:
        domain, row = int(key[0]), int(key[1])
        cache = self.caches[domain]
        planes = self._planes(cache.images, row)
        mask = np.array(cache.labels[row], dtype=np.uint8)
        if len(key) > 2:
            if self.patch_size is None:
                raise ValueError("a patch draw needs a dataset with a patch_size")
            corner = (int(key[2]), int(key[3]))
            planes = np.stack(
                [crop_patch(p, corner, self.patch_size, float(p.min())) for p in planes]
            )
            mask = crop_patch(mask, corner, self.patch_size, 0)
        image = torch.from_numpy(planes)
        label = torch.from_numpy(mask)[None]
        if self.transform is not None:
            item = self.transform({"image": image, "label": label})
            image, label = item["image"], item["label"]
        image = convert_to_tensor(image, dtype=torch.float32, track_meta=False)
        label = convert_to_tensor(label, track_meta=False)
        if label.is_floating_point():
            label = label.round()
        return {
            "image": image,
            "label": label[0].to(torch.long),
            "domain": self.domains[domain],
            "row": row,
        }

    def _planes(self, images: Any, row: int) -> np.ndarray:
        """[k, H, W] float32: row ``row`` with its context slices, within its case."""
        volume_of = getattr(images, "volume_of", None)
        if volume_of is not None:
            volume, local = volume_of(row)
        elif self.context_slices == 1:
            volume, local = images, row
        else:
            raise TypeError("context slices need per-case rows (CaseRows) to stay within a case")
        return np.array(context_stack(volume, [local], self.context_slices)[0], dtype=np.float32)

    def reseed(self, seed: int) -> None:
        """Seed the transform's random state (no-op for transforms without one)."""
        set_state = getattr(self.transform, "set_random_state", None)
        if set_state is not None:
            set_state(seed=seed % 2**32)


def collate_slices(batch: list[dict]) -> dict:
    """Stack items: ``image`` [B, k, H, W], ``label`` [B, H, W], ``domain`` and ``row``
    LongTensors [B] (``row``: the slice's row in its domain's cache)."""
    return {
        "row": torch.as_tensor([item["row"] for item in batch], dtype=torch.long),
        "image": torch.stack([item["image"] for item in batch]),
        "label": torch.stack([item["label"] for item in batch]),
        "domain": torch.as_tensor([item["domain"] for item in batch], dtype=torch.long),
    }


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: deterministic, distinct augmentation per worker.

    torch gives worker ``i`` the seed ``base + i``, where ``base`` is drawn from the main
    process's torch generator (seeded by the run's seed, or the DataLoader's ``generator``)
    each time an iterator starts; the dataset's transform, NumPy and ``random`` are reseeded
    from it together with the dataset's own seed.
    """
    del worker_id  # already part of torch.initial_seed()
    info = torch.utils.data.get_worker_info()
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)
    dataset = info.dataset if info is not None else None
    if isinstance(dataset, SliceDataset):
        mixed = np.random.SeedSequence([dataset.seed % 2**32, worker_seed])
        dataset.reseed(int(mixed.generate_state(1)[0]))
