"""ResNet-18/34/50 encoders whose parameter names match torchvision's ResNets.

The names (``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``layer4``, ``downsample.0/1``) are
torchvision's, so an ImageNet state dict loads without a mapping table (``fc`` is absent). A
width multiplier scales every channel count for small CPU runs. Every block's forward takes
``(x, domains)`` so that domain-specific batch normalization can be swapped in for BatchNorm2d.
"""

from __future__ import annotations

from torch import Tensor, nn

from jointseg.models.dsbn import DomainModule, DomainRouting, DomainSequential, call_with_domains

# (block kind, blocks per stage)
ARCHITECTURES: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
STAGE_STRIDES = (2, 4, 8, 16, 32)


def scaled(channels: int, width: float) -> int:
    """``channels`` times the width multiplier, rounded, at least 1."""
    return max(1, int(round(channels * width)))


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(DomainModule):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor, domains: Tensor | DomainRouting) -> Tensor:
        out = self.relu(call_with_domains(self.bn1, self.conv1(x), domains))
        out = call_with_domains(self.bn2, self.conv2(out), domains)
        identity = x if self.downsample is None else self.downsample(x, domains)
        return self.relu(out + identity)


class Bottleneck(DomainModule):
    """1x1 - 3x3 (strided) - 1x1 convolutions with a residual connection (ResNet-50)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor, domains: Tensor | DomainRouting) -> Tensor:
        out = self.relu(call_with_domains(self.bn1, self.conv1(x), domains))
        out = self.relu(call_with_domains(self.bn2, self.conv2(out), domains))
        out = call_with_domains(self.bn3, self.conv3(out), domains)
        identity = x if self.downsample is None else self.downsample(x, domains)
        return self.relu(out + identity)


class ResNetEncoder(DomainModule):
    """A ResNet without its classifier, returning the five stage outputs.

    ``forward(x, domains)`` returns ``[enc0, enc1, enc2, enc3, enc4]`` at strides
    2, 4, 8, 16, 32 (``enc0`` is the stem after conv1/bn1/relu, before max pooling);
    their channel counts are ``self.channels``.
    """

    def __init__(self, arch: str = "resnet18", in_channels: int = 1, width: float = 1.0):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown encoder {arch!r}; choose from {sorted(ARCHITECTURES)}")
        kind, depths = ARCHITECTURES[arch]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.arch = arch
        self.width = width
        self.in_channels = in_channels
        stem = scaled(64, width)
        self.conv1 = nn.Conv2d(in_channels, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = stem
        channels = [stem]
        for index, (base, depth) in enumerate(
            zip((64, 128, 256, 512), depths, strict=True), start=1
        ):
            planes = scaled(base, width)
            stride = 1 if index == 1 else 2
            layer, cin = _make_layer(block, cin, planes, depth, stride)
            self.add_module(f"layer{index}", layer)
            channels.append(cin)
        self.channels: tuple[int, ...] = tuple(channels)
        _init_weights(self)

    def forward(self, x: Tensor, domains: Tensor | DomainRouting) -> list[Tensor]:
        enc0 = self.relu(call_with_domains(self.bn1, self.conv1(x), domains))
        enc1 = self.layer1(self.maxpool(enc0), domains)
        enc2 = self.layer2(enc1, domains)
        enc3 = self.layer3(enc2, domains)
        enc4 = self.layer4(enc3, domains)
        return [enc0, enc1, enc2, enc3, enc4]


def _make_layer(
    block: type[BasicBlock] | type[Bottleneck], cin: int, planes: int, depth: int, stride: int
) -> tuple[DomainSequential, int]:
    cout = planes * block.expansion
    downsample = None
    if stride != 1 or cin != cout:
        downsample = DomainSequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
    blocks = [block(cin, planes, stride, downsample)]
    blocks += [block(cout, planes) for _ in range(depth - 1)]
    return DomainSequential(*blocks), cout


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
