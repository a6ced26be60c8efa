"""Training in pieces: stop at an epoch boundary once a wall-clock budget is spent.

:class:`TimeBudget` ends ``fit`` with :class:`TrainingPaused` at the start of the first epoch
after ``seconds`` have passed whose previous epoch is saved in the run's ``last.ckpt`` (the
runner's checkpoint of file name ``last``). The exception leaves the run folder as a killed run
would, minus the lost epoch: no model is exported, and ``train_run(..., resume=True)``
(``jointseg train --resume``) continues from the checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from jointseg.training.resume import checkpoint_epoch

LAST = "last"  # the file name (without .ckpt) of the runner's every-epoch checkpoint


class TrainingPaused(RuntimeError):
    """Training stopped at an epoch boundary after its time budget; resume to continue."""

    def __init__(self, epoch: int, seconds: float, checkpoint: Path):
        self.epoch = epoch  # the last finished epoch (0-based), saved in ``checkpoint``
        self.seconds = seconds
        self.checkpoint = checkpoint
        super().__init__(
            f"training paused after {seconds:.0f} s at the end of epoch {epoch + 1} "
            f"({checkpoint}); resume to continue"
        )


def last_checkpoint(trainer: L.Trainer) -> Path | None:
    """The trainer's every-epoch checkpoint file (``last.ckpt``), or None without one."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.filename == LAST:
            return Path(callback.dirpath or ".") / f"{LAST}{callback.FILE_EXTENSION}"
    return None


class TimeBudget(L.Callback):
    """Raises :class:`TrainingPaused` at an epoch start once ``seconds`` have passed since
    ``fit`` began, provided this ``fit`` trained an epoch and ``last.ckpt`` holds the epoch
    just finished (nothing is lost, and every piece makes progress)."""

    def __init__(self, seconds: float):
        if seconds < 0:
            raise ValueError(f"the time budget must be >= 0 seconds, got {seconds}")
        self.seconds = float(seconds)
        self.started = time.perf_counter()
        self.first_epoch: int | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()
        self.first_epoch = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.first_epoch is None:
            self.first_epoch = trainer.current_epoch
        elapsed = time.perf_counter() - self.started
        finished = trainer.current_epoch - 1
        checkpoint = last_checkpoint(trainer)
        if elapsed < self.seconds or finished < self.first_epoch or checkpoint is None:
            return
        if not checkpoint.is_file() or checkpoint_epoch(checkpoint) != finished:
            return  # the last epoch is not saved yet (validation every n epochs): go on
        raise TrainingPaused(finished, elapsed, checkpoint)


__all__ = ["TimeBudget", "TrainingPaused", "last_checkpoint"]
