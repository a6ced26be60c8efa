"""``jointseg cv``: train every fold, predict each held-out subject in its original geometry.

The folder it writes::

    CV/fold_<k>/                     one run folder per fold (jointseg train)
    CV/predictions/<domain>/<case>.nii.gz   out-of-fold label maps, on the scan's own grid
    CV/cv.json                       scheme, study folder, domains, splits file, predictions

Resumable fold by fold: a trained fold and an existing prediction are reused.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

from jointseg.config import load_config
from jointseg.data.io import read_image, write_image
from jointseg.data.manifest import list_cases
from jointseg.data.splits import load_splits, write_splits
from jointseg.inference.predictor import Predictor
from jointseg.utils.atomic import atomic_write_json
from jointseg.utils.compute import AUTO_DEVICE
from jointseg.workflows.train import train_run

CV_INDEX = "cv.json"

logger = logging.getLogger(__name__)


def run_cross_validation(
    config: Path,
    data: Path,
    out: Path,
    scheme: str | None = None,
    splits: Path | None = None,
    progress: bool = True,
    device: str = AUTO_DEVICE,
) -> Path:
    """Train and predict every fold of the splits file on ``device`` (``auto``: CUDA when
    available); returns the ``cv.json`` path."""
    cfg = load_config(config, {"scheme": scheme} if scheme else None)
    data, out = Path(data), Path(out)
    if splits is None:
        splits = data / "splits.json"
        if not splits.is_file():
            write_splits(data, cfg.evaluation.folds, cfg.training.seed, splits)
            logger.info("[cv] wrote %s (%d folds)", splits, cfg.evaluation.folds)
    folds = load_splits(splits)
    fold_count = _fold_count(folds, [d.folder for d in cfg.datasets])
    predictions: dict[str, dict[str, str]] = {d.name: {} for d in cfg.datasets}
    for fold in range(fold_count):
        run_dir = out / f"fold_{fold}"
        logger.info("[cv] fold %d/%d (%s) -> %s", fold + 1, fold_count, cfg.scheme, run_dir)
        info = train_run(
            cfg, data, run_dir, fold=fold, splits=splits, resume=run_dir.exists(),
            progress=progress, device=device,
        )  # fmt: skip
        predictor = Predictor.from_run(run_dir, device, tta=cfg.evaluation.tta)
        for entry in info.domains:
            cases = {c.case_id: c for c in list_cases(data / entry.folder, "train")}
            held_out = info.validation_cases.get(entry.name, [])
            for case_id in tqdm(held_out, desc=f"predict {entry.name}", disable=not progress):
                relative = Path("predictions") / entry.name / f"{case_id}.nii.gz"
                target = out / relative
                if not target.is_file():
                    result = predictor.predict(read_image(cases[case_id].image), entry.name)
                    write_image(result.label_map, target)
                predictions[entry.name][case_id] = str(relative)
    index = {
        "scheme": cfg.scheme,
        "data_dir": str(data.resolve()),
        "splits": str(Path(splits).resolve()),
        "folds": fold_count,
        "domains": [
            {"name": e.name, "folder": e.folder, "structures": e.structures} for e in info.domains
        ],
        "predictions": predictions,
    }
    atomic_write_json(out / CV_INDEX, index)
    return out / CV_INDEX


def _fold_count(splits: dict, folders: list[str]) -> int:
    counts = {len(splits["datasets"][f]) for f in folders if f in splits["datasets"]}
    missing = [f for f in folders if f not in splits["datasets"]]
    if missing:
        raise ValueError(f"the splits file has no entry for {', '.join(missing)}")
    if len(counts) != 1:
        raise ValueError(f"datasets have different fold counts in the splits file: {counts}")
    return counts.pop()
