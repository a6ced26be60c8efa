"""Projection heads for the multi-scale contrastive loss."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Projector(nn.Module):
    """Global average pooling, Linear-ReLU-Linear, then L2 normalization.

    Maps a feature map [B, C, H, W] to unit vectors [B, dim].
    """

    def __init__(self, in_channels: int, hidden: int, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_channels, hidden)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, feature: Tensor) -> Tensor:
        pooled = feature.mean(dim=(2, 3))
        return F.normalize(self.fc2(self.relu(self.fc1(pooled))), dim=1)
