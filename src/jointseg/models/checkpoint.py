"""Model folders: weights (safetensors) beside an index (JSON: format, architecture, metadata).

Every saved module of the package has this one format; what differs is the file names and the
``format`` tag. A segmentation network: ``model.safetensors`` + ``model.json``::

    {"format": "jointseg-model", "version": 1,
     "architecture": {"model": <ModelConfig>, "head_classes": [...], "domain_specific_bn": bool},
     "metadata": {...}}

The shape auto-encoder (:mod:`jointseg.models.shape_autoencoder`) is saved the same way under its
own names. Weights are stored with safetensors (no pickle), so loading runs no code from the file.
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


def save_module(
    module: nn.Module,
    directory: Path,
    architecture: dict[str, Any],
    metadata: dict | None = None,
    *,
    format: str = FORMAT,
    weights_file: str = WEIGHTS_FILE,
    index_file: str = INDEX_FILE,
) -> None:
    """Write ``module``'s weights and its index (format, architecture, metadata) atomically."""
    directory = Path(directory)
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    with atomic_path(directory / weights_file) as tmp:
        # one metadata entry: safetensors writes several in a per-process hash order, and the
        # same weights must give the same bytes
        tag = json.dumps({"format": format, "architecture": architecture}, sort_keys=True)
        save_file(state, str(tmp), metadata={"jointseg": tag})
    index = {
        "format": format, "version": VERSION, "architecture": architecture,
        "metadata": metadata or {},
    }  # fmt: skip
    atomic_write_json(directory / index_file, index)


def save_model(net: JointSegNet, directory: Path, metadata: dict | None = None) -> None:
    """Write ``directory/model.safetensors`` and ``directory/model.json`` atomically."""
    save_module(net, directory, architecture(net), metadata)


def read_json_index(directory: Path, index_file: str = INDEX_FILE) -> dict[str, Any]:
    """The parsed index file of a saved folder, unchecked (a clear error when absent/invalid)."""
    path = Path(directory) / index_file
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {index_file}; not a saved model folder")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: invalid JSON ({error})") from None


def check_index(index: dict[str, Any], path: Path, format: str = FORMAT) -> dict[str, Any]:
    """``index`` when it is of ``format`` and this version, else a :class:`CheckpointError`."""
    if index.get("format") != format or index.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: unsupported format {index.get('format')!r} version {index.get('version')!r}"
        )
    return index


def read_index(directory: Path) -> dict[str, Any]:
    """The parsed ``model.json`` of a model folder, checked for format and version."""
    return check_index(read_json_index(directory), Path(directory) / INDEX_FILE)


def load_module_weights(
    module: nn.Module,
    directory: Path,
    weights_file: str = WEIGHTS_FILE,
    source: str = "",
    exclude: Sequence[str] = (),
) -> None:
    """Load ``directory/weights_file`` into ``module`` (every mismatch in one clear error;
    ``source`` is appended to the file's name in it; ``exclude`` as in :func:`load_weights`)."""
    path = Path(directory) / weights_file
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {weights_file}")
    state = load_file(str(path))
    load_state_checked(module, state, source=f"{path}{source}", exclude=exclude)


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
    source = ""
    if (Path(directory) / INDEX_FILE).is_file():
        arch = read_index(directory)["architecture"]
        source = (
            f" ({arch['model']['encoder']}, width {arch['model']['width']}, heads "
            f"{arch['head_classes']}, domain_specific_bn={arch['domain_specific_bn']})"
        )
    load_module_weights(net, directory, WEIGHTS_FILE, source, exclude)


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
