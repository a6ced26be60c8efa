"""benchmarks/pretrained.py --smoke end to end: synthesize, train two steps with an
interruption and a resume, evaluate, pack into a temporary package folder, then
``jointseg predict pretrained`` from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from jointseg.cli import app
from jointseg.inference.packaged import PRETRAINED_ENV
from jointseg.workflows.pretrained import TRAINING_RECORD, check_reference_output

ROOT = Path(__file__).resolve().parents[1]


def _recipe(out: Path, package: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "benchmarks" / "pretrained.py"), "--smoke",
               "--out", str(out), "--package", str(package), "--jobs", "1", *extra]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, encoding="utf-8", env=env,
                          timeout=1800)  # fmt: skip


@pytest.mark.slow
def test_the_smoke_recipe_pauses_resumes_packs_and_predicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, package = tmp_path / "out", tmp_path / "pkg" / "model"
    first = _recipe(out, package, "--max-minutes", "0")  # stops after the first epoch
    assert first.returncode == 3, first.stdout + first.stderr
    assert "paused at 1 steps" in first.stdout
    assert not package.exists() and not (out / "run" / "models" / "main").exists()
    last = out / "run" / "checkpoints" / "main" / "last.ckpt"
    assert torch.load(last, weights_only=True, mmap=True)["epoch"] == 0

    second = _recipe(out, package)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "study: " in second.stdout and "(done)" in second.stdout  # data reused
    assert "resuming from" in second.stdout + second.stderr
    pieces = json.loads((out / "pieces.json").read_text(encoding="utf-8"))
    assert [(p["steps_after"], p["finished"]) for p in pieces] == [(1, False), (2, True)]

    record = json.loads((package / TRAINING_RECORD).read_text(encoding="utf-8"))
    assert record["steps"] == 2 and record["data"]["seed"] == 0
    assert record["data"]["joints"] == ["ankle", "knee", "shoulder", "elbow"]
    assert "evaluation" in record and record["config_name"] == "pretrained"
    assert check_reference_output(package) == []

    monkeypatch.setenv(PRETRAINED_ENV, str(package))
    scan = out / "data" / "Dataset002_Knee" / "imagesTs" / "knee_test_000_0000.nii.gz"
    result = CliRunner().invoke(
        app, ["predict", "pretrained", str(scan), "--out", str(tmp_path / "pred"),
              "--domain", "knee", "--no-meshes"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    label = sitk.ReadImage(str(tmp_path / "pred" / "knee_test_000_0000_seg.nii.gz"))
    assert label.GetSize() == sitk.ReadImage(str(scan)).GetSize()
