"""benchmarks/nnunet_budget_trainer.py: the plateau stop and the time budget of nnU-Net's short
trainer, driven through a stand-in for nnU-Net's base trainer (nnU-Net itself is not needed)."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

TRAINER_FILE = Path(__file__).resolve().parents[1] / "benchmarks" / "nnunet_budget_trainer.py"


class FakeClock:
    """Seconds that advance only when a step says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeBaseTrainer:
    """The hooks of nnU-Net's ``nnUNetTrainer`` that the budget trainer calls: one scripted
    pseudo-Dice per epoch, nnU-Net's EMA of it (0.9 old + 0.1 new), ``seconds_per_step`` on the
    clock per training step."""

    dice_per_epoch: list[float] = []
    seconds_per_step = 0.0
    clock_source: FakeClock | None = None

    def __init__(self, plans, configuration, fold, dataset_json, device=None) -> None:
        self.output_folder = plans["output_folder"]
        self.current_epoch = 0
        self.num_epochs = 1000
        self.batch_size = 8
        self.configuration_manager = SimpleNamespace(patch_size=(96, 96))
        self.lr_scheduler = SimpleNamespace(max_steps=None)
        self.ema: list[float] = []
        self.logger = SimpleNamespace(get_value=self._get_value)
        self.events: list[str] = []

    def _get_value(self, key: str, step: int | None):
        assert key == "ema_fg_dice"
        return self.ema if step is None else self.ema[step]

    def on_train_start(self) -> None:
        self.lr_scheduler.max_steps = self.num_epochs
        self.dataloader_train = iter(range(10**6))
        self.dataloader_val = iter(range(10**6))

    def on_epoch_start(self) -> None:
        pass

    def on_train_epoch_start(self) -> None:
        pass

    def train_step(self, batch) -> dict:
        if self.clock_source is not None:
            self.clock_source.now += self.seconds_per_step
        return {"loss": 0.0}

    def on_train_epoch_end(self, outputs) -> None:
        pass

    def on_validation_epoch_start(self) -> None:
        pass

    def validation_step(self, batch) -> dict:
        return {}

    def on_validation_epoch_end(self, outputs) -> None:
        value = self.dice_per_epoch[self.current_epoch]
        self.ema.append(value if not self.ema else 0.9 * self.ema[-1] + 0.1 * value)

    def on_epoch_end(self) -> None:
        self.current_epoch += 1

    def on_train_end(self) -> None:
        self.events.append("train_end")


