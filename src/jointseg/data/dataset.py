"""Slices of several domains' caches as training samples, keyed by a sampler's draw.

A cache is anything with ``images`` (float32 slices) and ``labels`` (local class indices)
indexable by row, e.g. the memory-mapped :class:`SliceCache`; only the rows asked for are read.
A draw ``(domain, row)`` gives the whole slice, ``(domain, row, top, left, structure)`` the
``patch_size`` patch starting there (:mod:`jointseg.data.patches`). Use with
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

from jointseg.data.patches import crop_patch


class SliceDataset(torch.utils.data.Dataset):
    """Item ``(d, r)``: row ``r`` of cache ``d``; item ``(d, r, top, left, structure)``: its
    patch of ``patch_size`` from ``(top, left)``, padded outside the slice (image: the slice's
    minimum, label: 0); either augmented by ``transform`` when one is given.

    Returns ``{"image": FloatTensor [1, H, W], "label": LongTensor [H, W], "domain": d}``. The
    transform sees ``image`` and ``label`` as [1, H, W] tensors; if it has MONAI's
    ``set_random_state`` it is seeded with ``seed`` here and reseeded per DataLoader worker by
    :func:`seed_worker`.
    """

    def __init__(
        self,
        caches: Sequence[Any],
        transform: Callable[[dict], dict] | None = None,
        seed: int = 0,
        patch_size: tuple[int, int] | None = None,
    ) -> None:
        self.caches = list(caches)
        self.transform = transform
        self.patch_size = patch_size
        self.seed = seed
        self.reseed(seed)

    def __len__(self) -> int:
        return sum(len(cache.images) for cache in self.caches)

    def __getitem__(self, key: tuple[int, ...]) -> dict:
        domain, row = int(key[0]), int(key[1])
        cache = self.caches[domain]
        plane = np.array(cache.images[row], dtype=np.float32)
        mask = np.array(cache.labels[row], dtype=np.uint8)
        if len(key) > 2:
            if self.patch_size is None:
                raise ValueError("a patch draw needs a dataset with a patch_size")
            corner = (int(key[2]), int(key[3]))
            fill = float(plane.min()) if plane.size else 0.0
            plane = crop_patch(plane, corner, self.patch_size, fill)
            mask = crop_patch(mask, corner, self.patch_size, 0)
        image = torch.from_numpy(plane)[None]
        label = torch.from_numpy(mask)[None]
        if self.transform is not None:
            item = self.transform({"image": image, "label": label})
            image, label = item["image"], item["label"]
        image = convert_to_tensor(image, dtype=torch.float32, track_meta=False)
        label = convert_to_tensor(label, track_meta=False)
        if label.is_floating_point():
            label = label.round()
        return {"image": image, "label": label[0].to(torch.long), "domain": domain, "row": row}

    def reseed(self, seed: int) -> None:
        """Seed the transform's random state (no-op for transforms without one)."""
        set_state = getattr(self.transform, "set_random_state", None)
        if set_state is not None:
            set_state(seed=seed % 2**32)


def collate_slices(batch: list[dict]) -> dict:
    """Stack items: ``image`` [B, 1, H, W], ``label`` [B, H, W], ``domain`` and ``row``
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
