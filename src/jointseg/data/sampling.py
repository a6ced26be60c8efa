"""Batches that mix domains: how many slices of each dataset go into every batch, and which.

A batch of ``batch_size`` slices is split between domains by a policy over the number of
training *subjects* per domain (``balanced``, ``proportional`` or ``sqrt``). The split is drawn
per batch so that every domain's expected share equals its policy probability exactly, while
every domain present in a batch holds at least ``min_per_domain`` slices (the supervised
contrastive loss needs a positive for each anchor):

- a domain whose expected count ``batch_size * p`` is below the minimum is either absent or
  present with exactly ``min_per_domain`` slices, with the probability that keeps its mean;
- the other domains get the minimum each, and the slots left are shared in proportion to
  their expected counts' excess over the minimum, rounded by systematic sampling so that
  means are kept and the total is exact.

Within a domain, with a ``patch_size`` (training on patches of whole-view slices), a share
``foreground_oversample`` of the draws is centred on a voxel of one structure: the structure
uniform among the domain's structures present in its training rows, the voxel uniform among its
sampled locations (the cache's ``locations``), the centre jittered by up to a quarter patch. The
other draws take a slice uniformly from the training rows (a slice without foreground is kept
with probability ``empty_slice_keep``, otherwise replaced by a slice with foreground of the same
domain) and a patch position uniformly inside it. Without a ``patch_size`` whole slices are
drawn, uniformly with the ``empty_slice_keep`` rule. Every draw comes from a numpy Generator
seeded from ``(seed, epoch, rank)``: an epoch is reproducible, epochs differ, and DDP ranks draw
independent batches that each (and so together) follow the policy.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from jointseg.data.patches import centred_corner, corner_range

POLICIES = ("balanced", "proportional", "sqrt")
UNIFORM = -1  # the structure of a draw not centred on any

Draw = tuple[int, ...]
"""``(domain, row)`` for a whole slice, or ``(domain, row, top, left, structure)`` for a patch
starting at ``(top, left)`` in the slice, centred on ``structure`` (or :data:`UNIFORM`)."""


def domain_probabilities(sizes: Sequence[int], policy: str) -> np.ndarray:
    """Probability of drawing each domain, from its number of training subjects.

    ``balanced``: equal for every non-empty domain; ``proportional``: size / total;
    ``sqrt``: sqrt(size) / sum of sqrt(size). A domain of size 0 gets probability 0.
    """
    values = np.asarray(sizes, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"sizes must be a non-empty list of counts, got {list(sizes)}")
    if np.any(values < 0):
        raise ValueError(f"sizes must be non-negative, got {list(sizes)}")
    if policy == "balanced":
        weights = (values > 0).astype(np.float64)
    elif policy == "proportional":
        weights = values
    elif policy == "sqrt":
        weights = np.sqrt(values)
    else:
        raise ValueError(f"unknown sampling policy {policy!r}; choose one of {POLICIES}")
    total = weights.sum()
    if total <= 0:
        raise ValueError(f"every domain is empty (sizes {list(sizes)})")
    return weights / total


def _systematic_pick(
    weights: np.ndarray, rng: np.random.Generator, points: int | None = None
) -> np.ndarray:
    """Systematic sampling: indices hit by marks ``u, u+1, ...`` over the cumulated weights.

    With weights in [0, 1], item ``i`` is hit with probability ``weights[i]`` and at most once;
    the number of hits is ``floor`` or ``ceil`` of the total weight. ``points`` forces the
    number of marks (used when the weights sum to that integer).
    """
    if weights.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = rng.permutation(weights.size)
    cumulative = np.cumsum(weights[order])
    offset = rng.random()
    if points is None:
        marks = offset + np.arange(int(np.ceil(cumulative[-1])))
        marks = marks[marks < cumulative[-1]]
    else:
        marks = offset + np.arange(points)
    hits = np.searchsorted(cumulative, marks, side="right")
    return order[np.minimum(hits, weights.size - 1)]


def _round_keeping_sum(targets: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Integers summing to ``total`` whose means equal ``targets`` (which sum to ``total``)."""
    floors = np.floor(targets)
    counts = floors.astype(np.int64)
    extra = int(total - counts.sum())
    if extra > 0:
        fractions = targets - floors
        fractions *= extra / fractions.sum()
        np.add.at(counts, _systematic_pick(fractions, rng, extra), 1)
    return counts


