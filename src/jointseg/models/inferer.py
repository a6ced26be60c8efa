"""Whole-view inference of a fully convolutional 2D network on slices of any size.

Slices are padded at their end to multiples of :data:`PATCH_MULTIPLE` (each slice with its own
minimum, the background after normalization), run in one pass where both sides fit
``max_in_plane``, else by MONAI's :class:`~monai.inferers.SlidingWindowInferer` (gaussian
weights, windows of up to ``max_in_plane`` a side), and cropped back to the input's size.

:meth:`WholeViewInferer.predict_volume` runs a whole slice stack: batches of slices with their
context slices, class probabilities from a given function (a network's softmax, or an exported
graph's output; averaged over flips with test-time augmentation), argmax, and the
probabilities kept as float16 when asked. :func:`restoration_fits` is the memory policy that
decides whether the probabilities are kept for a smooth restoration onto the scan's grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from jointseg.config import PATCH_MULTIPLE, InferenceConfig
from jointseg.data.context import context_stack

MEMORY_BUDGET = 1.0e9  # bytes the probability restoration may take, beyond the scan itself


def pad_to_multiple(x: Tensor, multiple: int = PATCH_MULTIPLE) -> Tensor:
    """[..., H, W] padded at the end of H and W to multiples of ``multiple`` with each slice's
    minimum (the input itself when no padding is needed)."""
    height, width = x.shape[-2:]
    sides = (multiple * math.ceil(height / multiple), multiple * math.ceil(width / multiple))
    if sides == (height, width):
        return x
    out = x.amin(dim=(-2, -1), keepdim=True).expand(*x.shape[:-2], *sides).clone()
    out[..., :height, :width] = x
    return out


class WholeViewInferer:
    """``inferer(x, network)``: the network's output [B, C, H, W] on inputs ``x`` [B, k, H, W]
    (slices with their context slices; each channel padded with its own minimum).

    ``network`` maps a batch [b, k, h, w] (sides multiples of 32) to [b, C, h, w] (logits or
    probabilities); sliding windows average it with gaussian weights.
    """

    def __init__(self, max_in_plane: int = 512, overlap: float = 0.25) -> None:
        self.max_side = max(PATCH_MULTIPLE, max_in_plane // PATCH_MULTIPLE * PATCH_MULTIPLE)
        self.overlap = overlap

    @classmethod
    def from_config(cls, cfg: InferenceConfig) -> WholeViewInferer:
        return cls(cfg.max_in_plane, cfg.window_overlap)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """The padded grid (H, W) the network sees for slices of ``height`` x ``width``."""
        return (
            PATCH_MULTIPLE * math.ceil(height / PATCH_MULTIPLE),
            PATCH_MULTIPLE * math.ceil(width / PATCH_MULTIPLE),
        )

    def windowed(self, height: int, width: int) -> bool:
        """Whether slices of this size are segmented by sliding windows."""
        return max(self.grid(height, width)) > self.max_side

    def __call__(self, x: Tensor, network: Callable[[Tensor], Tensor]) -> Tensor:
        height, width = x.shape[-2:]
        padded = pad_to_multiple(x)
        if not self.windowed(height, width):
            out = network(padded)
        else:
            from monai.inferers import SlidingWindowInferer  # MONAI loads only when windowed

            roi = tuple(min(side, self.max_side) for side in padded.shape[-2:])
            inferer = SlidingWindowInferer(
                roi, sw_batch_size=x.shape[0], overlap=self.overlap, mode="gaussian"
            )
            out = inferer(padded, network)
        return out[..., :height, :width]

    @torch.no_grad()
    def predict_volume(
        self,
        volume: np.ndarray,
        probabilities_of: Callable[[Tensor], Tensor],
        context: int,
        batch_size: int,
        device: torch.device,
        flips: Sequence[tuple[int, ...]] = ((),),
        keep_probabilities: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Argmax slices [S, H, W] (uint8) of a slice stack [S, H, W] and, if asked, float16
        probabilities [S, C, H, W]: ``batch_size`` slices at a time, each with its ``context``
        slices, ``probabilities_of(x)`` (class probabilities [B, C, H, W] of a batch: the
        softmax of a network's logits, or an exported graph's output) averaged over the tensor
        dims of ``flips``."""
        labels = np.zeros(volume.shape, dtype=np.uint8)
        probabilities = None
        for start in range(0, volume.shape[0], batch_size):
            stop = min(start + batch_size, volume.shape[0])
            x = torch.from_numpy(context_stack(volume, np.arange(start, stop), context))
            probs = self(x.to(device), lambda t: flip_averaged(probabilities_of, t, flips))
            if keep_probabilities and probabilities is None:
                shape = (volume.shape[0], probs.shape[1], *volume.shape[1:])
                probabilities = np.zeros(shape, np.float16)
            if probabilities is not None:
                probabilities[start:stop] = probs.to("cpu", torch.float16).numpy()
            labels[start:stop] = probs.argmax(1).to("cpu", torch.uint8).numpy()
        return labels, probabilities


def flip_averaged(
    probabilities_of: Callable[[Tensor], Tensor], x: Tensor, flips: Sequence[tuple[int, ...]]
) -> Tensor:
    """Class probabilities [B, C, H, W] of a batch, averaged over the flips (TTA)."""
    total = None
    for dims in flips:
        probs = probabilities_of(torch.flip(x, dims) if dims else x).float()
        probs = torch.flip(probs, dims) if dims else probs
        total = probs if total is None else total + probs
    return total / len(flips)


def flip_sets(flip_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Tensor dims to flip for TTA: every combination of the in-plane axes (0 = rows, 1 = cols)
    given, or of both when none are; the identity first."""
    dims = [2 + a for a in sorted(set(flip_axes)) or [0, 1]]
    flips: list[tuple[int, ...]] = [()]
    for d in dims:
        flips += [(*f, d) for f in flips]
    return flips


def restoration_fits(scan_size: Sequence[int], slice_shape: Sequence[int], classes: int) -> bool:
    """Whether class-wise (smooth) restoration of the probabilities fits :data:`MEMORY_BUDGET`.

    It holds the float16 probabilities (2 bytes per slice voxel and class), one class as float32
    on the slice grid and its SimpleITK copy (8 bytes per slice voxel), and on the scan's grid
    the restored class, the running maximum, the labels and a mask (10 bytes per voxel).
    """
    slices = math.prod(slice_shape)
    need = math.prod(scan_size) * 10 + slices * (classes * 2 + 8)
    return need <= MEMORY_BUDGET
