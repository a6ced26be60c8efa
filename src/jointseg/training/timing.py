"""A Lightning callback that times each training step: what the speed benchmarks and the
pretrained model's recipe report as seconds per step."""

from __future__ import annotations

import time

import lightning as L


class StepTimer(L.Callback):
    """Wall time of each training step after ``warmup`` steps (``steps``), and the gap before
    each (``waits``: data loading and the loop between steps)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.steps: list[float] = []
        self.waits: list[float] = []
        self._end: float | None = None
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._end is not None and batch_idx >= self.warmup:
            self.waits.append(now - self._end)
        self._start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._end = time.perf_counter()
        if batch_idx >= self.warmup:
            self.steps.append(self._end - self._start)


__all__ = ["StepTimer"]
