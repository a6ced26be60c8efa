"""nnU-Net v2 in the paper benchmark: the same folds, the same scoring, two fair variants.

- ``default``: nnU-Net's own 2d plan, trained with the wall-clock budget of the longest-trained
  jointseg scheme of the same fold, split evenly over the datasets (one nnU-Net network per
  dataset, as ``individual``).
- ``matched``: the 2d plan edited to jointseg's input (patch, batch size, in-plane spacing; the
  network's stages cut where the patch no longer allows another halving, bottleneck >= 4 px),
  trained to its own plateau (EMA pseudo-Dice of its validation batches, patience in epochs)
  with an epoch cap.

Each fold's nnU-Net network trains on exactly the training/validation subjects of the fold's
jointseg runs (``splits_final.json``), predicts the fold's held-out subjects (the view's
``imagesTs``), which :func:`jointseg.evaluation.metrics.score_case` scores as it scores jointseg.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pandas as pd
from _locks import claimed, locked
from _nnunet import NnUNet

from jointseg.data.manifest import list_cases, load_manifest
from jointseg.evaluation.metrics import score_case
from jointseg.utils.atomic import atomic_write_json, atomic_write_text

DEFAULT_PLANS = "nnUNetPlans"
MATCHED_PLANS = "nnUNetPlansMatched"
VARIANTS = {
    "default": "nnU-Net 2d (default plan, same time)",
    "matched": "nnU-Net 2d (matched plan, plateau)",
}
MIN_BOTTLENECK = 4


def budgets(nnunet: dict, longest_seconds: float, datasets: int, threads: int) -> dict:
    """Each variant's training budget (``nnUNetTrainerBudget``'s ``NNUNET_BUDGET_<KEY>``) from a
    profile's ``nnunet`` settings: ``default`` gets the wall-clock of the longest jointseg cell
    of the fold split evenly over the datasets, in epochs of ``default_iterations`` (default:
    ``iterations``; short epochs let a large plan stop near its time), ``matched`` trains to
    its plateau (counted after ``min_epochs``) with an epoch cap; both with jointseg's
    ``threads``."""
    shared = {"val_iterations": nnunet["val_iterations"], "threads": threads}
    return {
        "default": {
            "seconds": longest_seconds / datasets,
            "iterations": nnunet.get("default_iterations", nnunet["iterations"]),
            **shared,
        },
        "matched": {
            "iterations": nnunet["iterations"],
            "epochs": nnunet["epochs"],
            "plateau_patience": nnunet["patience"],
            "plateau_min_epochs": nnunet.get("min_epochs", 0),
            **shared,
        },
    }


def matched_plans(
    plans: dict, patch: tuple[int, int], batch: int, spacing: float | None, name: str
) -> dict:
    """nnU-Net's plans with the 2d configuration set to jointseg's patch, batch and spacing."""
    result = copy.deepcopy(plans)
    result["plans_name"] = name
    config = result["configurations"]["2d"]
    config["patch_size"] = [int(p) for p in patch]
    config["batch_size"] = int(batch)
    if spacing is not None:
        config["spacing"] = [float(spacing)] * len(config["spacing"])
    config["data_identifier"] = f"{name}_2d"
    arch = config["architecture"]["arch_kwargs"]
    halvings = int(math.floor(math.log2(min(patch) / MIN_BOTTLENECK)))
    stages = max(2, min(int(arch["n_stages"]), halvings + 1))
    arch["n_stages"] = stages
    for key in ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage"):
        arch[key] = arch[key][:stages]
    arch["n_conv_per_stage_decoder"] = arch["n_conv_per_stage_decoder"][: stages - 1]
    return result


def write_matched_plans(nn: NnUNet, dataset_id: int, cfg) -> None:
    """Write ``nnUNetPlansMatched.json`` beside nnU-Net's own plans and preprocess it."""
    folder = nn.preprocessed / nn.dataset_name(dataset_id)
    plans = json.loads((folder / f"{DEFAULT_PLANS}.json").read_text(encoding="utf-8"))
    edited = matched_plans(
        plans,
        tuple(cfg.preprocessing.patch_size),
        cfg.training.batch_size,
        cfg.preprocessing.target_spacing,
        MATCHED_PLANS,
    )
    atomic_write_json(folder / f"{MATCHED_PLANS}.json", edited)


def _score(nn_label: str, view: Path, folder: str, predictions: Path) -> list[dict]:
    import SimpleITK as sitk

    structures = load_manifest(view / folder).structures
    rows = []
    for case in list_cases(view / folder, "test"):
        predicted = sitk.ReadImage(str(predictions / f"{case.case_id}.nii.gz"))
        reference = sitk.ReadImage(str(case.label))
        predicted = sitk.Cast(predicted, reference.GetPixelID())
        for row in score_case(predicted, reference, structures):
            rows.append({"scheme": nn_label, "case": case.case_id, **row})
    return rows


