"""Training: every scheme trains and saves a loadable model, a real learning test, resume,
determinism, and config errors before any training starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from jointseg.config import ConfigError, config_from_dict
from jointseg.inference.postprocess import Postprocessing
from jointseg.models import load_model
from jointseg.recognition.anatomy import load_anatomy
from jointseg.recognition.calibration import Calibration
from jointseg.recognition.references import load_references
from jointseg.runs import RunError, load_run_info
from jointseg.training.schemes import plan_scheme
from jointseg.workflows.train import train_run
from tests.conftest import write_dataset


def tiny_config(**training) -> dict:
    return {
        "name": "tiny",
        "datasets": [
            {"name": "knee", "folder": "Dataset001_Knee"},
            {"name": "ankle", "folder": "Dataset002_Ankle"},
        ],
        "preprocessing": {"target_spacing": None, "patch_size": [32, 32], "jobs": 1},
        "augmentation": {"enabled": False},
        "model": {
            "encoder": "resnet18",
            "width": 0.125,
            "decoder_channels": [64, 32, 16, 16, 16],
            "projector_hidden": 16,
            "projector_dim": 8,
        },
        "training": {
            "epochs": 2,
            "iterations_per_epoch": 3,
            "batch_size": 4,
            "validation_every": 1,
            "validation_fraction": 0.34,
            "optimizer": {"lr": 0.01, "warmup_epochs": 0},
            **training,
        },
        "regularization": {"shape_prior": {"steps": 2, "base_channels": 4, "code_channels": 4}},
    }


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study")
    write_dataset(root, "Dataset001_Knee", cases=3, structures={"femur": 1, "tibia": 2})
    write_dataset(root, "Dataset002_Ankle", cases=3, structures={"talus": 1, "tibia": 2})
    return root


@pytest.mark.parametrize("scheme", ["individual", "transfer", "shared", "mtmd", "mtmd+con", "full"])
def test_each_scheme_trains_and_saves_loadable_models(study: Path, tmp_path: Path, scheme) -> None:
    cfg = config_from_dict({**tiny_config(epochs=1), "scheme": scheme})
    info = train_run(cfg, study, tmp_path / "run", progress=False)
    expected = {"individual": 2, "transfer": 2, "shared": 1}.get(scheme, 1)
    assert len(info.models) == expected
    assert load_run_info(tmp_path / "run") == info
    for entry in info.models:
        net, meta = load_model(tmp_path / "run" / entry.path)
        assert meta["domains"] == entry.domains
        x = torch.zeros(2, 1, 32, 32)
        out = net(x, torch.zeros(2, dtype=torch.long))
        classes = 9 if entry.label_space == "union" else 3
        assert next(iter(out.logits.values())).shape == (2, min(classes, 4), 32, 32)
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert (tmp_path / "run" / "curves.png").is_file()
    # domain recognition references from 2 training cases, calibrated on the held-out one
    assert sorted(load_references(tmp_path / "run")) == ["ankle", "knee"]
    calibration = Calibration.load(tmp_path / "run")
    assert {k: len(v) for k, v in calibration.in_domain.items()} == {"knee": 1, "ankle": 1}
    # anatomy statistics of the 2 training label maps, calibrated on the held-out prediction
    anatomy = load_anatomy(tmp_path / "run")
    assert {k: (a.structures, a.scans, a.calibrated_on) for k, a in anatomy.items()} == {
        "knee": (("femur", "tibia"), 2, 1),
        "ankle": (("talus", "tibia"), 2, 1),
    }
    box = 6 * 8 * 20 * 0.8 * 0.8 * 3.0 / 1000  # ml: conftest's 6 x 8 x 20 voxel boxes
    np.testing.assert_allclose(np.exp(anatomy["knee"].log_volume.mean), [box, box])
    # postprocessing decided on the validation subjects, each structure scored with and without
    decision = Postprocessing.load(tmp_path / "run")
    assert decision.cases == info.validation_cases
    assert sorted(decision.measured["knee"]) == ["femur", "tibia"]
    ankle = decision.measured["ankle"].values()
    assert all(0 <= m["dice_without"] <= 1 and 0 <= m["dice_with"] <= 1 for m in ankle)
    if scheme == "full":
        assert (
            tmp_path / "run" / "models" / "shape_prior" / "shape_autoencoder.safetensors"
        ).is_file()


def test_iterations_per_dataset_scale_the_steps_of_multi_domain_networks(
    study: Path, tmp_path: Path
) -> None:
    config = tiny_config(epochs=1, iterations_per_epoch=3, iterations_per_dataset=True)

    def steps(run: Path, name: str) -> int:
        state = torch.load(run / "checkpoints" / name / "last.ckpt", weights_only=True)
        return state["global_step"]

    cfg = config_from_dict({**config, "scheme": "mtmd"})
    assert cfg.training.iterations(2) == 6 and cfg.training.iterations(1) == 3
    train_run(cfg, study, tmp_path / "mtmd", progress=False)
    assert steps(tmp_path / "mtmd", "main") == 6  # two datasets x 3
    cfg = config_from_dict({**config, "scheme": "individual"})
    train_run(cfg, study, tmp_path / "individual", progress=False)
    assert [steps(tmp_path / "individual", d) for d in ("knee", "ankle")] == [3, 3]
    off = config_from_dict({**tiny_config(epochs=1, iterations_per_epoch=3), "scheme": "mtmd"})
    assert off.training.iterations(2) == 3


def test_regularization_ramp_values() -> None:
    from jointseg.training.module import regularization_ramp

    assert [regularization_ramp(s, 0.5, 8) for s in range(6)] == [0.25, 0.5, 0.75, 1, 1, 1]
    assert regularization_ramp(0, 0.0, 8) == 1.0
    assert regularization_ramp(0, 0.01, 8) == 1.0  # rounds to no ramp steps
    assert regularization_ramp(0, 1.0, 3) == pytest.approx(1 / 3)


def test_regularizers_ramp_up_in_the_loss(study: Path, tmp_path: Path) -> None:
    config = {**tiny_config(epochs=2, iterations_per_epoch=3), "scheme": "mtmd+con"}
    config["regularization"] = {**config["regularization"], "ramp": 0.5}
    cfg = config_from_dict(config)
    train_run(cfg, study, tmp_path / "run", progress=False)
    frame = pd.read_csv(tmp_path / "run" / "logs" / "main" / "metrics.csv")
    steps = frame.dropna(subset=["train/ramp_step"])
    assert steps["train/ramp_step"].tolist() == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1])
    weight = cfg.regularization.contrastive.lambda_con * steps["train/ramp_step"]
    expected = steps["train/seg_step"] + weight * steps["train/con_step"]
    assert steps["train/loss_step"].to_numpy() == pytest.approx(expected.to_numpy(), rel=1e-5)


def test_union_head_covers_every_structure_once() -> None:
    plans = plan_scheme("shared", ["knee", "ankle"])
    assert [p.label_space for p in plans] == ["union"]
    transfer = plan_scheme("transfer", ["knee", "ankle"])
    assert [p.name for p in transfer] == [
        "pretrain_for_knee",
        "knee",
        "pretrain_for_ankle",
        "ankle",
    ]
    assert transfer[1].init_from == "pretrain_for_knee" and transfer[0].domains == ("ankle",)


def _final_weights(run: Path, name: str = "main") -> dict[str, torch.Tensor]:
    net, _ = load_model(run / "models" / name)
    return net.state_dict()


def _validated_epochs(run: Path, plan: str = "main") -> list[float]:
    frame = pd.read_csv(run / "logs" / plan / "metrics.csv")
    return frame["val/dice"].dropna().tolist()


@pytest.mark.trains
@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_learns_the_toy_task(study: Path, tmp_path: Path, precision: str) -> None:
    # Trained to a target above the bound (at most 12 x 25 steps), not for a fixed step count:
    # the steps a model needs to get there follow the CPU's floating-point kernels.
    config = tiny_config(
        epochs=12, iterations_per_epoch=25, validation_every=1, target_dice=0.9, precision=precision
    )
    config["model"]["width"] = 0.25
    cfg = config_from_dict({**config, "scheme": "mtmd"})
    train_run(cfg, study, tmp_path / "run", progress=False)
    _, meta = load_model(tmp_path / "run" / "models" / "main")
    assert meta["best_validation_dice"] > 0.8
    dice = _validated_epochs(tmp_path / "run")
    assert len(dice) == 12 or (dice[-1] >= 0.9 and max(dice[:-1], default=0) < 0.9)


def test_training_stops_at_the_target_dice(study: Path, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from jointseg.training.runner import StopAtTarget

    stop = StopAtTarget(0.9)
    for dice, expected in ((0.89, False), (0.9001, True), (0.95, True)):
        trainer = SimpleNamespace(callback_metrics={"val/dice": torch.tensor(dice)}, should_stop=0)
        stop.on_validation_end(trainer, None)
        assert bool(trainer.should_stop) is expected
    unreachable = config_from_dict(
        {**tiny_config(epochs=3, iterations_per_epoch=2, target_dice=1.0), "scheme": "mtmd"}
    )
    train_run(unreachable, study, tmp_path / "capped", progress=False)
    assert len(_validated_epochs(tmp_path / "capped")) == 3  # the cap


def test_training_stops_on_a_validation_plateau(study: Path, tmp_path: Path) -> None:
    # min_delta 1.0: no Dice can improve by that much, so the first validation sets the best and
    # the next `patience` validations without improvement stop the run (cap: 6 epochs)
    config = tiny_config(
        epochs=6, iterations_per_epoch=2, plateau_patience=2, plateau_min_delta=1.0
    )
    train_run(
        config_from_dict({**config, "scheme": "mtmd"}), study, tmp_path / "run", progress=False
    )
    assert len(_validated_epochs(tmp_path / "run")) == 3
    config = tiny_config(epochs=3, iterations_per_epoch=2, plateau_patience=5)
    train_run(
        config_from_dict({**config, "scheme": "mtmd"}), study, tmp_path / "cap", progress=False
    )
    assert len(_validated_epochs(tmp_path / "cap")) == 3  # patience never runs out: the cap
    config = tiny_config(
        epochs=6,
        iterations_per_epoch=2,
        plateau_patience=2,
        plateau_min_delta=1.0,
        plateau_min_epochs=4,
    )
    train_run(
        config_from_dict({**config, "scheme": "mtmd"}), study, tmp_path / "min", progress=False
    )
    assert len(_validated_epochs(tmp_path / "min")) == 4  # patience ran out at 3: not before 4


class Interrupt(RuntimeError):
    pass


class StopAfterFirstEpoch(__import__("lightning").Callback):
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 1:
            raise Interrupt("simulated kill")


def test_resume_continues_exactly(study: Path, tmp_path: Path) -> None:
    cfg = config_from_dict({**tiny_config(epochs=2), "scheme": "mtmd+con"})
    train_run(cfg, study, tmp_path / "straight", progress=False)
    with pytest.raises(Interrupt):
        train_run(
            cfg, study, tmp_path / "resumed", progress=False, callbacks=[StopAfterFirstEpoch()]
        )
    assert (tmp_path / "resumed" / "checkpoints" / "main" / "last.ckpt").is_file()
    with pytest.raises(RunError, match="--resume"):
        train_run(cfg, study, tmp_path / "resumed", progress=False)
    train_run(cfg, study, tmp_path / "resumed", resume=True, progress=False)
    straight, resumed = _final_weights(tmp_path / "straight"), _final_weights(tmp_path / "resumed")
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_same_seed_same_weights_and_metrics(study: Path, tmp_path: Path, precision: str) -> None:
    cfg = config_from_dict({**tiny_config(epochs=1, precision=precision), "scheme": "mtmd"})
    train_run(cfg, study, tmp_path / "a", progress=False)
    train_run(cfg, study, tmp_path / "b", progress=False)
    a, b = _final_weights(tmp_path / "a"), _final_weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    meta_a = load_model(tmp_path / "a" / "models" / "main")[1]
    meta_b = load_model(tmp_path / "b" / "models" / "main")[1]
    assert meta_a["best_validation_dice"] == meta_b["best_validation_dice"]
    assert np.isfinite(meta_a["best_validation_dice"])


def test_bfloat16_training_keeps_float32_state(study: Path, tmp_path: Path) -> None:
    """Autocast computes in bfloat16; weights, optimizer state and BN statistics stay float32."""
    cfg = config_from_dict({**tiny_config(epochs=1, precision="bf16-mixed"), "scheme": "mtmd+con"})
    train_run(cfg, study, tmp_path / "run", progress=False)
    weights = _final_weights(tmp_path / "run")
    meta = load_model(tmp_path / "run" / "models" / "main")[1]
    assert (meta["precision"], meta["channels_last"]) == ("bf16", True)
    assert {v.dtype for k, v in weights.items() if "num_batches" not in k} == {torch.float32}
    assert any("running_mean" in k for k in weights)
    checkpoint = torch.load(
        tmp_path / "run" / "checkpoints" / "main" / "last.ckpt", weights_only=True
    )
    moments = [
        t
        for state in checkpoint["optimizer_states"][0]["state"].values()
        for name, t in state.items()
        if name in ("exp_avg", "exp_avg_sq")
    ]
    assert moments and {t.dtype for t in moments} == {torch.float32}
    for name, value in checkpoint["state_dict"].items():
        assert value.dtype != torch.bfloat16, name


def test_bad_config_values_fail_before_training(study: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"training\.batch_size"):
        config_from_dict(tiny_config(batch_size=0))
    with pytest.raises(ConfigError, match=r"training\.sampling"):
        config_from_dict(tiny_config(sampling="uniform"))
    bad = tiny_config()
    bad["datasets"][1]["folder"] = "Dataset009_Missing"
    with pytest.raises(Exception, match="Dataset009_Missing"):
        train_run(config_from_dict(bad), study, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_context_slices_train_validate_and_recognize(study: Path, tmp_path: Path) -> None:
    """k = 3: augmented patches, validation, references and the saved model take 3 slices."""
    config = tiny_config(epochs=1)
    config["model"]["context_slices"] = 3
    config["augmentation"] = {"affine_probability": 1.0, "flip_axes": [0, 1]}
    cfg = config_from_dict({**config, "scheme": "mtmd+con"})
    info = train_run(cfg, study, tmp_path / "run", progress=False)
    net, meta = load_model(tmp_path / "run" / info.models[0].path)
    assert net.cfg.context_slices == 3 and net.encoder.conv1.in_channels == 3
    assert np.isfinite(meta["best_validation_dice"])
    out = net(torch.zeros(2, 3, 32, 32), torch.tensor([0, 1]))
    assert out.logits[0].shape == (1, 3, 32, 32)
    assert sorted(load_references(tmp_path / "run")) == ["ankle", "knee"]


def test_training_starts_from_the_weights_of_another_run(
    study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tiny_config(epochs=1)
    train_run(config_from_dict({**base, "scheme": "mtmd"}), study, tmp_path / "a", progress=False)
    # A learning rate too small to move the weights: what a run starts from is what it ends with.
    still = tiny_config(epochs=1, optimizer={"lr": 1e-9, "warmup_epochs": 0, "weight_decay": 0})
    monkeypatch.setenv("JOINTSEG_PRETRAINED", str(tmp_path / "a"))
    started = {**still, "scheme": "mtmd"}
    started["training"]["initial_weights"] = "pretrained"  # the word resolves like a run folder
    train_run(config_from_dict(started), study, tmp_path / "b", progress=False)
    fresh = {**tiny_config(epochs=1, optimizer={"lr": 1e-9, "warmup_epochs": 0}), "scheme": "mtmd"}
    fresh["training"]["seed"] = 1
    train_run(config_from_dict(fresh), study, tmp_path / "c", progress=False)
    a, b, c = (load_model(tmp_path / r / "models" / "main")[0] for r in "abc")
    params_b = dict(b.named_parameters())
    params_c = dict(c.named_parameters())
    for name, value in a.named_parameters():
        assert torch.allclose(value, params_b[name], atol=1e-6), name
    assert any(not torch.allclose(v, params_c[k], atol=1e-3) for k, v in a.named_parameters())
    other = {**tiny_config(epochs=1, initial_weights=str(tmp_path / "a")), "scheme": "individual"}
    with pytest.raises(RunError, match="no trained network"):
        train_run(config_from_dict(other), study, tmp_path / "d", progress=False)
