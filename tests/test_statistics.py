"""Holm, Wilcoxon signed-rank and rank-biserial on examples with answers derived by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jointseg.evaluation.statistics import describe, holm, paired_test, rank_biserial


def test_holm_textbook_example() -> None:
    # Sorted: 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone
    # step-down: 0.02, 0.03, 0.06, 0.06.
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_skips_nan() -> None:
    adjusted = holm([0.5, math.nan, 0.2])
    # m = 2 (the NaN does not count): 0.2 * 2 = 0.4, then max(0.4, 0.5 * 1) = 0.5.
    assert adjusted[0] == pytest.approx(0.5)
    assert math.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(0.4)
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


def test_wilcoxon_exact_all_positive() -> None:
    # Five positive differences: only 1 of the 2^5 sign patterns has T- = 0, two-sided p = 2/32.
    test = paired_test([1.1, 2.2, 3.3, 4.4, 5.5], [0.1, 0.2, 0.3, 0.4, 0.5])
    assert test.n == 5
    assert test.statistic == 0.0
    assert test.p_value == pytest.approx(2 / 32)
    assert test.rank_biserial == pytest.approx(1.0)
    assert test.median_difference == pytest.approx(3.0)  # differences 1..5


def test_wilcoxon_exact_one_negative() -> None:
    # Differences 1, -2, 3, 4, 5: ranks 1..5, T- = 2. Sign patterns with T- <= 2: {}, {1}, {2}
    # -> 3/32 one-sided, p = 6/32 two-sided. r = (13 - 2) / 15.
    a = np.array([1.0, 0.0, 3.0, 4.0, 5.0])
    b = np.array([0.0, 2.0, 0.0, 0.0, 0.0])
    test = paired_test(a, b)
    assert test.statistic == 2.0
    assert test.p_value == pytest.approx(6 / 32)
    assert test.rank_biserial == pytest.approx(11 / 15)
    assert test.median_difference == pytest.approx(3.0)


def test_rank_biserial_with_ties_and_zeros() -> None:
    # Non-zero |d| = 1, 1, 2 -> ranks 1.5, 1.5, 3; T+ = 1.5 + 3, T- = 1.5 -> r = 3 / 6.
    assert rank_biserial([1.0, -1.0, 2.0, 0.0]) == pytest.approx(0.5)
    assert math.isnan(rank_biserial([0.0, 0.0]))


def test_paired_test_drops_nan_pairs_and_handles_no_difference() -> None:
    test = paired_test([1.0, math.nan, 2.0], [1.0, 5.0, 2.0])
    assert test.n == 2 and test.p_value == 1.0 and test.median_difference == 0.0
    empty = paired_test([math.nan], [1.0])
    assert empty.n == 0 and math.isnan(empty.p_value)
    with pytest.raises(ValueError, match="length"):
        paired_test([1.0, 2.0], [1.0])


def test_describe() -> None:
    stats = describe([1.0, 2.0, 4.0, math.nan])
    assert stats["mean"] == pytest.approx(7 / 3)
    # Sample variance: ((4/3)^2 + (1/3)^2 + (5/3)^2) / 2 = 42/18.
    assert stats["sd"] == pytest.approx(math.sqrt(42 / 18))
    assert stats["median"] == 2.0
    assert (stats["n"], stats["missing"]) == (3, 1)
    single = describe([0.5])
    assert single["sd"] is None and single["mean"] == 0.5
    assert describe([math.nan])["mean"] is None
