"""Dice overlap: the one implementation that evaluation, validation and the shape prior share."""

from __future__ import annotations

import numpy as np
import torch


def dice_from_counts(intersection: float, predicted: float, reference: float) -> float | None:
    """2 |P & R| / (|P| + |R|) from voxel counts; None when both masks are empty."""
    total = predicted + reference
    return 2.0 * intersection / total if total else None


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks of one shape: 2 TP / (|P| + |R|); 1 when both are empty."""
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    score = dice_from_counts(
        int(np.count_nonzero(pred & ref)), int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    )
    return 1.0 if score is None else score


def dice_per_class(prediction: torch.Tensor, target: torch.Tensor, num_classes: int) -> np.ndarray:
    """Dice of classes 1..C-1 between two label volumes (1.0 for a class empty in both)."""
    scores = np.zeros(num_classes - 1)
    for cls in range(1, num_classes):
        pred, ref = prediction == cls, target == cls
        score = dice_from_counts(int((pred & ref).sum()), int(pred.sum()), int(ref.sum()))
        scores[cls - 1] = 1.0 if score is None else score
    return scores