@pytest.fixture
def trainer_module(monkeypatch: pytest.MonkeyPatch):
    """The trainer file imported against the stand-in base class."""
    names = [
        "nnunetv2",
        "nnunetv2.training",
        "nnunetv2.training.nnUNetTrainer",
        "nnunetv2.training.nnUNetTrainer.nnUNetTrainer",
    ]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules[names[-1]].nnUNetTrainer = FakeBaseTrainer
    spec = importlib.util.spec_from_file_location("nnUNetTrainerBudget", TRAINER_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for key in list(__import__("os").environ):
        if key.startswith("NNUNET_BUDGET_"):
            monkeypatch.delenv(key)
    return module


def _train(module, tmp_path: Path, clock: FakeClock | None = None):
    trainer = module.nnUNetTrainerBudget({"output_folder": str(tmp_path)}, "2d", 0, {})
    if clock is not None:
        trainer.clock = clock
    trainer.run_training()
    return trainer, json.loads((tmp_path / "budget.json").read_text(encoding="utf-8"))


def _budget(monkeypatch, **values) -> None:
    """Set the trainer's ``NNUNET_BUDGET_<KEY>`` variables."""
    for key, value in values.items():
        monkeypatch.setenv(f"NNUNET_BUDGET_{key.upper()}", str(value))


def test_plateau_stops_on_the_ema_pseudo_dice(trainer_module, tmp_path, monkeypatch) -> None:
    _budget(monkeypatch, iterations=3, epochs=30, val_iterations=1, plateau_patience=2)
    monkeypatch.setattr(FakeBaseTrainer, "dice_per_epoch", [0.5, 0.6, 0.6] + [0.4] * 27)
    monkeypatch.setattr(FakeBaseTrainer, "clock_source", None)
    threads = torch.get_num_threads()
    monkeypatch.setenv("NNUNET_BUDGET_THREADS", "1")
    try:
        trainer, record = _train(trainer_module, tmp_path)
    finally:
        torch.set_num_threads(threads)
    # EMA 0.5, 0.51, 0.519 (new bests), 0.5071, 0.49639: two epochs without a rise -> stop
    assert trainer.ema == pytest.approx([0.5, 0.51, 0.519, 0.5071, 0.49639])
    assert record["epochs"] == 5 and record["iterations"] == 15
    assert record["stopped_on_plateau"] is True and record["threads"] == 1
    assert len(record["step_seconds"]) == 15 and record["patch_size"] == [96, 96]
    assert trainer.events == ["train_end"]


def test_plateau_counts_only_after_the_minimum_epochs(
    trainer_module, tmp_path, monkeypatch
) -> None:
    _budget(
        monkeypatch,
        iterations=1,
        epochs=30,
        val_iterations=1,
        plateau_patience=2,
        plateau_min_epochs=4,
    )
    # the pseudo-Dice falls to 0 first (the background), then rises and stalls
    dice = [0.3, 0.0, 0.0, 0.0, 0.5, 0.8, 0.1] + [0.0] * 23
    monkeypatch.setattr(FakeBaseTrainer, "dice_per_epoch", dice)
    monkeypatch.setattr(FakeBaseTrainer, "clock_source", None)
    trainer, record = _train(trainer_module, tmp_path)
    # EMA 0.3, 0.27, 0.243, 0.2187 (not counted), then 0.24683 (best), 0.302147 (best),
    # 0.2819323, 0.25373907: two epochs without a rise after the best -> stop after 8 epochs
    assert trainer.ema == pytest.approx(
        [0.3, 0.27, 0.243, 0.2187, 0.24683, 0.302147, 0.2819323, 0.25373907]
    )
    assert record["epochs"] == 8 and record["stopped_on_plateau"] is True
    monkeypatch.delenv("NNUNET_BUDGET_PLATEAU_MIN_EPOCHS")
    (tmp_path / "without").mkdir()
    trainer, record = _train(trainer_module, tmp_path / "without")
    assert record["epochs"] == 3  # counted from the first epoch: 0.27, 0.243 below 0.3


def test_an_ema_that_never_left_zero_is_no_plateau(trainer_module, tmp_path, monkeypatch) -> None:
    _budget(monkeypatch, iterations=1, epochs=12, val_iterations=1, plateau_patience=2)
    # only the background for 8 epochs, then the foreground: EMA 0 x 8, 0.05, 0.095, ...
    dice = [0.0] * 8 + [0.5] * 4
    monkeypatch.setattr(FakeBaseTrainer, "dice_per_epoch", dice)
    monkeypatch.setattr(FakeBaseTrainer, "clock_source", None)
    trainer, record = _train(trainer_module, tmp_path)
    assert record["epochs"] == 12 and record["stopped_on_plateau"] is False
    assert trainer.ema[7] == 0 and trainer.ema[8] == pytest.approx(0.05)
    plateau = trainer_module.Plateau(2)
    assert [plateau.update(v) for v in (0.0, 0.0, 0.0, 0.2, 0.1, 0.1)] == [
        False, False, False, False, False, True
    ]  # fmt: skip
    # an EMA decaying from its first epochs' chance overlap (0.03) is below the floor 0.05
    decaying = trainer_module.Plateau(2)
    assert not any(decaying.update(0.03 * 0.9**k) for k in range(20))
    assert trainer_module.Plateau(2, floor=0.0).update(0.03) is False
    low = trainer_module.Plateau(2, floor=0.0)
    assert [low.update(v) for v in (0.03, 0.027, 0.024)] == [False, False, True]


def test_time_budget_stretches_the_schedule_over_the_epochs_that_fit(
    trainer_module, tmp_path, monkeypatch
) -> None:
    _budget(monkeypatch, iterations=2, val_iterations=1, seconds=10)
    clock = FakeClock()
    monkeypatch.setattr(FakeBaseTrainer, "dice_per_epoch", [0.1 * i for i in range(50)])
    monkeypatch.setattr(FakeBaseTrainer, "clock_source", clock)
    monkeypatch.setattr(FakeBaseTrainer, "seconds_per_step", 1.5)
    trainer, record = _train(trainer_module, tmp_path, clock)
    # 3 s an epoch: after epoch 1, 7 s left fit round(2.33) = 2 more -> 3 epochs in all;
    # after 2 and 3 the estimate stays at 3
    assert record["epochs"] == 3 and record["iterations"] == 6
    assert trainer.num_epochs == 3 and trainer.lr_scheduler.max_steps == 3
    assert record["stopped_on_plateau"] is False and record["budget_clock"] == "wall"


def test_epochs_that_fit_and_plateau_rule(trainer_module) -> None:
    fit = trainer_module.epochs_that_fit
    assert fit(100.0, 10.0, 1, 0, 1000) == 10  # 90 s left / 10 s per epoch: 9 more
    assert fit(100.0, 10.0, 1, 0, 5) == 5  # the cap
    assert fit(100.0, 120.0, 2, 1, 1000) == 2  # over the budget: stop after this epoch
    rule = trainer_module.Plateau(2, 0.01)
    assert [rule.update(v) for v in (0.5, 0.505, 0.52, 0.525, 0.529)] == [
        False,
        False,  # 0.505 is not 0.01 above 0.5
        False,  # 0.52 is: new best, wait reset
        False,
        True,  # 0.525 and 0.529 not above 0.53
    ]
    assert not any(trainer_module.Plateau(0).update(v) for v in (0.5, 0.4, 0.3))
