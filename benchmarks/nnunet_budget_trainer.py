"""A short-budget nnU-Net trainer for the jointseg benchmarks.

``benchmarks/nnunet_env.sh`` copies this file into nnU-Net's virtualenv as
``nnunetv2/training/nnUNetTrainer/nnUNetTrainerBudget.py``, where nnU-Net's trainer lookup finds
it (``nnUNetv2_train ... -tr nnUNetTrainerBudget``). It is never imported by jointseg.

Environment variables (all optional):

- ``NNUNET_BUDGET_ITERATIONS``: training iterations per epoch (default 250, nnU-Net's).
- ``NNUNET_BUDGET_EPOCHS``: epochs (default 1000, nnU-Net's); the cap of every other rule.
- ``NNUNET_BUDGET_SECONDS``: cap of the training loop in wall-clock seconds; the polynomial
  learning-rate schedule is stretched over the epochs that the mean epoch time so far predicts
  to fit, re-estimated after every epoch.
- ``NNUNET_BUDGET_CPU_SECONDS``: the same cap in CPU seconds of this process (all its threads;
  with ``nnUNet_n_proc_DA=0`` augmentation runs in it too); used instead of the former.
- ``NNUNET_BUDGET_VAL_ITERATIONS``: validation batches per epoch (default 50, nnU-Net's).
- ``NNUNET_BUDGET_PLATEAU_PATIENCE``: stop once nnU-Net's EMA pseudo-Dice of the validation
  batches has not risen by more than ``NNUNET_BUDGET_PLATEAU_MIN_DELTA`` (default 0) for this
  many epochs in a row (default 0: never).
- ``NNUNET_BUDGET_PLATEAU_MIN_EPOCHS``: the plateau rule counts only the epochs after this many
  (default 0). nnU-Net's pseudo-Dice often falls to 0 in its first epochs, while the network
  first learns the background, so an EMA that has not yet risen is no plateau.
- ``NNUNET_BUDGET_PLATEAU_FLOOR``: nor is an EMA whose best is below this (default 0.05), at
  any epoch: a network that has learnt only the background (an EMA at 0, or decaying from the
  chance overlap of its first epochs) trains on to the cap instead of stopping on a "plateau"
  at Dice 0.
- ``NNUNET_BUDGET_THREADS``: torch's intra-op threads (default: nnU-Net's, every core).
- ``NNUNET_BUDGET_FINAL_VALIDATION``: 1 to run nnU-Net's validation of the held-out fold at
  the end (default 0: the benchmarks predict their test images themselves).

Writes ``budget.json`` (epochs, iterations, threads, seconds, each step's wall and CPU seconds
including its data loading and augmentation) into the output folder.
"""

import json
import os
import time

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


def _env(name, default, kind=int):
    value = os.environ.get(name)
    return default if value in (None, "") else kind(value)


def epochs_that_fit(budget, elapsed, epochs_run, epoch, cap):
    """The epoch count (at most ``cap``) that the mean epoch time so far predicts to fit in
    ``budget`` seconds, after ``epochs_run`` epochs took ``elapsed``; ``epoch`` is the index of
    the epoch just finished, so the result is never below ``epoch + 1``."""
    per_epoch = elapsed / epochs_run
    remaining = int((budget - elapsed) / per_epoch + 0.5) if per_epoch > 0 else cap
    return min(cap, epoch + 1 + max(0, remaining))


class Plateau:
    """The plateau rule of jointseg's training: stop after ``patience`` values in a row that
    do not exceed the best so far by more than ``min_delta`` (patience 0: never), counted only
    once the best has reached ``floor``."""

    def __init__(self, patience, min_delta=0.0, floor=0.05):
        self.patience = patience
        self.min_delta = min_delta
        self.floor = floor
        self.best = float("-inf")
        self.wait = 0

    def update(self, value):
        """Record a value; True when the rule stops."""
        if not self.patience:
            return False
        if value > self.best + self.min_delta:
            self.best, self.wait = value, 0
        elif self.best >= self.floor:  # below the floor the network has not started
            self.wait += 1
        return self.wait >= self.patience


