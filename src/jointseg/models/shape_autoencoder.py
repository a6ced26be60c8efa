"""Convolutional auto-encoder of label maps: the multi-joint shape prior's representation.

The input is a [B, K, H, W] map of class probabilities (one-hot ground truth or a softmax
prediction) in the union label space. It is first averaged over ``pool`` x ``pool`` blocks (a
shape prior needs the outline, not every pixel, and this makes it four times cheaper at
``pool=2``); the code is a [B, code_channels, H/(pool 2^depth), W/(pool 2^depth)] map, and the
decoder's logits are upsampled (bilinear) back to H x W. Normalization is GroupNorm, and
nothing depends on ``train()``/``eval()``: the frozen prior behaves the same inside a training
loop that switches its parent module to train mode.

Saved in the package's one model-folder format (:mod:`jointseg.models.checkpoint`) as
``shape_autoencoder.safetensors`` (weights) + ``shape_autoencoder.json`` (format
``jointseg-shape-autoencoder``, architecture, metadata); folders written before that format
(a flat ``{"format_version": 1, <architecture>, "metadata"}`` index) still load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jointseg.models.checkpoint import (
    check_index,
    load_module_weights,
    read_json_index,
    save_module,
)

WEIGHTS_FILE = "shape_autoencoder.safetensors"
CONFIG_FILE = "shape_autoencoder.json"
FORMAT = "jointseg-shape-autoencoder"
LEGACY_FORMAT_VERSION = 1  # the flat index of folders written before the common format


def _norm(channels: int) -> nn.GroupNorm:
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def _block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        _norm(out_channels),
        nn.LeakyReLU(0.1, inplace=True),
    )


class ShapeAutoencoder(nn.Module):
    """Label-map auto-encoder: ``pool`` x ``pool`` averaging, then ``depth`` stride-2 stages
    down to the code, and back up.

    Stage ``i`` has ``base_channels * 2^i`` channels (at most ``8 * base_channels``).
    """

    def __init__(
        self,
        num_classes: int,
        base_channels: int = 16,
        code_channels: int = 16,
        depth: int = 4,
        pool: int = 1,
    ):
        super().__init__()
        if num_classes < 2 or base_channels < 1 or code_channels < 1 or depth < 1 or pool < 1:
            raise ValueError("need num_classes >= 2 and positive channels, depth and pool")
        self.num_classes = num_classes
        self.base_channels = base_channels
        self.code_channels = code_channels
        self.depth = depth
        self.pool = pool
        widths = [base_channels * min(2**i, 8) for i in range(depth)]

        encoder: list[nn.Module] = []
        previous = num_classes
        for width in widths:
            encoder += [_block(previous, width, stride=2), _block(width, width)]
            previous = width
        encoder.append(nn.Conv2d(previous, code_channels, 1))
        self.encoder = nn.Sequential(*encoder)

        decoder: list[nn.Module] = [_block(code_channels, widths[-1])]
        previous = widths[-1]
        for width in reversed(widths):
            decoder += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                _block(previous, width),
                _block(width, width),
            ]
            previous = width
        decoder.append(nn.Conv2d(previous, num_classes, 1))
        self.decoder = nn.Sequential(*decoder)

    @property
    def factor(self) -> int:
        """Spatial downsampling factor between a label map and its code."""
        return self.pool * 2**self.depth

    def architecture(self) -> dict[str, int]:
        return {
            "num_classes": self.num_classes,
            "base_channels": self.base_channels,
            "code_channels": self.code_channels,
            "depth": self.depth,
            "pool": self.pool,
        }

    def encode(self, x: Tensor) -> Tensor:
        """[B, K, H, W] probabilities or one-hot -> code [B, code, H/factor, W/factor]."""
        if x.dim() != 4 or x.shape[1] != self.num_classes:
            raise ValueError(
                f"expected [B, {self.num_classes}, H, W] class maps, got {tuple(x.shape)}"
            )
        if x.shape[2] % self.factor or x.shape[3] % self.factor:
            raise ValueError(
                f"height and width must be multiples of {self.factor}, got {tuple(x.shape[2:])}"
            )
        if self.pool > 1:
            x = F.avg_pool2d(x, self.pool)
        return self.encoder(x)

    def decode(self, code: Tensor) -> Tensor:
        """Code -> [B, K, H, W] logits."""
        logits = self.decoder(code)
        if self.pool > 1:
            logits = F.interpolate(
                logits, scale_factor=self.pool, mode="bilinear", align_corners=False
            )
        return logits

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def freeze(self) -> ShapeAutoencoder:
        """Eval mode and ``requires_grad=False`` on every parameter; returns ``self``."""
        self.eval()
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return self


class LatentDiscriminator(nn.Module):
    """Tells codes of ground-truth label maps from codes of predictions: codes -> logit [B]."""

    def __init__(self, code_channels: int = 16, hidden_channels: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(code_channels, hidden_channels, 3, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(hidden_channels, 1),
        )

    def forward(self, code: Tensor) -> Tensor:
        return self.net(code).squeeze(1)


def save_autoencoder(
    ae: ShapeAutoencoder, directory: Path, metadata: dict[str, Any] | None = None
) -> None:
    """Write weights (safetensors) and architecture (+ ``metadata``, JSON) into ``directory``."""
    save_module(
        ae, directory, ae.architecture(), metadata,
        format=FORMAT, weights_file=WEIGHTS_FILE, index_file=CONFIG_FILE,
    )  # fmt: skip


def _read_index(directory: Path) -> dict[str, Any]:
    """The folder's index in the common format (a legacy flat index converted)."""
    index = read_json_index(directory, CONFIG_FILE)
    if "format" not in index and index.get("format_version") == LEGACY_FORMAT_VERSION:
        metadata = index.get("metadata", {})
        architecture = {k: v for k, v in index.items() if k not in ("format_version", "metadata")}
        return {"architecture": architecture, "metadata": metadata}
    return check_index(index, Path(directory) / CONFIG_FILE, FORMAT)


def load_autoencoder(directory: Path, device: str | torch.device = "cpu") -> ShapeAutoencoder:
    """Load a saved auto-encoder (``directory`` or its weights file), eval mode and frozen."""
    directory = Path(directory)
    if directory.name == WEIGHTS_FILE:
        directory = directory.parent
    for path in (directory / WEIGHTS_FILE, directory / CONFIG_FILE):
        if not path.is_file():
            raise FileNotFoundError(
                f"shape auto-encoder file missing: {path} (a saved auto-encoder folder holds "
                f"{WEIGHTS_FILE} and {CONFIG_FILE})"
            )
    config = _read_index(directory)["architecture"]
    ae = ShapeAutoencoder(
        num_classes=int(config["num_classes"]),
        base_channels=int(config["base_channels"]),
        code_channels=int(config["code_channels"]),
        depth=int(config["depth"]),
        pool=int(config.get("pool", 1)),
    )
    load_module_weights(ae, directory, WEIGHTS_FILE)
    return ae.to(device).freeze()


def is_saved_autoencoder(directory: Path) -> bool:
    """Whether ``directory`` holds both files of a saved auto-encoder."""
    directory = Path(directory)
    return (directory / WEIGHTS_FILE).is_file() and (directory / CONFIG_FILE).is_file()


def autoencoder_metadata(directory: Path) -> dict[str, Any]:
    """The metadata saved with an auto-encoder (e.g. its training report)."""
    return dict(_read_index(directory).get("metadata", {}))
