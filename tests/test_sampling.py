"""The multi-domain batch sampler: policies, minimum per domain, empty slices, DDP, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from jointseg.data.sampling import MultiDomainBatchSampler, allocate_counts, domain_probabilities

SIZES = (4, 9, 25)


def _domains(
    slices: tuple[int, ...] = (40, 90, 250), empty: float = 0.5
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Rows offset per domain (so rows identify domains) and a fixed share of empty slices."""
    rows, foreground = [], []
    for d, n in enumerate(slices):
        rows.append(1000 * d + np.arange(n))
        flags = np.ones(n, dtype=bool)
        flags[: int(round(empty * n))] = False
        foreground.append(flags)
    return rows, foreground


def _sampler(**kwargs) -> MultiDomainBatchSampler:
    rows, foreground = _domains()
    options = {"batch_size": 12, "iterations": 2000, "policy": "balanced", "seed": 3}
    options.update(kwargs)
    return MultiDomainBatchSampler(rows, foreground, SIZES, **options)


def _domain_shares(batches: list[list[tuple[int, int]]], domains: int = 3) -> np.ndarray:
    domains_drawn = np.array([d for batch in batches for d, _ in batch])
    return np.bincount(domains_drawn, minlength=domains) / domains_drawn.size


def test_domain_probabilities_of_each_policy() -> None:
    np.testing.assert_allclose(domain_probabilities(SIZES, "balanced"), [1 / 3] * 3)
    np.testing.assert_allclose(domain_probabilities(SIZES, "proportional"), np.array(SIZES) / 38)
    np.testing.assert_allclose(domain_probabilities(SIZES, "sqrt"), [0.2, 0.3, 0.5])
    np.testing.assert_allclose(domain_probabilities([0, 5, 5], "balanced"), [0, 0.5, 0.5])
    with pytest.raises(ValueError, match="unknown sampling policy"):
        domain_probabilities(SIZES, "uniform")
    with pytest.raises(ValueError, match="empty"):
        domain_probabilities([0, 0], "sqrt")


@pytest.mark.parametrize("policy", ["balanced", "proportional", "sqrt"])
def test_policy_shares_hold_over_many_batches(policy: str) -> None:
    batches = list(_sampler(policy=policy))
    assert len(batches) == 2000
    assert all(len(batch) == 12 for batch in batches)
    expected = domain_probabilities(SIZES, policy)
    np.testing.assert_allclose(_domain_shares(batches), expected, atol=0.01)


@pytest.mark.parametrize("policy", ["balanced", "proportional", "sqrt"])
@pytest.mark.parametrize("batch_size", [4, 5, 12])
def test_every_present_domain_has_the_minimum(policy: str, batch_size: int) -> None:
    for batch in _sampler(policy=policy, batch_size=batch_size, iterations=300):
        counts = np.bincount([d for d, _ in batch], minlength=3)
        assert counts.sum() == batch_size
        assert np.all((counts == 0) | (counts >= 2)), counts


def test_batches_mix_domains_and_balanced_holds_all_of_them() -> None:
    for batch in _sampler(policy="balanced", iterations=200):
        counts = np.bincount([d for d, _ in batch], minlength=3)
        assert np.all(counts == 4)
    for batch in _sampler(policy="sqrt", iterations=200):
        assert len({d for d, _ in batch}) >= 2


@pytest.mark.parametrize("policy", ["proportional", "sqrt"])
@pytest.mark.parametrize("batch_size", [6, 7, 9, 12])
def test_allocation_keeps_means_when_small_domains_are_rare(policy: str, batch_size: int) -> None:
    rng = np.random.default_rng(0)
    probabilities = domain_probabilities(SIZES, policy)  # e.g. 12 * 4/38 = 1.26 < 2
    counts = np.array([allocate_counts(probabilities, batch_size, 2, rng) for _ in range(5000)])
    assert np.all(counts.sum(axis=1) == batch_size)
    if batch_size * probabilities[0] < 2:
        assert set(np.unique(counts[:, 0])) <= {0, 2}
    np.testing.assert_allclose(counts.mean(axis=0) / batch_size, probabilities, atol=0.006)


