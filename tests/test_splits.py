"""Subject-wise cross-validation splits: coverage, determinism, leave-one-out, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jointseg.data.manifest import DatasetManifest, write_manifest
from jointseg.data.splits import (
    SplitsError,
    fold_cases,
    load_splits,
    make_splits,
    split_subjects,
    write_splits,
)


def fake_dataset(
    root: Path, name: str, cases: int, unlabelled: int = 0, subjects: dict | None = None
) -> Path:
    """A dataset folder whose case files are empty: splits only look at names."""
    folder = root / name
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for index in range(cases + unlabelled):
        case = f"{name.lower()}_{index:03d}"
        (folder / "imagesTr" / f"{case}_0000.nii.gz").touch()
        if index < cases:
            (folder / "labelsTr" / f"{case}.nii.gz").touch()
    extra = {"subjects": subjects} if subjects else {}
    manifest = DatasetManifest(
        name=name, channel_names={"0": "MR"}, labels={"background": 0, "bone": 1},
        numTraining=cases, file_ending=".nii.gz", **extra,
    )  # fmt: skip
    write_manifest(folder, manifest)
    return folder


def test_folds_cover_every_subject_once_with_balanced_sizes(tmp_path: Path) -> None:
    fake_dataset(tmp_path, "Ankle", 7, unlabelled=2)
    fake_dataset(tmp_path, "Knee", 6)
    (tmp_path / "notes").mkdir()  # a folder without dataset.json is not a dataset
    splits = make_splits(tmp_path, folds=3, seed=1)
    assert sorted(splits["datasets"]) == ["Ankle", "Knee"]
    for name, n in (("Ankle", 7), ("Knee", 6)):
        everyone = {f"{name.lower()}_{i:03d}" for i in range(n)}  # unlabelled cases left out
        folds = splits["datasets"][name]
        assert len(folds) == 3
        validation = [case for fold in folds for case in fold["validation"]]
        assert sorted(validation) == sorted(everyone)
        assert sorted(len(f["validation"]) for f in folds) == ([2, 2, 3] if n == 7 else [2, 2, 2])
        for fold in folds:
            assert set(fold["train"]) == everyone - set(fold["validation"])
    assert splits["leave_one_subject_out"] == []


def test_seed_makes_splits_repeatable(tmp_path: Path) -> None:
    fake_dataset(tmp_path, "Knee", 12)
    first = make_splits(tmp_path, folds=4, seed=3)
    assert make_splits(tmp_path, folds=4, seed=3) == first
    others = [make_splits(tmp_path, folds=4, seed=s) for s in range(4, 8)]
    assert any(other["datasets"] != first["datasets"] for other in others)


def test_leave_one_subject_out_when_folds_equal_subjects(tmp_path: Path) -> None:
    fake_dataset(tmp_path, "Knee", 4)
    splits = make_splits(tmp_path, folds=4, seed=0)
    folds = splits["datasets"]["Knee"]
    assert all(len(f["validation"]) == 1 and len(f["train"]) == 3 for f in folds)
    assert splits["leave_one_subject_out"] == ["Knee"]


def test_more_folds_than_subjects_names_the_dataset(tmp_path: Path) -> None:
    fake_dataset(tmp_path, "Ankle", 6)
    fake_dataset(tmp_path, "Shoulder", 3)
    with pytest.raises(SplitsError, match=r"'Shoulder' has 3 labelled subjects.*--folds 3"):
        make_splits(tmp_path, folds=4, seed=0)


def test_cases_of_one_subject_stay_together(tmp_path: Path) -> None:
    subjects = {"knee_000": "s0", "knee_001": "s0", "knee_002": "s1", "knee_003": "s1",
                "knee_004": "s2", "knee_005": "s2"}  # fmt: skip
    fake_dataset(tmp_path, "Knee", 6, subjects=subjects)
    splits = make_splits(tmp_path, folds=3, seed=0)
    assert splits["leave_one_subject_out"] == ["Knee"]
    for fold in splits["datasets"]["Knee"]:
        assert len({subjects[c] for c in fold["validation"]}) == 1
        assert len(fold["validation"]) == 2


def test_write_load_and_fold_cases(tmp_path: Path) -> None:
    folder = fake_dataset(tmp_path, "Knee", 5)
    path = write_splits(tmp_path, 5, 0, None)
    assert path == tmp_path / "splits.json"
    splits = load_splits(path)
    train, validation = fold_cases(splits, folder, 2)  # a path works as well as a name
    assert len(train) == 4 and len(validation) == 1
    assert (train, validation) == fold_cases(splits, "Knee", 2)
    with pytest.raises(SplitsError, match="no dataset 'Hip'.*Knee"):
        fold_cases(splits, "Hip", 0)
    with pytest.raises(SplitsError, match=r"folds 0\.\.4.*not 5"):
        fold_cases(splits, "Knee", 5)
    custom = write_splits(tmp_path, 2, 0, tmp_path / "cv" / "two.json")
    assert len(load_splits(custom)["datasets"]["Knee"]) == 2


def test_load_splits_rejects_broken_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="jointseg splits"):
        load_splits(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"datasets": {"Knee": [{"train": ["a"], "validation": ["a"]}]}}))
    with pytest.raises(SplitsError, match="trains on validation cases"):
        load_splits(bad)
    bad.write_text(
        json.dumps(
            {
                "datasets": {
                    "Knee": [
                        {"train": ["a"], "validation": ["b"]},
                        {"train": ["a"], "validation": ["b"]},
                    ]
                }
            }
        )
    )
    with pytest.raises(SplitsError, match="validate in two folds"):
        load_splits(bad)
    bad.write_text(json.dumps({"folds": 2}))
    with pytest.raises(SplitsError, match="datasets"):
        load_splits(bad)


def test_no_dataset_folder(tmp_path: Path) -> None:
    with pytest.raises(SplitsError, match="no dataset folder"):
        make_splits(tmp_path, 2, 0)


def test_split_subjects_by_validation_fraction_or_by_fold(tmp_path: Path) -> None:
    from jointseg.config import ExperimentConfig

    fake_dataset(tmp_path, "Dataset001_Ankle", cases=5)
    fake_dataset(tmp_path, "Dataset002_Knee", cases=2)
    cfg = ExperimentConfig(
        name="split",
        datasets=[
            {"name": "ankle", "folder": "Dataset001_Ankle"},
            {"name": "knee", "folder": "Dataset002_Knee"},
        ],
        training={"validation_fraction": 0.2, "seed": 3},
    )
    subjects = split_subjects(cfg, tmp_path, None, None)
    train, validation = subjects["ankle"]
    assert len(validation) == 1 and len(train) == 4  # round(0.2 * 5)
    assert sorted(train + validation) == [f"dataset001_ankle_{i:03d}" for i in range(5)]
    assert [len(part) for part in subjects["knee"]] == [1, 1]  # at least one on each side
    assert split_subjects(cfg, tmp_path, None, None) == subjects  # seeded
    with pytest.raises(SplitsError, match="--fold needs a splits file"):
        split_subjects(cfg, tmp_path, 0, None)
    write_splits(tmp_path, folds=2, seed=0)
    by_fold = split_subjects(cfg, tmp_path, 1, None)
    splits = load_splits(tmp_path / "splits.json")
    assert by_fold["knee"] == fold_cases(splits, tmp_path / "Dataset002_Knee", 1)
