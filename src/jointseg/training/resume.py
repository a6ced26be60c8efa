"""What a resumed run needs beyond Lightning's own checkpoint state (model, optimizer, scheduler,
step and epoch counters, callbacks): the global random states, and the metrics logged so far.

A checkpoint is written at the end of an epoch; a run killed later resumes from it and repeats
the epochs after it exactly (batches are drawn from (seed, epoch), augmentation is reseeded per
epoch, and :class:`RandomStates` restores the global generators, from which DataLoader workers
are seeded).
"""

from __future__ import annotations

import csv
import logging
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger

from jointseg.runs import RunFolder
from jointseg.utils.atomic import remove_temporaries

log = logging.getLogger(__name__)


class RandomStates(L.Callback):
    """Saves the Python, NumPy and torch (CPU, CUDA) generator states in every checkpoint and
    restores them on resume. Stored as tensors and lists, loadable with ``weights_only``."""

    def state_dict(self) -> dict[str, Any]:
        version, python_state, gauss = random.getstate()
        kind, keys, position, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
        state: dict[str, Any] = {
            "python": [version, torch.tensor(python_state, dtype=torch.int64), gauss],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version, python_state, gauss = state_dict["python"]
        random.setstate((version, tuple(int(v) for v in python_state.tolist()), gauss))
        kind, keys, position, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class FlushLogs(L.Callback):
    """Writes the loggers' pending rows at every epoch start: a killed run keeps its earlier
    epochs' metrics on disk."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            logger.save()


class ResumableCSVLogger(CSVLogger):
    """A CSV logger that, resuming after epoch ``keep_through``, keeps the rows of the epochs up
    to it (Lightning's would delete them) and drops the rest, which the run repeats."""

    def __init__(self, save_dir: Path, name: str, keep_through: int | None = None) -> None:
        super().__init__(save_dir, name=name, version="")
        self._keep_through = keep_through

    @property
    def experiment(self):  # type: ignore[override]
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / "metrics.csv"
        header, rows = _rows_through(path, self._keep_through)
        writer = super().experiment  # removes the previous metrics.csv
        if rows:
            writer.metrics_keys = header
            writer.metrics = rows
            writer.save()
        return writer


def _rows_through(path: Path, epoch: int | None) -> tuple[list[str], list[dict[str, Any]]]:
    if epoch is None or not path.is_file():
        return [], []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        rows = [row for row in reader if row.get("epoch") and float(row["epoch"]) <= epoch]
    return header, rows


def checkpoint_epoch(path: Path) -> int:
    """The epoch a trainer checkpoint was written at (read without loading its tensors)."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(state["epoch"])


def clean_run_folder(out: Path) -> None:
    """Remove the temporary files that a killed run left in its checkpoint and model folders."""
    run = RunFolder(out)
    for folder in (run.checkpoints_dir, run.models_dir):
        for path in remove_temporaries(folder, recursive=True):
            log.info("removed %s, left by an interrupted write", path)