def prepare(nn: NnUNet, cfg, view: Path, variant: str, folder: Path) -> dict[str, int]:
    """Link the fold's datasets, plan and preprocess them for ``variant`` (once, whichever
    process comes first; a marker file is written after each finished step, so that an
    interrupted preprocessing runs again); returns each dataset's nnU-Net id."""
    ids = {d.name: nn.add_dataset(view / d.folder) for d in cfg.datasets}
    logs = folder / "logs"

    def marker(dataset_id: int, plans: str) -> Path:
        return nn.preprocessed / nn.dataset_name(dataset_id) / f".{plans}_2d.done"

    with locked(folder / "preprocessing"):
        if not all(marker(i, DEFAULT_PLANS).is_file() for i in ids.values()):
            nn.plan_and_preprocess(list(ids.values()), logs / "plan_and_preprocess.log")
            for dataset_id in ids.values():
                marker(dataset_id, DEFAULT_PLANS).write_text("", encoding="utf-8")
        if variant == "matched":
            for dataset_id in ids.values():
                if marker(dataset_id, MATCHED_PLANS).is_file():
                    continue
                write_matched_plans(nn, dataset_id, cfg)
                nn.run(
                    ["nnUNetv2_preprocess", "-d", str(dataset_id), "-plans_name",
                     MATCHED_PLANS, "-c", "2d", "-np", str(nn.threads)],
                    logs / f"preprocess_{dataset_id}.log",
                )  # fmt: skip
                marker(dataset_id, MATCHED_PLANS).write_text("", encoding="utf-8")
    return ids


def train_fold(
    nn: NnUNet,
    cfg,
    view: Path,
    run_info: dict,
    variant: str,
    budget: dict,
    device: str,
    mirroring: bool,
    folder: Path,
) -> None:
    """Train and predict every dataset of a fold view that no other process has claimed and
    none has finished (``train_<variant>_<dataset>.json``, ``predict_<variant>_<dataset>.json``
    mark what is done), so that several processes share a fold and a rerun resumes."""
    plans = DEFAULT_PLANS if variant == "default" else MATCHED_PLANS
    logs = folder / "logs"
    ids: dict[str, int] | None = None
    for d in cfg.datasets:
        record_path = folder / f"train_{variant}_{d.name}.json"
        done = folder / f"predict_{variant}_{d.name}.json"
        if record_path.is_file() and done.is_file():
            continue
        with claimed(folder / f"{variant}_{d.name}") as mine:
            if not mine:
                continue
            ids = ids or prepare(nn, cfg, view, variant, folder)
            dataset_id = ids[d.name]
            if not record_path.is_file():
                nn.write_splits(
                    dataset_id,
                    run_info["training_cases"][d.name],
                    run_info["validation_cases"][d.name],
                )
                record = nn.train(
                    dataset_id, logs / f"train_{variant}_{d.name}.log", budget, device, plans
                )
                record["plan"] = nn.plan_2d(dataset_id, plans)
                atomic_write_json(record_path, record)
            if not done.is_file():
                stats = nn.predict(
                    dataset_id,
                    view / d.folder / "imagesTs",
                    folder / f"predictions_{variant}" / d.name,
                    logs / f"predict_{variant}_{d.name}.log",
                    mirroring=mirroring,
                    checkpoint="checkpoint_best.pth",
                    device=device,
                    plans=plans,
                )
                atomic_write_json(done, stats)
            dataset_scores(view, variant, d, folder)


def dataset_scores(view: Path, variant: str, dataset, folder: Path) -> pd.DataFrame:
    """One dataset's scored rows of a predicted variant, kept in ``scores_<variant>_<dataset>.csv``
    (scored from the predictions once; a records folder keeps the file without them)."""
    path = folder / f"scores_{variant}_{dataset.name}.csv"
    if path.is_file():
        return pd.read_csv(path)
    predictions = folder / f"predictions_{variant}" / dataset.name
    rows = _score(VARIANTS[variant], view, dataset.folder, predictions)
    frame = pd.DataFrame([{**row, "dataset": dataset.name} for row in rows])
    atomic_write_text(path, frame.to_csv(index=False))
    return frame


def score_fold(cfg, view: Path, variant: str, folder: Path) -> tuple[pd.DataFrame, dict] | None:
    """Scored rows (all metrics) and the training records of a fold's finished variant, or
    None while a dataset is not done."""
    frames, records = [], {}
    for d in cfg.datasets:
        record_path = folder / f"train_{variant}_{d.name}.json"
        if not (record_path.is_file() and (folder / f"predict_{variant}_{d.name}.json").is_file()):
            return None
        records[d.name] = json.loads(record_path.read_text(encoding="utf-8"))
        frames.append(dataset_scores(view, variant, d, folder))
    return pd.concat(frames, ignore_index=True), records
