"""DDP with two CPU processes (gloo): trains through the command line, ranks draw differently."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jointseg.models import load_model
from tests.conftest import write_dataset
from tests.test_training import tiny_config


@pytest.mark.slow
def test_two_cpu_processes_train_and_draw_different_samples(tmp_path: Path) -> None:
    write_dataset(
        tmp_path / "data", "Dataset001_Knee", cases=3, structures={"femur": 1, "tibia": 2}
    )
    write_dataset(
        tmp_path / "data", "Dataset002_Ankle", cases=3, structures={"talus": 1, "tibia": 2}
    )
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**tiny_config(epochs=1), "scheme": "mtmd"}))
    command = [
        sys.executable,
        "-m",
        "jointseg.cli",
        "train",
        "--config",
        str(config),
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "run"),
        "--devices",
        "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command, capture_output=True, text=True, encoding="utf-8", timeout=600, env=env
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    draws = json.loads(
        (tmp_path / "run" / "logs" / "main" / "ddp_first_batches.json").read_text(encoding="utf-8")
    )
    assert set(draws) == {"rank0", "rank1"}
    assert draws["rank0"] != draws["rank1"]
    net, meta = load_model(tmp_path / "run" / "models" / "main")
    assert meta["domains"] == ["knee", "ankle"]
