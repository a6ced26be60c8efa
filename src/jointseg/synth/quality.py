"""How hard is a synthetic dataset? The best a global intensity threshold can do.

An oracle picks, with the labels known, the intensity interval [low, high] whose voxels best
match the union of the labelled bones (Dice). A dataset where this oracle scores high would
teach a network nothing beyond thresholding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ThresholdResult:
    dice: float
    low: float
    high: float


def oracle_threshold(image: np.ndarray, mask: np.ndarray, bins: int = 256) -> ThresholdResult:
    """The best Dice of ``low <= image <= high`` against ``mask`` over all intensity intervals
    on a ``bins``-bin histogram (covers single thresholds: one end at the extreme)."""
    values = np.asarray(image, np.float64).ravel()
    truth = np.asarray(mask, bool).ravel()
    if values.size != truth.size:
        raise ValueError(f"image and mask differ in size: {image.shape} vs {mask.shape}")
    positives = int(truth.sum())
    if positives == 0:
        raise ValueError("the mask is empty: no bone to threshold")
    edges = np.linspace(values.min(), values.max() + 1e-9, bins + 1)
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins - 1)
    all_counts = np.bincount(index, minlength=bins).astype(np.float64)
    fg_counts = np.bincount(index[truth], minlength=bins).astype(np.float64)
    all_cum = np.concatenate([[0.0], np.cumsum(all_counts)])
    fg_cum = np.concatenate([[0.0], np.cumsum(fg_counts)])
    # Interval of bins [a, b): predicted = all_cum[b] - all_cum[a], hits likewise.
    predicted = all_cum[None, :] - all_cum[:, None]
    hits = fg_cum[None, :] - fg_cum[:, None]
    valid = np.triu(np.ones((bins + 1, bins + 1), bool), k=1)
    dice = np.full(valid.shape, -1.0)
    dice[valid] = 2.0 * hits[valid] / (predicted[valid] + positives)
    a, b = np.unravel_index(int(np.argmax(dice)), dice.shape)
    return ThresholdResult(float(dice[a, b]), float(edges[a]), float(edges[b]))


def oracle_threshold_dice(image: np.ndarray, label: np.ndarray) -> float:
    """Oracle Dice of the union of all labelled structures (label > 0)."""
    return oracle_threshold(image, np.asarray(label) > 0).dice
