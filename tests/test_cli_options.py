"""One command line: ``--device`` wherever a network runs, one meaning per option name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import typer.main
from typer.testing import CliRunner

from jointseg.cli import DEVICE_HELP, app
from jointseg.utils.compute import lightning_placement, torch_device

NETWORK_COMMANDS = {
    "train", "adapt", "ablate", "cv", "evaluate", "postprocess", "calibrate", "predict", "demo",
}  # fmt: skip


def _options(name: str) -> dict[str, object]:
    command = typer.main.get_command(app).commands[name]
    return {opt: p for p in command.params for opt in p.opts if not p.hidden}


def test_every_command_that_runs_a_network_takes_device_with_one_help() -> None:
    for name in NETWORK_COMMANDS:
        device = _options(name).get("--device")
        assert device is not None, name
        assert device.help == DEVICE_HELP, name
    # inference keeps the CPU by default; training goes to CUDA when there is one
    assert {n: _options(n)["--device"].default for n in NETWORK_COMMANDS} == {
        "predict": "cpu", "evaluate": "cpu", "postprocess": "cpu", "calibrate": "cpu",
        "train": "auto",
        "adapt": "auto", "ablate": "auto", "cv": "auto", "demo": "auto",
    }  # fmt: skip


def test_data_means_the_study_folder_wherever_it_is_an_option() -> None:
    for name in typer.main.get_command(app).commands:
        data = _options(name).get("--data")
        if data is not None:
            assert "Study folder" in data.help, name
            assert data.opts == ["--data", "-d"], name


# (command line, the function it calls as the module defines it)
CALLS = [
    (["train", "-c", "demo", "-d", "data", "-o", "run"], "jointseg.workflows.train.train_from_cli"),
    (["ablate", "-c", "demo", "-d", "data", "-o", "ab"],
     "jointseg.workflows.train.ablate_from_cli"),
    (["cv", "-c", "demo", "-d", "data", "-o", "cv"],
     "jointseg.workflows.cross_validation.run_cross_validation"),
    (["adapt", "run", "--dataset", "ds", "-o", "new"], "jointseg.workflows.adapt.adapt_run"),
    (["evaluate", "run"], "jointseg.evaluation.evaluate.evaluate_run"),
    (["postprocess", "run"], "jointseg.evaluation.postprocessing.decide_postprocessing"),
    (["calibrate", "run"], "jointseg.workflows.calibration.calibrate_run"),
    (["predict", "run", "scan.nii.gz", "-o", "pred"], "jointseg.inference.predict.predict_path"),
    (["demo", "-o", "demo"], "jointseg.workflows.demo.run_demo"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "target"), CALLS, ids=[c[0][0] for c in CALLS])
def test_device_cpu_reaches_every_command(
    args: list[str], target: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    seen: dict[str, object] = {}

    def fake(*positional, **keywords):
        seen.update(keywords)
        return tmp_path / "report.md"

    monkeypatch.setattr(target, fake)
    result = CliRunner().invoke(app, [*args, "--device", "cpu"])
    assert seen.get("device") == "cpu", result.output
    # postprocess: the fake decides nothing, which the command reports (status 1)
    assert result.exit_code == (1 if args[0] == "postprocess" else 0), result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="refusing CUDA needs a machine without it")
def test_cuda_without_cuda_is_refused_before_any_work(tmp_path: Path) -> None:
    args = ["train", "-c", "demo", "-d", str(tmp_path / "none"), "-o", str(tmp_path / "run")]
    result = CliRunner().invoke(app, [*args, "--device", "cuda"])
    assert result.exit_code == 2, result.output
    assert "device 'cuda' requested but CUDA is not available; use --device cpu" in result.output
    assert not (tmp_path / "run").exists()


def test_devices_map_to_torch_and_lightning() -> None:
    assert torch_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert torch_device("auto").type == expected
    with pytest.raises(ValueError, match="unknown device 'tpu7'"):
        torch_device("tpu7")
    assert lightning_placement(torch.device("cpu"), 2) == {"accelerator": "cpu", "devices": 2}
    assert lightning_placement(torch.device("cuda"), 1) == {"accelerator": "gpu", "devices": 1}
    assert lightning_placement(torch.device("cuda:1")) == {"accelerator": "gpu", "devices": [1]}
    with pytest.raises(ValueError, match="names one GPU; with --devices 2 give --device cuda"):
        lightning_placement(torch.device("cuda:1"), 2)
    with pytest.raises(ValueError, match="cannot train on device 'meta'"):
        lightning_placement(torch.device("meta"))


def test_predict_runs_on_device_auto(tmp_path: Path) -> None:
    import SimpleITK as sitk

    from tests.tiny_model import make_scan, train_run

    run = train_run(tmp_path / "run", max_steps=0)
    scan = tmp_path / "knee.nii.gz"
    sitk.WriteImage(make_scan("knee", 5)[0], str(scan))
    args = ["predict", str(run), str(scan), "--out", str(tmp_path / "pred"), "--no-meshes"]
    result = CliRunner().invoke(app, [*args, "--domain", "knee", "--device", "auto"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pred" / "knee_seg.nii.gz").is_file()
