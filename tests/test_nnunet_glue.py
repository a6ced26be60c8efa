"""benchmarks/_nnunet.py and _paper_nnunet.py without nnU-Net: its folders, dataset links and
splits, the budgets the trainer reads, and the scoring of its predictions by jointseg's code."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
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
            "plateau_min_epochs": 0,
            "iterations": 10,
            "val_iterations": 2,
            "threads": 1,
        },
    }
    short = pn.budgets(
        {"iterations": 10, "default_iterations": 2, "epochs": 30, "val_iterations": 2,
         "patience": 5}, 360.0, 3, 1,
    )  # fmt: skip
    assert short["default"]["iterations"] == 2 and short["matched"]["iterations"] == 10
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


class FakeNnUNet(NnUNet):
    """NnUNet with its commands replaced: planning and training are recorded, prediction
    copies the reference labels (a perfect network)."""

    calls: list[tuple]

    def plan_and_preprocess(self, ids, log, extra=()):
        self.calls.append(("plan", tuple(ids)))
        for dataset_id in ids:
            (self.preprocessed / self.dataset_name(dataset_id)).mkdir(exist_ok=True)
        return {}

    def train(self, dataset_id, log, budget, device="cpu", plans="nnUNetPlans"):
        self.calls.append(("train", dataset_id, plans))
        return {"epochs": 1, "iterations": 2, "seconds": 1.0, "cpu_seconds": 1.0}

    def plan_2d(self, dataset_id, plans="nnUNetPlans"):
        return {"patch_size": [64, 64]}

    def predict(self, dataset_id, images, out, log, **kwargs):
        self.calls.append(("predict", dataset_id))
        out.mkdir(parents=True, exist_ok=True)
        for label in (images.parent / "labelsTs").glob("*.nii.gz"):
            (out / label.name).write_bytes(label.read_bytes())
        return {"seconds": 1.0}


def test_fold_networks_are_shared_resumed_and_scored(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from _locks import claimed

    view = tmp_path / "view"
    write_dataset(view, name="Dataset001_Toy", cases=2, test_cases=1)
    write_dataset(view, name="Dataset002_Other", cases=2, test_cases=1)
    cfg = SimpleNamespace(
        datasets=[
            SimpleNamespace(name="toy", folder="Dataset001_Toy"),
            SimpleNamespace(name="other", folder="Dataset002_Other"),
        ]
    )
    info = {
        "training_cases": {"toy": ["toy_000"], "other": ["toy_000"]},
        "validation_cases": {"toy": ["toy_001"], "other": ["toy_001"]},
    }
    folder = tmp_path / "cv" / "fold_0" / "nnunet"  # as in the benchmark's output
    nn = FakeNnUNet(tmp_path / "venv", folder, "2.8.1")
    nn.calls = []

    def train(variant="default"):
        pn.train_fold(nn, cfg, view, info, variant, {}, "cpu", False, folder)

    with claimed(folder / "default_other") as mine:  # another process trains this one
        assert mine
        train()
    assert nn.calls == [("plan", (1, 2)), ("train", 1, "nnUNetPlans"), ("predict", 1)]
    assert pn.score_fold(cfg, view, "default", folder) is None  # "other" is not done
    train()  # resumes: planned once, "toy" not trained again
    assert nn.calls[3:] == [("train", 2, "nnUNetPlans"), ("predict", 2)]
    rows, records = pn.score_fold(cfg, view, "default", folder)
    assert set(records) == {"toy", "other"} and records["toy"]["plan"] == {"patch_size": [64, 64]}
    assert set(rows["dataset"]) == {"toy", "other"} and (rows["dice"] == 1.0).all()
    assert set(rows["scheme"]) == {pn.VARIANTS["default"]}
    calls = len(nn.calls)
    train()
    assert len(nn.calls) == calls  # everything done: nothing runs
    # the records of the finished networks score them elsewhere, without their predictions
    import _paper_records as records

    kept, elsewhere = tmp_path / "records", tmp_path / "elsewhere"
    assert records.save_nnunet(tmp_path, folder, kept) == ["default_other", "default_toy"]
    assert sorted(p.name for p in (kept / "cv" / "fold_0" / "nnunet").iterdir())[:2] == [
        "predict_default_other.json",
        "predict_default_toy.json",
    ]
    moved = elsewhere / "cv" / "fold_0" / "nnunet"
    assert records.restore(kept, elsewhere) == [moved / "default_other", moved / "default_toy"]
    assert records.restore(kept, elsewhere) == []  # finished there now
    again, _ = pn.score_fold(cfg, view, "default", moved)
    assert not (moved / "predictions_default").exists()
    pd.testing.assert_frame_equal(again, rows)


def test_claimed_is_exclusive_and_locked_waits(tmp_path: Path) -> None:
    import threading

    from _locks import claimed, locked

    with claimed(tmp_path / "cell") as first:
        with claimed(tmp_path / "cell") as second:
            assert first and not second
        with claimed(tmp_path / "other") as third:
            assert third
    with claimed(tmp_path / "cell") as again:  # released at the end of the block
        assert again
    order = []

    def waiter():
        with locked(tmp_path / "plan"):
            order.append("waiter")

    with locked(tmp_path / "plan"):
        thread = threading.Thread(target=waiter)
        thread.start()
        thread.join(0.3)
        order.append("holder")
    thread.join()
    assert order == ["holder", "waiter"]
