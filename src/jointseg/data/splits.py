"""Cross-validation splits by subject, one file for every scheme and run (paired comparisons).

The splits file (JSON)::

    {
      "folds": 5,
      "seed": 0,
      "leave_one_subject_out": ["Dataset002_Knee"],
      "datasets": {
        "Dataset001_Ankle": [
          {"train": ["ankle_000", ...], "validation": ["ankle_003", ...]},
          ...                                   # one entry per fold, folds numbered from 0
        ],
        ...
      }
    }

A dataset's subjects are its labelled training cases (``imagesTr``/``labelsTr``). A case is its
own subject unless ``dataset.json`` holds a ``"subjects"`` mapping ``{case_id: subject_id}``,
in which case all cases of a subject fall in the same fold. Subjects are shuffled with a
generator seeded by the seed and the dataset folder's name (adding a dataset never changes the
others' splits) and dealt to the folds in turn, so fold sizes differ by at most one subject;
with as many folds as subjects this is leave-one-subject-out.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from jointseg.config import ExperimentConfig
from jointseg.data.manifest import list_cases, load_manifest
from jointseg.utils.atomic import atomic_write_json

SPLITS_FILE = "splits.json"


class SplitsError(ValueError):
    """Splits that cannot be made or read; the message names the dataset or the file."""


def dataset_folders(data_dir: str | Path) -> list[Path]:
    """Dataset folders (those holding a ``dataset.json``) of a study folder, sorted by name.

    A dataset folder given directly is its own only dataset.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: no such folder")
    if (data_dir / "dataset.json").is_file():
        return [data_dir]
    return sorted(p for p in data_dir.iterdir() if p.is_dir() and (p / "dataset.json").is_file())


def subject_groups(dataset_dir: str | Path) -> dict[str, list[str]]:
    """Subject id -> its labelled training case ids, both sorted."""
    dataset_dir = Path(dataset_dir)
    mapping = getattr(load_manifest(dataset_dir), "subjects", None) or {}
    if not isinstance(mapping, dict):
        raise SplitsError(f"{dataset_dir}/dataset.json: 'subjects' must map case ids to subjects")
    groups: dict[str, list[str]] = {}
    for case in list_cases(dataset_dir, "train"):
        if case.label is not None:
            groups.setdefault(str(mapping.get(case.case_id, case.case_id)), []).append(case.case_id)
    return {subject: sorted(groups[subject]) for subject in sorted(groups)}


def assign_folds(subjects: list[str], folds: int, seed: int, name: str) -> list[list[str]]:
    """Deal ``subjects`` (shuffled by ``seed`` and ``name``) to ``folds`` folds in turn."""
    if folds < 2:
        raise SplitsError(f"need at least 2 folds, got {folds}")
    if folds > len(subjects):
        raise SplitsError(
            f"dataset {name!r} has {len(subjects)} labelled subjects, fewer than the {folds} "
            f"folds asked for (use --folds {len(subjects)} for leave-one-subject-out)"
        )
    rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
    order = rng.permutation(len(subjects))
    buckets: list[list[str]] = [[] for _ in range(folds)]
    for position, index in enumerate(order):
        buckets[position % folds].append(subjects[index])
    return [sorted(bucket) for bucket in buckets]


def make_splits(data_dir: str | Path, folds: int, seed: int = 0) -> dict:
    """The splits of every dataset folder of ``data_dir`` (see the module docstring)."""
    folders = dataset_folders(data_dir)
    if not folders:
        raise SplitsError(f"{data_dir}: no dataset folder (a folder with a dataset.json) found")
    datasets: dict[str, list[dict[str, list[str]]]] = {}
    loso: list[str] = []
    for folder in folders:
        groups = subject_groups(folder)
        buckets = assign_folds(list(groups), folds, seed, folder.name)
        all_cases = sorted(case for cases in groups.values() for case in cases)
        entries = []
        for bucket in buckets:
            validation = sorted(case for subject in bucket for case in groups[subject])
            held = set(validation)
            train = [c for c in all_cases if c not in held]
            entries.append({"train": train, "validation": validation})
        datasets[folder.name] = entries
        if folds == len(groups):
            loso.append(folder.name)
    return {"folds": folds, "seed": seed, "leave_one_subject_out": loso, "datasets": datasets}


