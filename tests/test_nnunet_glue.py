"""benchmarks/_nnunet.py and _paper_nnunet.py without nnU-Net: its folders, dataset links and
splits, the budgets the trainer reads, and the scoring of its predictions by jointseg's code."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import write_dataset

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import _paper_nnunet as pn  # noqa: E402
from _nnunet import NnUNet  # noqa: E402


def test_folders_dataset_link_splits_and_environment(tmp_path: Path, monkeypatch) -> None:
    dataset = write_dataset(tmp_path / "view", name="Dataset004_Toy", cases=2)
    nn = NnUNet(tmp_path / "venv", tmp_path / "nn", "2.8.1")
    assert nn.add_dataset(dataset) == 4
    assert nn.add_dataset(dataset) == 4  # linked once, found again
    assert (nn.raw / "Dataset004_Toy").resolve() == dataset.resolve()
    assert nn.dataset_name(4) == "Dataset004_Toy"
    with pytest.raises(RuntimeError, match="dataset 5"):
        nn.dataset_name(5)
    (nn.preprocessed / "Dataset004_Toy").mkdir()
    nn.write_splits(4, ["toy_000"], ["toy_001"])
    splits = json.loads((nn.preprocessed / "Dataset004_Toy" / "splits_final.json").read_text())
    assert splits == [{"train": ["toy_000"], "val": ["toy_001"]}]
    monkeypatch.setenv("PYTHONPATH", "src")
    env = nn.env({"NNUNET_BUDGET_THREADS": "1"})
    assert env["nnUNet_raw"] == str(nn.raw) and env["nnUNet_results"] == str(nn.results)
    assert "PYTHONPATH" not in env and env["NNUNET_BUDGET_THREADS"] == "1"
    assert env["PATH"].startswith(str(tmp_path / "venv" / "bin"))


def test_budgets_name_what_the_trainer_reads() -> None:
    budgets = pn.budgets(
        {"iterations": 10, "epochs": 30, "val_iterations": 2, "patience": 5}, 360.0, 3, 1
    )
    assert budgets == {
        "default": {"seconds": 120.0, "iterations": 10, "val_iterations": 2, "threads": 1},
        "matched": {
            "epochs": 30,
            "plateau_patience": 5,
            "iterations": 10,
            "val_iterations": 2,
            "threads": 1,
        },
    }
    trainer = (BENCHMARKS / "nnunet_budget_trainer.py").read_text(encoding="utf-8")
    read = set(re.findall(r'_env\(\s*"NNUNET_BUDGET_(\w+)"', trainer))
    for budget in budgets.values():  # NnUNet.train passes key k as NNUNET_BUDGET_<K>
        assert {key.upper() for key in budget} <= read


def test_predictions_scored_by_jointseg(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path, name="Dataset001_Toy", cases=1, test_cases=2)
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    perfect = sitk.ReadImage(str(dataset / "labelsTs" / "toy_100.nii.gz"))
    sitk.WriteImage(perfect, str(predictions / "toy_100.nii.gz"))
    missing_tibia = sitk.ReadImage(str(dataset / "labelsTs" / "toy_101.nii.gz"))
    array = sitk.GetArrayFromImage(missing_tibia)
    array[array == 2] = 0
    edited = sitk.GetImageFromArray(array.astype(np.uint8))  # nnU-Net writes uint8
    edited.CopyInformation(missing_tibia)
    sitk.WriteImage(edited, str(predictions / "toy_101.nii.gz"))
    rows = pn._score("nnU-Net 2d", tmp_path, "Dataset001_Toy", predictions)
    dice = {(r["case"], r["structure"]): r["dice"] for r in rows}
    assert dice == {
        ("toy_100", "femur"): 1.0,
        ("toy_100", "tibia"): 1.0,
        ("toy_101", "femur"): 1.0,
        ("toy_101", "tibia"): 0.0,
    }
    assert {r["scheme"] for r in rows} == {"nnU-Net 2d"}
