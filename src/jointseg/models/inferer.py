"""Whole-view inference of a fully convolutional 2D network on slices of any size.

Slices are padded at their end to multiples of :data:`PATCH_MULTIPLE` (each slice with its own
minimum, the background after normalization), run in one pass where both sides fit
``max_in_plane``, else by MONAI's :class:`~monai.inferers.SlidingWindowInferer` (gaussian
weights, windows of up to ``max_in_plane`` a side), and cropped back to the input's size.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from monai.inferers import SlidingWindowInferer
from torch import Tensor

from jointseg.config import PATCH_MULTIPLE, InferenceConfig


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
            roi = tuple(min(side, self.max_side) for side in padded.shape[-2:])
            inferer = SlidingWindowInferer(
                roi, sw_batch_size=x.shape[0], overlap=self.overlap, mode="gaussian"
            )
            out = inferer(padded, network)
        return out[..., :height, :width]