def write_splits(data_dir: Path, folds: int, seed: int, out: Path | None = None) -> Path:
    """Write the splits file (default ``data_dir/splits.json``) and return its path."""
    splits = make_splits(data_dir, folds, seed)
    path = Path(out) if out is not None else Path(data_dir) / SPLITS_FILE
    atomic_write_json(path, splits)
    return path


def load_splits(path: str | Path) -> dict:
    """Read and check a splits file: folds of train/validation case lists per dataset."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no splits file; write one with `jointseg splits`")
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SplitsError(f"{path}: not valid JSON: {error}") from None
    datasets = splits.get("datasets") if isinstance(splits, dict) else None
    if not isinstance(datasets, dict) or not datasets:
        raise SplitsError(f"{path}: expected a 'datasets' mapping of dataset folders to folds")
    for name, entries in datasets.items():
        _check_folds(path, name, entries)
    return splits


def _check_folds(path: Path, name: str, entries: object) -> None:
    if not isinstance(entries, list) or not entries:
        raise SplitsError(f"{path}: dataset {name!r} needs a list of folds")
    seen: set[str] = set()
    for index, fold in enumerate(entries):
        ok = isinstance(fold, dict) and all(
            isinstance(fold.get(key), list) and all(isinstance(c, str) for c in fold[key])
            for key in ("train", "validation")
        )
        if not ok:
            raise SplitsError(
                f"{path}: dataset {name!r} fold {index} needs 'train' and 'validation' lists of ids"
            )
        overlap = set(fold["train"]) & set(fold["validation"])
        if overlap:
            raise SplitsError(
                f"{path}: dataset {name!r} fold {index} trains on validation cases "
                f"{sorted(overlap)[:5]}"
            )
        repeated = seen & set(fold["validation"])
        if repeated:
            raise SplitsError(
                f"{path}: dataset {name!r}: cases {sorted(repeated)[:5]} validate in two folds"
            )
        seen |= set(fold["validation"])


def fold_cases(splits: dict, dataset_folder: str | Path, fold: int) -> tuple[list[str], list[str]]:
    """(train case ids, validation case ids) of a dataset folder (name or path) in a fold."""
    name = Path(dataset_folder).name
    datasets = splits["datasets"]
    if name not in datasets:
        known = ", ".join(sorted(datasets))
        raise SplitsError(f"the splits file has no dataset {name!r}; it holds: {known}")
    entries = datasets[name]
    if not 0 <= fold < len(entries):
        raise SplitsError(
            f"dataset {name!r} has folds 0..{len(entries) - 1} in the splits file, not {fold}"
        )
    return list(entries[fold]["train"]), list(entries[fold]["validation"])


def split_subjects(
    cfg: ExperimentConfig, data_dir: Path, fold: int | None, splits_path: Path | None
) -> dict[str, tuple[list[str], list[str]]]:
    """Per domain of ``cfg``: (training case ids, validation case ids).

    With a splits file (``splits_path``, or ``data_dir/splits.json`` when only ``fold`` is
    given), fold ``fold`` of it; otherwise a ``cfg.training.validation_fraction`` of each
    dataset's cases, drawn with a generator seeded by the training seed and the dataset's index
    (at least one case on each side when there are two or more).
    """
    result = {}
    splits = load_splits(splits_path) if splits_path is not None else None
    if fold is not None and splits is None:
        default = Path(data_dir) / "splits.json"
        if not default.is_file():
            raise SplitsError(f"--fold needs a splits file: none given and {default} is missing")
        splits = load_splits(default)
    for index, dataset in enumerate(cfg.datasets):
        folder = Path(data_dir) / dataset.folder
        cases = [c.case_id for c in list_cases(folder, "train")]
        if not cases:
            raise SplitsError(f"{folder}: no training cases in imagesTr")
        if splits is not None:
            result[dataset.name] = fold_cases(splits, folder, fold or 0)
            continue
        rng = np.random.default_rng([cfg.training.seed, index])
        count = int(round(cfg.training.validation_fraction * len(cases)))
        if cfg.training.validation_fraction > 0 and len(cases) >= 2:
            count = min(max(count, 1), len(cases) - 1)
        chosen = set(rng.permutation(cases)[:count].tolist()) if count else set()
        result[dataset.name] = ([c for c in cases if c not in chosen], sorted(chosen))
    return result