def test_rows_come_from_their_domain() -> None:
    rows, _ = _domains()
    for batch in _sampler(iterations=50):
        for domain, row in batch:
            assert row in rows[domain]


@pytest.mark.parametrize("keep", [0.0, 0.2, 1.0])
def test_empty_slices_appear_at_the_configured_ratio(keep: float) -> None:
    rows, foreground = _domains(empty=0.5)
    empty_rows = set(np.concatenate(rows)[~np.concatenate(foreground)].tolist())
    batches = list(_sampler(empty_slice_keep=keep, iterations=1000))
    drawn = [row for batch in batches for _, row in batch]
    share = np.mean([row in empty_rows for row in drawn])
    assert share == pytest.approx(0.5 * keep, abs=0.015)


def test_domain_without_foreground_keeps_its_empty_slices() -> None:
    rows = [np.arange(10), 100 + np.arange(10)]
    foreground = [np.zeros(10, dtype=bool), np.ones(10, dtype=bool)]
    sampler = MultiDomainBatchSampler(rows, foreground, [3, 3], 8, 20, empty_slice_keep=0.0)
    domains = [d for batch in sampler for d, _ in batch]
    assert domains.count(0) == domains.count(1) == 80


def test_deterministic_per_seed_and_epoch_and_epochs_differ() -> None:
    first, second = _sampler(iterations=20), _sampler(iterations=20)
    assert list(first) == list(second)
    first.set_epoch(1)
    assert list(first) != list(second)
    second.set_epoch(1)
    assert list(first) == list(second)
    assert list(_sampler(iterations=20, seed=4)) != list(_sampler(iterations=20, seed=3))
    assert len(first) == 20


def test_ranks_draw_different_samples_and_follow_the_policy_together() -> None:
    ranks = [_sampler(policy="sqrt", iterations=1000, rank=r, world_size=2) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(5)
    batches = [list(sampler) for sampler in ranks]
    assert batches[0] != batches[1]
    same = sum(a == b for a, b in zip(batches[0], batches[1], strict=True))
    assert same == 0
    np.testing.assert_allclose(_domain_shares(batches[0] + batches[1]), [0.2, 0.3, 0.5], atol=0.01)


def test_from_caches_uses_training_cases_only() -> None:
    class Cache:
        case_slices = {"a": (0, 3), "b": (3, 5), "c": (5, 9)}
        foreground = np.array([0, 1, 1, 1, 0, 1, 1, 0, 1], dtype=bool)

        def rows(self, case_ids: list[str]) -> np.ndarray:
            spans = [np.arange(*self.case_slices[c]) for c in case_ids]
            return np.concatenate(spans) if spans else np.zeros(0, dtype=np.int64)

    sampler = MultiDomainBatchSampler.from_caches(
        [Cache(), Cache()], [["a", "c"], ["b"]], batch_size=4, iterations=30, policy="proportional"
    )
    np.testing.assert_allclose(sampler.probabilities, [2 / 3, 1 / 3])
    for batch in sampler:
        for domain, row in batch:
            assert row in ({0, 1, 2, 5, 6, 7, 8} if domain == 0 else {3, 4})


def test_invalid_arguments_are_rejected() -> None:
    rows, foreground = _domains()
    with pytest.raises(ValueError, match="min_per_domain"):
        MultiDomainBatchSampler(rows, foreground, SIZES, 1, 10)
    with pytest.raises(ValueError, match="one entry per domain"):
        MultiDomainBatchSampler(rows[:2], foreground, SIZES, 4, 10)
    with pytest.raises(ValueError, match="rank"):
        MultiDomainBatchSampler(rows, foreground, SIZES, 4, 10, rank=2, world_size=2)
