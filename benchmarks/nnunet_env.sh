#!/usr/bin/env bash
# nnU-Net v2, the peer of benchmarks/quality.py and benchmarks/speed.py, in its own virtualenv.
#
#     bash benchmarks/nnunet_env.sh            # create benchmarks/.nnunet-venv (once) + trainer
#     NNUNET_VENV=/elsewhere bash benchmarks/nnunet_env.sh
#
# nnU-Net is never a dependency of jointseg: it lives in benchmarks/.nnunet-venv (git-ignored).
# Pinning torch==2.13.0 and torchvision==0.28.0 in the same install keeps pip from replacing the
# CPU torch with a CUDA build pulled in through timm -> torchvision. torchvision's compiled
# operators still fail to load against the CPU torch (`torchvision::nms does not exist`), so
# nnU-Net's trainer lookup crashes on its `primus` trainers (timm -> torchvision) before it
# reaches the shipped short trainers. The budget trainer written below sits at the top of
# nnunetv2/training/nnUNetTrainer/, where the lookup finds it before descending into packages.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${NNUNET_VENV:-$HERE/.nnunet-venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/nnUNetv2_train" ]; then
    echo "[nnunet_env] creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet nnunetv2 torch==2.13.0 torchvision==0.28.0
fi

TRAINER_DIR="$("$VENV/bin/python" - <<'EOF'
import importlib.util, os
spec = importlib.util.find_spec("nnunetv2")
print(os.path.join(os.path.dirname(spec.origin), "training", "nnUNetTrainer"))
EOF
)"

cat > "$TRAINER_DIR/nnUNetTrainerBudget.py" <<'EOF'
"""A short-budget nnU-Net trainer for the jointseg benchmarks (written by nnunet_env.sh).

Environment variables (all optional):
  NNUNET_BUDGET_ITERATIONS   training iterations per epoch (default 250, nnU-Net's)
  NNUNET_BUDGET_EPOCHS       epochs (default 1000, nnU-Net's)
  NNUNET_BUDGET_SECONDS      cap of the training loop in wall-clock seconds; the polynomial
                             learning-rate schedule is stretched over the epochs that the mean
                             epoch time so far predicts to fit, re-estimated after every epoch
                             (never more than NNUNET_BUDGET_EPOCHS)
  NNUNET_BUDGET_CPU_SECONDS  the same cap in CPU seconds of this process (all its threads;
                             with nnUNet_n_proc_DA=0 augmentation runs in it too), which other
                             load on the machine does not stretch; used instead of the former
  NNUNET_BUDGET_VAL_ITERATIONS  validation batches per epoch (default 50, nnU-Net's)
  NNUNET_BUDGET_PLATEAU_PATIENCE  stop once nnU-Net's EMA pseudo-Dice of the validation batches
                             has not risen by more than NNUNET_BUDGET_PLATEAU_MIN_DELTA
                             (default 0) for this many epochs in a row (default 0: never);
                             NNUNET_BUDGET_EPOCHS stays the cap
  NNUNET_BUDGET_FINAL_VALIDATION  1 to run nnU-Net's validation of the held-out fold at the
                             end (default 0: the benchmarks predict imagesTs themselves)
Writes budget.json (epochs, iterations, seconds, each step's seconds including its data
wait) into the output folder.
"""

import json
import os
import time

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


def _env(name, default, kind=int):
    value = os.environ.get(name)
    return default if value in (None, "") else kind(value)


class nnUNetTrainerBudget(nnUNetTrainer):
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
        self.plateau_patience = _env("NNUNET_BUDGET_PLATEAU_PATIENCE", 0)
        self.plateau_min_delta = _env("NNUNET_BUDGET_PLATEAU_MIN_DELTA", 0.0, float)

    def _plateau(self, state):
        """True once the EMA pseudo-Dice stopped improving for plateau_patience epochs."""
        if not self.plateau_patience:
            return False
        ema = self.logger.my_fantastic_logging.get("ema_fg_dice") or []
        if not ema:
            return False
        if ema[-1] > state["best"] + self.plateau_min_delta:
            state["best"], state["wait"] = ema[-1], 0
        else:
            state["wait"] += 1
        return state["wait"] >= self.plateau_patience

    def run_training(self):
        self.on_train_start()
        clock = time.process_time if self.budget_cpu else time.perf_counter
        started = clock()
        wall_started = time.perf_counter()
        cpu_started = time.process_time()
        iterations = 0
        epochs_run = 0
        step_seconds = []
        cap = self.num_epochs
        plateau = {"best": float("-inf"), "wait": 0}
        stopped_on_plateau = False
        for epoch in range(self.current_epoch, cap):
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = []
            for _ in range(self.num_iterations_per_epoch):
                tic = time.perf_counter()
                outputs.append(self.train_step(next(self.dataloader_train)))
                step_seconds.append(time.perf_counter() - tic)
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
            elapsed = clock() - started
            if self.budget_seconds:  # as many epochs as fit, the schedule stretched over them
                per_epoch = elapsed / epochs_run
                remaining = int((self.budget_seconds - elapsed) / per_epoch + 0.5)
                self.num_epochs = min(cap, epoch + 1 + max(0, remaining))
                self.lr_scheduler.max_steps = self.num_epochs
            last = epoch + 1 >= self.num_epochs
            self.on_epoch_end()
            if self._plateau(plateau):
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
            "patch_size": list(self.configuration_manager.patch_size),
            "seconds": time.perf_counter() - wall_started,
            "cpu_seconds": time.process_time() - cpu_started,
            "budget_seconds": self.budget_seconds,
            "budget_clock": "cpu" if self.budget_cpu else "wall",
            "stopped_on_plateau": stopped_on_plateau,
            "step_seconds": step_seconds,
        }
        with open(os.path.join(self.output_folder, "budget.json"), "w") as handle:
            json.dump(record, handle, indent=1)

    def perform_actual_validation(self, save_probabilities=False):
        if self.final_validation:
            super().perform_actual_validation(save_probabilities)
EOF
echo "[nnunet_env] trainer nnUNetTrainerBudget in $TRAINER_DIR" >&2
echo "$VENV"
