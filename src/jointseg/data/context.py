"""Through-plane context: the network's input for a slice is the slice with its neighbours.

With ``k`` context slices (``model.context_slices``, odd) slice ``s`` of a scan is fed as the
``k`` channels ``s - (k-1)/2 .. s + (k-1)/2`` of its own slice stack [S, H, W], the centre
channel being ``s`` itself; rows past either end repeat the edge slice (a stack never reaches
into another scan). ``k = 1`` is plain 2D input. Training patches, validation, prediction and
domain recognition all build their input with :func:`context_stack`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

Volume = TypeVar("Volume", np.ndarray, torch.Tensor)


def context_rows(rows: Sequence[int] | np.ndarray, num_slices: int, k: int) -> np.ndarray:
    """[N, k] int64: the stack rows feeding each of ``rows`` (clamped to 0..num_slices-1)."""
    if k < 1 or k % 2 == 0:
        raise ValueError(f"the number of context slices must be odd and >= 1, got {k}")
    half = k // 2
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= num_slices):
        raise IndexError(f"rows outside 0..{num_slices - 1}")
    offsets = np.arange(-half, half + 1, dtype=np.int64)
    return np.clip(rows[:, None] + offsets, 0, num_slices - 1)


def context_stack(volume: Volume, rows: Sequence[int] | np.ndarray, k: int) -> Volume:
    """The network input [N, k, H, W] of ``rows`` of one scan's slice stack ``volume``
    [S, H, W] (a NumPy array, memory map or tensor; the result is of the same kind).

    Each distinct row is read once, so a memory-mapped stack reads only the slices needed.
    """
    index = context_rows(rows, len(volume), k)
    needed, inverse = np.unique(index, return_inverse=True)
    inverse = inverse.reshape(index.shape)
    if isinstance(volume, torch.Tensor):
        picked = volume[torch.as_tensor(needed, device=volume.device)]
        return picked[torch.as_tensor(inverse, device=volume.device)]
    return np.asarray(volume[needed])[inverse]
