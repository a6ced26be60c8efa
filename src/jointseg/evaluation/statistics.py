"""Descriptive statistics and paired tests between schemes.

- :func:`paired_test`: Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, two-sided, zero
  differences dropped as in Wilcoxon's original method, exact distribution for small samples
  without ties) with the matched-pairs rank-biserial correlation and the median difference.
- :func:`holm`: Holm's step-down adjustment of a family of p-values.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import rankdata, wilcoxon


def describe(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean, sample SD (ddof=1), median, count and missing count of values; NaNs are missing.

    A statistic that cannot be computed (no values; SD of one value) is None.
    """
    array = np.asarray(values, dtype=float)
    valid = array[~np.isnan(array)]
    n = int(valid.size)
    return {
        "mean": float(valid.mean()) if n else None,
        "sd": float(valid.std(ddof=1)) if n > 1 else None,
        "median": float(np.median(valid)) if n else None,
        "n": n,
        "missing": int(array.size - n),
    }


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values, in the input order.

    With m p-values sorted increasingly p(1) <= ... <= p(m), the adjusted value of p(i) is
    max over j <= i of min(1, (m - j + 1) * p(j)). NaN entries stay NaN and are not counted in m.
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    running = 0.0
    for rank, index in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def rank_biserial(differences: Sequence[float]) -> float:
    """Matched-pairs rank-biserial correlation (T+ - T-) / (T+ + T-) of paired differences.

    Ranks are those of the absolute non-zero differences (ties get average ranks); +1 means
    every difference is positive. NaN when no difference is non-zero.
    """
    d = np.asarray(differences, dtype=float)
    d = d[~np.isnan(d) & (d != 0)]
    if d.size == 0:
        return math.nan
    ranks = rankdata(np.abs(d))
    positive = float(ranks[d > 0].sum())
    negative = float(ranks[d < 0].sum())
    return (positive - negative) / (positive + negative)


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison of ``a`` against ``b`` (differences a - b)."""

    n: int
    statistic: float
    p_value: float
    rank_biserial: float
    median_difference: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def paired_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Wilcoxon signed-rank test of paired samples ``a`` and ``b``; pairs with a NaN are dropped.

    ``statistic`` is scipy's (the smaller of the signed-rank sums for the two-sided test). With
    no pair left everything is NaN; when every difference is zero the p-value is 1.
    """
    a_arr = np.asarray(a, dtype=float)
    b_arr = np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired samples differ in length: {a_arr.size} vs {b_arr.size}")
    keep = ~(np.isnan(a_arr) | np.isnan(b_arr))
    d = a_arr[keep] - b_arr[keep]
    if d.size == 0:
        return PairedTest(0, math.nan, math.nan, math.nan, math.nan)
    median = float(np.median(d))
    if not np.any(d != 0):
        return PairedTest(int(d.size), 0.0, 1.0, math.nan, median)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    return PairedTest(
        n=int(d.size),
        statistic=float(result.statistic),
        p_value=float(result.pvalue),
        rank_biserial=rank_biserial(d),
        median_difference=median,
    )
