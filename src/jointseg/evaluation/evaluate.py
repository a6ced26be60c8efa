"""``jointseg evaluate``: score a run on the subjects it has not trained on.

- A run folder of ``jointseg train`` (``run.json``): each of its datasets' held-out test cases
  (``imagesTs``/``labelsTs``, subset ``test``) and its validation subjects
  (``RunInfo.validation_cases``, subset ``validation``), predicted by the run's Predictor.
- A folder of ``jointseg cv`` (``cv.json``): every subject's out-of-fold prediction (subset
  ``oof``).

Writes ``RUN/evaluation/`` (or ``--out``; required for the packaged model, the word
``pretrained``): ``metrics.csv`` (one row per subject and structure), ``summary.json``,
``report.md`` with its figures, and ``predictions/<domain>/<case>.nii.gz``.
A train run's predictions are postprocessed as its ``postprocessing.json`` says; the scores
without postprocessing then also go to ``metrics_without_postprocessing.csv``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import SimpleITK as sitk
from tqdm import tqdm

from jointseg.config import EvaluationConfig
from jointseg.data.io import read_image, verify_scans, write_image
from jointseg.data.manifest import Case, DatasetError, list_cases, load_manifest
from jointseg.evaluation.metrics import METRICS, score_case
from jointseg.evaluation.report import summarize, write_report
from jointseg.inference.packaged import PRETRAINED, output_folder, resolve_run
from jointseg.inference.postprocess import Postprocessing
from jointseg.runs import RunError, RunFolder
from jointseg.utils.atomic import atomic_path, atomic_write_json

CV_INDEX = "cv.json"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
RAW_METRICS_FILE = "metrics_without_postprocessing.csv"
COLUMNS: tuple[str, ...] = ("scheme", "dataset", "case", "subset", "structure", *METRICS)

logger = logging.getLogger(__name__)


class LabelPredictor(Protocol):
    """What evaluation needs of a predictor: ``predict(image, domain).label_map``."""

    def predict(self, image: sitk.Image, domain: str) -> Any: ...


@dataclass(frozen=True)
class EvalCase:
    """One subject to score: its files and, for a cv folder, its out-of-fold prediction."""

    domain: str
    case_id: str
    subset: str
    image: Path
    label: Path
    prediction: Path | None = None


@dataclass
class EvalPlan:
    """What to score: the scheme, the structures of each domain, and the cases."""

    scheme: str
    source: str
    data_dir: Path
    structures: dict[str, dict[str, int]]
    cases: list[EvalCase] = field(default_factory=list)


def _resolve_data_dir(recorded: str | None, data: Path | None, folder: Path) -> Path:
    if data is not None:
        path = Path(data)
    elif recorded:
        path = Path(recorded)
        if not path.is_absolute() and not path.exists() and (folder / path).exists():
            path = folder / path
    else:
        raise RunError(f"{folder}: the run does not record its data folder; pass --data")
    if not path.is_dir():
        raise FileNotFoundError(f"data folder {path} of {folder} not found; pass --data")
    return path


def _labelled(cases: Iterable[Case]) -> dict[str, Case]:
    return {c.case_id: c for c in cases if c.label is not None}


def plan_train_run(run_dir: Path, data: Path | None = None) -> EvalPlan:
    """Test cases and validation subjects of every dataset of a trained run.

    A domain the run lists no training cases of while listing others' (the packaged model's
    domains in a run ``jointseg adapt`` made of it) is left out, with a warning, when its
    dataset folder is not in the study; any other missing dataset is an error.
    """
    info = RunFolder(Path(run_dir)).info()
    data_dir = _resolve_data_dir(info.data_dir, data, run_dir)
    plan = EvalPlan(info.scheme, "run", data_dir, {})
    for entry in info.domains:
        dataset_dir = data_dir / entry.folder
        foreign = bool(info.training_cases) and entry.name not in info.training_cases
        if foreign and not dataset_dir.is_dir():
            logger.warning("%s: domain %r not evaluated: its dataset %s is not at hand (the run "
                           "was adapted from a run that did not record it)",
                           run_dir, entry.name, dataset_dir)  # fmt: skip
            continue
        load_manifest(dataset_dir)
        plan.structures[entry.name] = dict(entry.structures)
        for case in _labelled(list_cases(dataset_dir, "test")).values():
            plan.cases.append(EvalCase(entry.name, case.case_id, "test", case.image, case.label))
        wanted = info.validation_cases.get(entry.name, info.validation_cases.get(entry.folder, []))
        train = _labelled(list_cases(dataset_dir, "train"))
        for case_id in sorted(wanted):
            if case_id not in train:
                raise DatasetError(
                    f"validation case {case_id!r} of {entry.name!r} has no image and label "
                    f"in {dataset_dir}/imagesTr, labelsTr"
                )
            case = train[case_id]
            plan.cases.append(EvalCase(entry.name, case_id, "validation", case.image, case.label))
    return plan


def _cv_domains(index: dict, cv_dir: Path) -> list[tuple[str, str, dict[str, int] | None]]:
    """(name, folder, structures or None) of each domain listed in ``cv.json``."""
    folders = index.get("folders", {})
    result = []
    for item in index.get("domains", []):
        entry = {"name": item} if isinstance(item, str) else dict(item)
        name = entry["name"]
        folder = entry.get("folder") or folders.get(name)
        if not folder:
            raise RunError(f"{cv_dir / CV_INDEX}: no dataset folder recorded for domain {name!r}")
        result.append((name, folder, entry.get("structures")))
    return result


def plan_cv(cv_dir: Path, data: Path | None = None) -> EvalPlan:
    """Every subject's out-of-fold prediction listed in a cv folder's ``cv.json``."""
    index = json.loads((cv_dir / CV_INDEX).read_text(encoding="utf-8"))
    data_dir = _resolve_data_dir(index.get("data_dir"), data, cv_dir)
    plan = EvalPlan(str(index.get("scheme", cv_dir.name)), "cv", data_dir, {})
    predictions = index.get("predictions", {})
    for name, folder, structures in _cv_domains(index, cv_dir):
        dataset_dir = data_dir / folder
        plan.structures[name] = dict(structures or load_manifest(dataset_dir).structures)
        train = _labelled(list_cases(dataset_dir, "train"))
        for case_id, relative in sorted(predictions.get(name, {}).items()):
            if case_id not in train:
                raise DatasetError(f"case {case_id!r} of {name!r} has no label in {dataset_dir}")
            case = train[case_id]
            plan.cases.append(
                EvalCase(name, case_id, "oof", case.image, case.label, cv_dir / relative)
            )
    return plan


def plan_evaluation(run_dir: Path, data: Path | None = None) -> EvalPlan:
    """The plan of a train run or a cv folder."""
    run_dir = Path(run_dir)
    if (run_dir / CV_INDEX).is_file():
        return plan_cv(run_dir, data)
    if RunFolder(run_dir).is_run():
        return plan_train_run(run_dir, data)
    raise RunError(
        f"{run_dir}: neither a run folder ({RunFolder.INDEX}) nor a cv folder ({CV_INDEX})"
    )


def prediction_path(out_dir: Path, domain: str, case_id: str) -> Path:
    """Where evaluation keeps the predicted label map of a case."""
    return out_dir / "predictions" / domain / f"{case_id}.nii.gz"


def _rows(plan: EvalPlan, case: EvalCase, predicted: sitk.Image, reference: sitk.Image) -> list:
    return [
        {"scheme": plan.scheme, "dataset": case.domain, "case": case.case_id,
         "subset": case.subset, **row}
        for row in score_case(predicted, reference, plan.structures[case.domain])
    ]  # fmt: skip


def score_plan(
    plan: EvalPlan,
    out_dir: Path,
    predictor: LabelPredictor | None,
    progress: bool = True,
    postprocessing: Postprocessing | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Predict (or read) and score every case; save predictions; one row per case and structure.

    With ``postprocessing``, predictions are postprocessed before they are saved and scored;
    the second frame then holds the scores without it (else None).
    """
    rows: list[dict[str, Any]] = []
    raw_rows: list[dict[str, Any]] = []
    for case in tqdm(plan.cases, desc="evaluate", unit="case", disable=not progress):
        reference = read_image(case.label)
        if case.prediction is not None:
            predicted = read_image(case.prediction)
        else:
            if predictor is None:
                raise ValueError(f"no predictor for case {case.case_id!r} of {case.domain!r}")
            predicted = predictor.predict(read_image(case.image), case.domain).label_map
        if postprocessing is not None:
            raw_rows += _rows(plan, case, predicted, reference)
            predicted = postprocessing.apply_image(
                predicted, case.domain, plan.structures[case.domain]
            )
        write_image(predicted, prediction_path(out_dir, case.domain, case.case_id))
        rows += _rows(plan, case, predicted, reference)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    raw = pd.DataFrame(raw_rows, columns=list(COLUMNS)) if postprocessing is not None else None
    return frame, raw


