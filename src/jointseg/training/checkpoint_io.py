"""Trainer checkpoints written atomically and loaded without unpickling arbitrary objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from jointseg.utils.atomic import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file renamed into place; ``torch.load(weights_only=True)``.

    A process killed at any moment leaves the previous checkpoint intact.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path, storage_options: Any | None = None
    ) -> None:
        with atomic_path(Path(path)) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None):
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
