"""Model folders: ``model.safetensors`` (weights) beside ``model.json`` (architecture, metadata).

``model.json``::

    {"format": "jointseg-model", "version": 1,
     "architecture": {"model": <ModelConfig>, "head_classes": [...], "domain_specific_bn": bool},
     "metadata": {...}}

Weights are stored with safetensors (no pickle), so loading runs no code from the file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from jointseg.config import ModelConfig
from jointseg.models.keys import mismatch_report
from jointseg.models.network import JointSegNet, build_model
from jointseg.utils.atomic import atomic_path, atomic_write_json

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.json"
FORMAT = "jointseg-model"
VERSION = 1


class CheckpointError(ValueError):
    """A model folder that cannot be loaded; the message names the folder and the layers."""


def architecture(net: JointSegNet) -> dict[str, Any]:
    """What it takes to rebuild ``net``: its ModelConfig, head classes and BN kind."""
    return {
        "model": net.cfg.model_dump(mode="json"),
        "head_classes": list(net.head_classes),
        "domain_specific_bn": net.domain_specific_bn,
    }


def save_model(net: JointSegNet, directory: Path, metadata: dict | None = None) -> None:
    """Write ``directory/model.safetensors`` and ``directory/model.json`` atomically."""
    directory = Path(directory)
    arch = architecture(net)
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT, "architecture": json.dumps(arch)})
    index = {"format": FORMAT, "version": VERSION, "architecture": arch, "metadata": metadata or {}}
    atomic_write_json(directory / INDEX_FILE, index)


def read_index(directory: Path) -> dict[str, Any]:
    """The parsed ``model.json`` of a model folder, checked for format and version."""
    path = Path(directory) / INDEX_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {INDEX_FILE}; not a saved model folder")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: invalid JSON ({error})") from None
    if index.get("format") != FORMAT or index.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: unsupported format {index.get('format')!r} version {index.get('version')!r}"
        )
    return index


def load_model(
    directory: Path, map_location: str | torch.device = "cpu"
) -> tuple[JointSegNet, dict]:
    """Rebuild the network saved in ``directory``; returns (net in eval mode, metadata)."""
    directory = Path(directory)
    index = read_index(directory)
    arch = index["architecture"]
    cfg = ModelConfig.model_validate(arch["model"])
    net = build_model(cfg, arch["head_classes"], arch["domain_specific_bn"], pretrained=False)
    load_weights(net, directory)
    net.to(map_location)
    return net.eval(), dict(index.get("metadata", {}))


def load_weights(net: nn.Module, directory: Path, exclude: Sequence[str] = ()) -> None:
    """Load the weights saved in ``directory`` into an existing ``net``.

    Keys starting with any prefix in ``exclude`` (e.g. ``"heads."``) are skipped on both sides,
    e.g. to start a fine-tuning from another scheme's network. Raises :class:`CheckpointError`
    naming mismatched layers, missing and unexpected keys.
    """
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS_FILE}")
    state = load_file(str(path))
    source = str(path)
    if (Path(directory) / INDEX_FILE).is_file():
        arch = read_index(directory)["architecture"]
        source += (
            f" ({arch['model']['encoder']}, width {arch['model']['width']}, heads "
            f"{arch['head_classes']}, domain_specific_bn={arch['domain_specific_bn']})"
        )
    load_state_checked(net, state, source=source, exclude=exclude)


def load_state_checked(
    module: nn.Module, state: dict[str, Tensor], source: str = "state", exclude: Sequence[str] = ()
) -> None:
    """``module.load_state_dict`` that first lists every mismatch in one clear error."""
    prefixes = tuple(exclude)
    keep = (lambda key: not key.startswith(prefixes)) if prefixes else (lambda key: True)
    target = {k: v for k, v in module.state_dict().items() if keep(k)}
    given = {k: v for k, v in state.items() if keep(k)}
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)}, model {tuple(target[k].shape)}"
        for k, v in given.items()
        if k in target and tuple(v.shape) != tuple(target[k].shape)
    ]
    missing = [k for k in target if k not in given]
    unexpected = [k for k in given if k not in target]
    if mismatched or missing or unexpected:
        header = f"{source} does not fit this model:"
        raise CheckpointError(mismatch_report(header, mismatched, missing, unexpected))
    module.load_state_dict(given, strict=not prefixes)