def config_evaluation(run_dir: Path) -> EvaluationConfig:
    """The run config's ``evaluation`` section; its defaults for a folder without a config
    (an evaluation or cv folder)."""
    folder = RunFolder(Path(run_dir))
    return folder.config().evaluation if folder.config_file.is_file() else EvaluationConfig()


def config_tta(run_dir: Path) -> bool:
    """The run config's ``evaluation.tta``."""
    return config_evaluation(run_dir).tta


def evaluate_run(
    run_dir: str | Path,
    data: Path | None = None,
    predictor: LabelPredictor | None = None,
    *,
    progress: bool = True,
    postprocess: bool = True,
    out: str | Path | None = None,
    device: str = "cpu",
) -> Path:
    """Score a train run or a cv folder; write ``out`` (default ``RUN/evaluation/``); return
    ``report.md``'s path.

    ``run_dir`` may be the word ``pretrained`` (the packaged model; ``out`` required).
    ``predictor`` (anything with ``predict(image, domain).label_map``) defaults to the run's
    ``Predictor.from_run(run_dir)`` on ``device``, with test-time flips when the run's config
    sets ``evaluation.tta``; a cv folder needs none. A train run's predictions are postprocessed
    as its ``postprocessing.json`` says (none without the file, or with ``postprocess=False``);
    the scores without postprocessing then go to ``metrics_without_postprocessing.csv`` and the
    report. Out-of-fold predictions of a cv folder are scored as they are.
    """
    out_dir = output_folder(run_dir, out, RunFolder.EVALUATION, "evaluation")
    title = PRETRAINED if str(run_dir) == PRETRAINED else Path(run_dir).name
    run_dir = resolve_run(run_dir)
    plan = plan_evaluation(run_dir, data)
    if not plan.cases:
        raise DatasetError(
            f"{run_dir}: nothing to evaluate (no labelled test case, validation or "
            "out-of-fold subject)"
        )
    verify_scans(  # every unreadable file listed before anything is predicted
        path for case in plan.cases for path in (case.label, case.prediction or case.image)
    )
    postprocessing = None
    if not postprocess:
        logger.info("%s: postprocessing disabled; label maps are scored as predicted", run_dir)
    elif plan.source == "run":
        postprocessing = Postprocessing.load(run_dir)
    if predictor is None and any(c.prediction is None for c in plan.cases):
        from jointseg.inference.predictor import Predictor

        predictor = Predictor.from_run(run_dir, device, tta=config_tta(run_dir))
    frame, raw = score_plan(plan, out_dir, predictor, progress, postprocessing)
    with atomic_path(out_dir / METRICS_FILE) as tmp:
        frame.to_csv(tmp, index=False)
    summary: dict[str, Any] = {
        "scheme": plan.scheme,
        "source": plan.source,
        "data_dir": str(plan.data_dir),
        "metrics": list(METRICS),
        "summary": summarize(frame),
        "postprocessing": None,
    }
    if postprocessing is not None and raw is not None:
        with atomic_path(out_dir / RAW_METRICS_FILE) as tmp:
            raw.to_csv(tmp, index=False)
        summary["postprocessing"] = {
            "steps": {d: postprocessing.describe(d) for d in plan.structures},
            "summary_without": summarize(raw),
        }
    else:
        with contextlib.suppress(FileNotFoundError):  # left by an earlier evaluation
            (out_dir / RAW_METRICS_FILE).unlink()
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    files = {
        (c.domain, c.case_id): (c.image, c.label, prediction_path(out_dir, c.domain, c.case_id))
        for c in plan.cases
    }
    return write_report(out_dir, frame, summary, title, plan.structures, files)
