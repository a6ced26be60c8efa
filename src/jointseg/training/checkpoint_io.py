"""Trainer checkpoints written atomically and loaded without unpickling arbitrary objects."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from jointseg.utils.atomic import atomic_write_bytes


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into memory, written to a temporary file renamed into place;
    ``torch.load(weights_only=True)``.

    A process killed at any moment, or a full disk, leaves the previous checkpoint intact; the
    latter raises :class:`jointseg.utils.atomic.DiskFullError` naming the checkpoint.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path, storage_options: Any | None = None
    ) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(Path(path), buffer.getbuffer())

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None):
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
