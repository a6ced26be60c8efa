"""Pretrained encoder weights: torchvision's ImageNet ResNets or a local state dict file.

The encoder's parameter names are torchvision's, so a torchvision state dict maps one to one;
``fc.*`` is ignored. The encoder's input channels are a grey slice and its context slices
(:mod:`jointseg.data.context`), never colours: the pretrained first convolution is summed over
its input channels (the response to a grey image replicated to RGB) and spread evenly over the
``k`` input channels, so that ``k`` identical slices give the pretrained grey response. In a
domain-specific encoder every domain's BN is seeded with the file's BN.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn

from jointseg.models.keys import mismatch_report
from jointseg.models.resnet import ResNetEncoder

IMAGENET_URLS: dict[str, str] = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
}
_DOMAIN_KEY = re.compile(r"\.bns\.\d+\.")


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights that cannot be fetched or do not fit the encoder."""


def load_encoder_weights(net_or_encoder: nn.Module, source: str) -> None:
    """Load ``source`` ("none" | "imagenet" | path to a state dict) into the encoder.

    ``net_or_encoder`` is a :class:`JointSegNet` (its ``encoder`` is used) or a
    :class:`ResNetEncoder`. Files are read with ``torch.load(weights_only=True)`` (or
    safetensors for ``.safetensors``). Raises :class:`PretrainedWeightsError` naming the problem.
    """
    encoder = getattr(net_or_encoder, "encoder", net_or_encoder)
    if not isinstance(encoder, ResNetEncoder):
        raise TypeError(f"expected a JointSegNet or ResNetEncoder, got {type(net_or_encoder)}")
    if source in ("", "none"):
        return
    if encoder.width != 1.0:
        raise PretrainedWeightsError(
            f"pretrained encoder weights need model.width 1.0, this encoder has width "
            f"{encoder.width}; set model.encoder_weights to 'none' for a narrower network"
        )
    if source == "imagenet":
        state = imagenet_state_dict(encoder.arch)
    else:
        state = read_state_dict(Path(source))
    encoder.load_state_dict(torchvision_to_encoder(encoder, state, source), strict=False)


def imagenet_state_dict(arch: str) -> dict[str, Tensor]:
    """torchvision's ImageNet (IMAGENET1K_V1) weights for ``arch``, from the torch hub cache.

    Downloads when the file is not cached; offline, place the file in the cache or pass its path.
    """
    if arch not in IMAGENET_URLS:
        raise PretrainedWeightsError(f"no ImageNet weights known for {arch!r}")
    url = IMAGENET_URLS[arch]
    try:
        return torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
    except Exception as error:  # network errors come in many types; all mean the same here
        filename = url.rsplit("/", 1)[-1]
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise PretrainedWeightsError(
            f"could not fetch ImageNet weights for {arch} from {url} ({error}).\n"
            f"Download {filename} on a machine with network access, e.g.\n"
            f"    curl -L -o {filename} {url}\n"
            f"then either copy it to {cache}/{filename} (the torch hub cache, used offline)\n"
            f"or set model.encoder_weights to its path, e.g. encoder_weights: /path/to/{filename}"
        ) from error


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A state dict from a ``.pth``/``.pt`` file (weights only) or a ``.safetensors`` file."""
    if not path.is_file():
        raise PretrainedWeightsError(
            f"encoder weights file not found: {path} (model.encoder_weights takes 'none', "
            "'imagenet' or the path of a state dict)"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise PretrainedWeightsError(f"{path}: not a readable state dict ({error})") from error
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{path}: expected a state dict, found {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, Tensor)}


def adapt_first_conv(weight: Tensor, in_channels: int) -> Tensor:
    """Fit a pretrained first convolution [O, C, h, w] (C = 3: RGB) to ``in_channels`` slices.

    The sum over C (the grey weights) divided by ``in_channels`` on every channel: a slice
    replicated over the channels gives the response of the grey image, whatever C and
    ``in_channels`` are (three context slices are not colours).
    """
    total = weight.sum(dim=1, keepdim=True)
    return (total / in_channels).repeat(1, in_channels, 1, 1)


def torchvision_to_encoder(
    encoder: ResNetEncoder, state: dict[str, Tensor], source: str = "<state dict>"
) -> dict[str, Tensor]:
    """Map a torchvision ResNet state dict onto ``encoder``'s keys (every BN domain seeded).

    Raises :class:`PretrainedWeightsError` listing missing keys, unexpected keys and mismatched
    shapes. ``fc.*`` is ignored; ``num_batches_tracked`` may be absent.
    """
    target = encoder.state_dict()
    mapped: dict[str, Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    mismatched: list[str] = []
    for key, current in target.items():
        name = _DOMAIN_KEY.sub(".", key)
        if name not in state:
            if not name.endswith("num_batches_tracked"):
                missing.append(name)  # collapsed to layers in the report
            continue
        used.add(name)
        value = state[name]
        if name == "conv1.weight" and value.dim() == 4:
            value = adapt_first_conv(value, current.shape[1])
        if tuple(value.shape) != tuple(current.shape):
            mismatched.append(f"{name}: file {tuple(value.shape)}, encoder {tuple(current.shape)}")
            continue
        mapped[key] = value.to(dtype=current.dtype)
    unexpected = sorted(k for k in state if k not in used and not k.startswith("fc."))
    if missing or mismatched or unexpected:
        header = f"{source} does not fit a {encoder.arch} encoder:"
        raise PretrainedWeightsError(
            mismatch_report(header, mismatched, list(dict.fromkeys(missing)), unexpected)
        )
    return mapped