class nnUNetTrainerBudget(nnUNetTrainer):  # noqa: N801 (nnU-Net's lookup needs this name)
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_iterations_per_epoch = _env("NNUNET_BUDGET_ITERATIONS", 250)
        self.num_epochs = _env("NNUNET_BUDGET_EPOCHS", 1000)
        self.num_val_iterations_per_epoch = _env("NNUNET_BUDGET_VAL_ITERATIONS", 50)
        self.budget_cpu = _env("NNUNET_BUDGET_CPU_SECONDS", 0.0, float) > 0
        self.budget_seconds = (
            _env("NNUNET_BUDGET_CPU_SECONDS", 0.0, float)
            if self.budget_cpu
            else _env("NNUNET_BUDGET_SECONDS", 0.0, float)
        )
        self.final_validation = bool(_env("NNUNET_BUDGET_FINAL_VALIDATION", 0))
        self.plateau = Plateau(
            _env("NNUNET_BUDGET_PLATEAU_PATIENCE", 0),
            _env("NNUNET_BUDGET_PLATEAU_MIN_DELTA", 0.0, float),
            _env("NNUNET_BUDGET_PLATEAU_FLOOR", 0.05, float),
        )
        self.plateau_min_epochs = _env("NNUNET_BUDGET_PLATEAU_MIN_EPOCHS", 0)
        threads = _env("NNUNET_BUDGET_THREADS", 0)
        if threads > 0:  # after nnUNetv2_train set every core for -device cpu
            torch.set_num_threads(threads)
        self.clock = time.process_time if self.budget_cpu else time.perf_counter

    def run_training(self):
        self.on_train_start()
        started = self.clock()
        wall_started = time.perf_counter()
        cpu_started = time.process_time()
        iterations = 0
        epochs_run = 0
        step_seconds, step_cpu_seconds = [], []
        cap = self.num_epochs
        stopped_on_plateau = False
        for epoch in range(self.current_epoch, cap):
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = []
            for _ in range(self.num_iterations_per_epoch):
                tic, cpu_tic = time.perf_counter(), time.process_time()
                outputs.append(self.train_step(next(self.dataloader_train)))
                step_seconds.append(time.perf_counter() - tic)
                step_cpu_seconds.append(time.process_time() - cpu_tic)
                iterations += 1
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [
                    self.validation_step(next(self.dataloader_val))
                    for _ in range(self.num_val_iterations_per_epoch)
                ]
                self.on_validation_epoch_end(val_outputs)
            epochs_run += 1
            if self.budget_seconds:  # as many epochs as fit, the schedule stretched over them
                elapsed = self.clock() - started
                self.num_epochs = epochs_that_fit(
                    self.budget_seconds, elapsed, epochs_run, epoch, cap
                )
                self.lr_scheduler.max_steps = self.num_epochs
            last = epoch + 1 >= self.num_epochs
            self.on_epoch_end()  # logs the EMA pseudo-Dice, saves checkpoint_best
            ema = self.logger.get_value("ema_fg_dice", step=-1)
            if epoch + 1 > self.plateau_min_epochs and self.plateau.update(float(ema)):
                stopped_on_plateau = True
                last = True
            if last:
                break
        self.on_train_end()
        record = {
            "epochs": epochs_run,
            "iterations": iterations,
            "iterations_per_epoch": self.num_iterations_per_epoch,
            "batch_size": self.batch_size,
            "patch_size": [int(p) for p in self.configuration_manager.patch_size],
            "threads": torch.get_num_threads(),
            "seconds": time.perf_counter() - wall_started,
            "cpu_seconds": time.process_time() - cpu_started,
            "budget_seconds": self.budget_seconds,
            "budget_clock": "cpu" if self.budget_cpu else "wall",
            "stopped_on_plateau": stopped_on_plateau,
            "step_seconds": step_seconds,
            "step_cpu_seconds": step_cpu_seconds,
        }
        with open(os.path.join(self.output_folder, "budget.json"), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)

    def perform_actual_validation(self, save_probabilities=False):
        if self.final_validation:
            super().perform_actual_validation(save_probabilities)
