"""The U-Net decoder: five upsampling stages with skip connections from the encoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jointseg.models.dsbn import DomainModule, DomainRouting, call_with_domains


class DecoderBlock(DomainModule):
    """Upsample by 2 (nearest), concatenate the skip, then two conv3x3-BN-ReLU."""

    def __init__(self, cin: int, skip: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin + skip, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(
        self, x: Tensor, domains: Tensor | DomainRouting, skip: Tensor | None = None
    ) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        x = self.relu(call_with_domains(self.bn1, self.conv1(x), domains))
        return self.relu(call_with_domains(self.bn2, self.conv2(x), domains))


class UNetDecoder(DomainModule):
    """Decoder over the encoder stages ``[enc0..enc4]`` (strides 2..32).

    ``forward(features, domains)`` returns ``[dec0, dec1, dec2, dec3, dec4]`` at strides
    16, 8, 4, 2, 1 with ``self.channels`` channels; ``dec0..dec3`` take the skips
    ``enc3..enc0``, ``dec4`` (full resolution) has none.
    """

    def __init__(self, encoder_channels: Sequence[int], channels: Sequence[int]):
        super().__init__()
        if len(encoder_channels) != 5 or len(channels) != 5:
            raise ValueError(
                f"need 5 encoder and 5 decoder stages, got {len(encoder_channels)} and "
                f"{len(channels)}"
            )
        skips = [*reversed(encoder_channels[:4]), 0]
        inputs = [encoder_channels[4], *channels[:-1]]
        self.blocks = nn.ModuleList(
            DecoderBlock(cin, skip, cout)
            for cin, skip, cout in zip(inputs, skips, channels, strict=True)
        )
        self.channels: tuple[int, ...] = tuple(channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, features: Sequence[Tensor], domains: Tensor | DomainRouting) -> list[Tensor]:
        skips = [features[3], features[2], features[1], features[0], None]
        x = features[4]
        outputs = []
        for block, skip in zip(self.blocks, skips, strict=True):
            x = block(x, domains, skip)
            outputs.append(x)
        return outputs
