"""End to end on toy data: ablate, cross-validation, evaluation and the comparison table."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from jointseg.config import config_from_dict
from jointseg.data.splits import write_splits
from jointseg.evaluation.compare import compare_runs
from jointseg.evaluation.evaluate import evaluate_run
from jointseg.workflows.cross_validation import run_cross_validation
from jointseg.workflows.train import ablate_from_cli
from tests.conftest import write_dataset
from tests.test_training import tiny_config


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study")
    write_dataset(root, "Dataset001_Knee", cases=4, structures={"femur": 1, "tibia": 2})
    write_dataset(root, "Dataset002_Ankle", cases=4, structures={"talus": 1, "tibia": 2})
    return root


def _config_file(tmp_path: Path, **extra) -> Path:
    config = tiny_config(epochs=2, iterations_per_epoch=6)
    config["model"]["width"] = 0.25
    config.update(extra)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    config_from_dict(config)  # valid
    return path


@pytest.mark.slow
def test_cv_evaluate_compare(study: Path, tmp_path: Path) -> None:
    splits = write_splits(study, 2, 0, tmp_path / "splits.json")
    cfg = _config_file(tmp_path)
    folders = {}
    for scheme in ("individual", "mtmd"):
        out = tmp_path / scheme
        index = run_cross_validation(cfg, study, out, scheme=scheme, splits=splits, progress=False)
        cv = json.loads(index.read_text(encoding="utf-8"))
        assert cv["folds"] == 2
        assert sorted(cv["predictions"]["knee"]) == [f"toy_{i:03d}" for i in range(4)]
        report = evaluate_run(out, progress=False)
        assert report.is_file()
        metrics = pd.read_csv(out / "evaluation" / "metrics.csv")
        assert set(metrics["subset"]) == {"oof"}
        assert len(metrics) == 2 * 4 * 2  # domains x subjects x structures
        assert metrics["dice"].between(0, 1).all()
        folders[scheme] = out
    table = compare_runs([folders["mtmd"], folders["individual"]], tmp_path / "cmp", "mtmd")
    text = table.read_text(encoding="utf-8")
    assert "individual" in text and "mtmd" in text and "p" in text
    assert (tmp_path / "cmp" / "compare.csv").is_file()


@pytest.mark.slow
def test_ablate_trains_each_scheme_once(study: Path, tmp_path: Path) -> None:
    cfg = _config_file(tmp_path, schemes=["mtmd", "mtmd+con"])
    runs = ablate_from_cli(cfg, study, tmp_path / "ablate")
    assert set(runs) == {"mtmd", "mtmd+con"}
    first = (tmp_path / "ablate" / "mtmd" / "models" / "main" / "model.safetensors").stat()
    same_cases = {name: info.validation_cases for name, info in runs.items()}
    assert same_cases["mtmd"] == same_cases["mtmd+con"]
    ablate_from_cli(cfg, study, tmp_path / "ablate")  # resumes: nothing retrained
    again = (tmp_path / "ablate" / "mtmd" / "models" / "main" / "model.safetensors").stat()
    assert again.st_mtime_ns == first.st_mtime_ns