def allocate_counts(
    probabilities: np.ndarray, batch_size: int, min_per_domain: int, rng: np.random.Generator
) -> np.ndarray:
    """Slices per domain for one batch: sums to ``batch_size``; each count is 0 or >= minimum.

    The mean count of domain ``d`` over many batches is ``batch_size * probabilities[d]``,
    except in small batches (below about ``min_per_domain`` x domains) where a slot may have
    to move to keep the minimum.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    minimum = max(1, min(min_per_domain, batch_size))
    targets = batch_size * probabilities
    counts = np.zeros(targets.size, dtype=np.int64)
    small = np.flatnonzero((targets > 0) & (targets < minimum))
    large = np.flatnonzero(targets >= minimum)
    picked = small[_systematic_pick(targets[small] / minimum, rng)]
    if large.size == 0:  # only small domains: as many as fit, the rest of the slots to them
        picked = picked[: batch_size // minimum]
    counts[picked] = minimum
    left = batch_size - int(counts.sum())
    above = targets[large] - minimum
    if large.size and left >= minimum * large.size and above.sum() > 0:
        # the minimum first, the rest by the excess over it: means stay exact
        counts[large] = minimum
        spare = left - minimum * large.size
        counts[large] += _round_keeping_sum(above * (spare / above.sum()), spare, rng)
    else:
        receivers = large if large.size else picked
        if left > 0 and receivers.size:
            share = targets[receivers] * (left / targets[receivers].sum())
            counts[receivers] += _round_keeping_sum(share, left, rng)
    return _repair(counts, batch_size, minimum)


def _repair(counts: np.ndarray, batch_size: int, minimum: int) -> np.ndarray:
    """Make every non-zero count at least ``minimum``, keeping the total (rarely needed)."""
    counts = counts.copy()
    while True:
        short = np.flatnonzero((counts > 0) & (counts < minimum))
        if short.size == 0:
            break
        needy = short[0]
        donors = np.flatnonzero(counts > minimum)
        donors = donors[donors != needy]
        if donors.size:
            counts[donors[np.argmax(counts[donors])]] -= 1
            counts[needy] += 1
        else:
            others = np.flatnonzero(counts > 0)
            others = others[others != needy]
            if others.size == 0:
                break
            counts[others[np.argmax(counts[others])]] += counts[needy]
            counts[needy] = 0
    assert counts.sum() == batch_size
    return counts


def _checked_probabilities(probabilities: Sequence[float], usable: Sequence[int]) -> np.ndarray:
    """Given draw probabilities, checked: one per source, non-negative, summing to 1, and 0
    for a source with nothing to draw."""
    values = np.asarray(probabilities, dtype=np.float64)
    if values.shape != (len(usable),):
        raise ValueError(f"need {len(usable)} probabilities, got {list(probabilities)}")
    if np.any(values < 0) or not np.isclose(values.sum(), 1.0):
        raise ValueError(f"probabilities must be >= 0 and sum to 1, got {list(probabilities)}")
    empty = [i for i, (p, n) in enumerate(zip(values, usable, strict=True)) if p > 0 and n == 0]
    if empty:
        raise ValueError(f"sources {empty} have a probability but no rows or subjects")
    return values / values.sum()


class MultiDomainBatchSampler(torch.utils.data.Sampler[list[Draw]]):
    """Yields ``iterations`` batches of draws (:data:`Draw`) per epoch.

    ``rows[d]`` are the cache rows of domain ``d`` usable for training and ``foreground[d]``
    says, per entry of ``rows[d]``, whether that slice holds any foreground. ``sizes[d]`` is the
    number of training subjects of domain ``d`` (what the policy weighs). ``batch_size`` is per
    rank. With ``patch_size``, ``shapes[d]`` ([len(rows[d]), 2]: each slice's H, W) and
    ``locations[d]`` ([M, 4]: class, row, y, x of structure voxels in those rows) place the
    patches. Use it as a DataLoader's ``batch_sampler`` (with DDP, turn off the trainer's own
    distributed sampler and pass ``rank``/``world_size``). ``probabilities`` (one per entry of
    ``rows``, summing to 1) replace the policy's, e.g. to draw a share of a domain's slices
    from a second source (its randomized dataset).
    """

    def __init__(
        self,
        rows: Sequence[np.ndarray],
        foreground: Sequence[np.ndarray],
        sizes: Sequence[int],
        batch_size: int,
        iterations: int,
        policy: str = "balanced",
        empty_slice_keep: float = 0.2,
        min_per_domain: int = 2,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        patch_size: tuple[int, int] | None = None,
        shapes: Sequence[np.ndarray] | None = None,
        locations: Sequence[np.ndarray | None] | None = None,
        foreground_oversample: float = 0.0,
        probabilities: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not len(rows) == len(foreground) == len(sizes):
            raise ValueError("rows, foreground and sizes need one entry per domain")
        if batch_size < 1 or iterations < 1:
            raise ValueError("batch_size and iterations must be positive")
        if not 1 <= min_per_domain <= batch_size:
            raise ValueError(f"min_per_domain must be in [1, batch_size], got {min_per_domain}")
        if not 0.0 <= empty_slice_keep <= 1.0:
            raise ValueError(f"empty_slice_keep must be in [0, 1], got {empty_slice_keep}")
        if not 0.0 <= foreground_oversample <= 1.0:
            raise ValueError(
                f"foreground_oversample must be in [0, 1], got {foreground_oversample}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if patch_size is not None and shapes is None:
            raise ValueError("patches need the shape of every slice (shapes)")
        self.rows = [np.asarray(r, dtype=np.int64) for r in rows]
        self.foreground = [np.asarray(f, dtype=bool) for f in foreground]
        for d, (r, f) in enumerate(zip(self.rows, self.foreground, strict=True)):
            if r.shape != f.shape:
                raise ValueError(f"domain {d}: {r.size} rows but {f.size} foreground flags")
        self.foreground_rows = [r[f] for r, f in zip(self.rows, self.foreground, strict=True)]
        usable = [int(s) if r.size else 0 for s, r in zip(sizes, self.rows, strict=True)]
        self.probabilities = domain_probabilities(usable, policy)
        if probabilities is not None:
            self.probabilities = _checked_probabilities(probabilities, usable)
        self.policy = policy
        self.batch_size = batch_size
        self.iterations = iterations
        self.empty_slice_keep = empty_slice_keep
        self.min_per_domain = min_per_domain
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.patch_size = None if patch_size is None else (int(patch_size[0]), int(patch_size[1]))
        self.foreground_oversample = foreground_oversample
        shapes = shapes if shapes is not None else [np.zeros((r.size, 2)) for r in self.rows]
        self.shapes = [  # domain -> row -> (H, W)
            dict(zip(r.tolist(), map(tuple, np.asarray(s).tolist()), strict=True))
            for r, s in zip(self.rows, shapes, strict=True)
        ]
        locations = locations if locations is not None else [None] * len(self.rows)
        self.structures = [self._by_structure(d, loc) for d, loc in enumerate(locations)]

    def _by_structure(self, domain: int, locations: np.ndarray | None) -> dict[int, np.ndarray]:
        """Structure -> its locations [m, 3] (row, y, x) within the domain's training rows."""
        if locations is None or len(locations) == 0:
            return {}
        locations = np.asarray(locations, dtype=np.int64).reshape(-1, 4)
        locations = locations[np.isin(locations[:, 1], self.rows[domain])]
        return {int(c): locations[locations[:, 0] == c, 1:] for c in np.unique(locations[:, 0])}

    @classmethod
    def from_caches(
        cls,
        caches: Sequence[Any],
        case_ids: Sequence[Sequence[str]],
        batch_size: int,
        iterations: int,
        **kwargs: Any,
    ) -> MultiDomainBatchSampler:
        """Build from slice caches and each domain's training case ids (sizes = len(ids)).

        With ``patch_size`` the slices' shapes are read from the caches (``images[row]``) and
        the structure locations from their ``locations``, where they have them.
        """
        rows = [
            np.asarray(c.rows(list(ids)), dtype=np.int64)
            for c, ids in zip(caches, case_ids, strict=True)
        ]
        foreground = [np.asarray(c.foreground)[r] for c, r in zip(caches, rows, strict=True)]
        sizes = [len(ids) for ids in case_ids]
        if kwargs.get("patch_size") is not None:
            kwargs["shapes"] = [
                np.asarray([c.images[int(i)].shape for i in r], dtype=np.int64).reshape(-1, 2)
                for c, r in zip(caches, rows, strict=True)
            ]
            kwargs["locations"] = [getattr(c, "locations", None) for c in caches]
        return cls(rows, foreground, sizes, batch_size, iterations, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.iterations

    def __iter__(self) -> Iterator[list[Draw]]:
        rng = np.random.default_rng([self.seed % 2**63, self.epoch, self.rank])
        for _ in range(self.iterations):
            yield self._batch(rng)

    def _batch(self, rng: np.random.Generator) -> list[Draw]:
        counts = allocate_counts(self.probabilities, self.batch_size, self.min_per_domain, rng)
        batch: list[Draw] = []
        for domain in np.flatnonzero(counts):
            batch.extend(self._draw(int(domain), int(counts[domain]), rng))
        order = rng.permutation(len(batch))
        return [batch[i] for i in order]

    def _draw(self, domain: int, count: int, rng: np.random.Generator) -> list[Draw]:
        picked = self._draw_rows(domain, count, rng)
        if self.patch_size is None:
            return [(domain, int(row)) for row in picked]
        structures = self.structures[domain]
        centred = rng.random(count) < self.foreground_oversample if structures else [False] * count
        names = sorted(structures)
        draws: list[Draw] = []
        for row, centre in zip(picked.tolist(), centred, strict=True):
            if centre:
                structure = names[int(rng.integers(len(names)))]
                voxels = structures[structure]
                row, y, x = (int(v) for v in voxels[int(rng.integers(len(voxels)))])
                draws.append((domain, row, *self._centred(domain, row, y, x, rng), structure))
            else:
                draws.append((domain, row, *self._uniform(domain, row, rng), UNIFORM))
        return draws

    def _uniform(self, domain: int, row: int, rng: np.random.Generator) -> tuple[int, int]:
        """A patch start uniform over the positions inside the slice."""
        assert self.patch_size is not None
        corners = []
        for size, patch in zip(self.shapes[domain][row], self.patch_size, strict=True):
            low, high = corner_range(int(size), patch)
            corners.append(int(rng.integers(low, high + 1)))
        return corners[0], corners[1]

    def _centred(
        self, domain: int, row: int, y: int, x: int, rng: np.random.Generator
    ) -> tuple[int, int]:
        """A patch start centred on (y, x) jittered by up to a quarter patch, kept inside the
        slice where it is larger than the patch (the voxel stays in the patch)."""
        assert self.patch_size is not None
        corners = []
        sides = self.shapes[domain][row]
        for centre, size, patch in zip((y, x), sides, self.patch_size, strict=True):
            jitter = patch // 4
            shifted = centre + int(rng.integers(-jitter, jitter + 1))
            corners.append(centred_corner(shifted, int(size), patch))
        return corners[0], corners[1]

    def _draw_rows(self, domain: int, count: int, rng: np.random.Generator) -> np.ndarray:
        rows, foreground = self.rows[domain], self.foreground[domain]
        index = rng.choice(rows.size, size=count, replace=count > rows.size)
        picked = rows[index]
        with_foreground = self.foreground_rows[domain]
        if with_foreground.size and self.empty_slice_keep < 1.0:
            empty = ~foreground[index]
            replace = empty & (rng.random(count) >= self.empty_slice_keep)
            if replace.any():
                picked = picked.copy()
                picked[replace] = rng.choice(with_foreground, size=int(replace.sum()))
        return picked
