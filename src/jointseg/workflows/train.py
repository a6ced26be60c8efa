"""``jointseg train`` and ``jointseg ablate``: a config and a study folder to finished run folders.

A run is trained (:func:`jointseg.training.runner.train_networks`), then, by rank 0, its domain
recognition is measured (:func:`jointseg.recognition.fitting.fit_recognition`, and the anatomy
statistics of the training labels, :func:`jointseg.recognition.fitting.fit_anatomy`) and its
postprocessing decided on the validation subjects
(:func:`jointseg.evaluation.postprocessing.decide_postprocessing`). Recognition and training
are siblings above ``models``: the workflow, not training, calls the fitting.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import torch

from jointseg.config import ExperimentConfig, load_config
from jointseg.evaluation.postprocessing import decide_postprocessing, decision_table
from jointseg.inference.packaged import resolve_run
from jointseg.models import load_model
from jointseg.models.inferer import WholeViewInferer
from jointseg.models.network import Route
from jointseg.recognition.anatomy import ANATOMY_FILE
from jointseg.recognition.fitting import fit_anatomy, fit_recognition, segment_whole_view
from jointseg.recognition.references import REFERENCE_FILE
from jointseg.runs import RunInfo
from jointseg.training.runner import TrainedRun, train_networks
from jointseg.utils.compute import AUTO_DEVICE

logger = logging.getLogger(__name__)


def train_from_cli(
    config: Path,
    data: Path,
    out: Path,
    scheme: str | None = None,
    fold: int | None = None,
    splits: Path | None = None,
    resume: bool = False,
    devices: int = 1,
    seed: int | None = None,
    device: str = AUTO_DEVICE,
) -> RunInfo:
    """Load the config, apply the command-line overrides and train."""
    overrides: dict = {}
    if scheme is not None:
        overrides["scheme"] = scheme
    if seed is not None:
        overrides["training.seed"] = seed
    cfg = load_config(config, overrides)
    return train_run(
        cfg, data, out, fold=fold, splits=splits, resume=resume, devices=devices, device=device
    )


def ablate_from_cli(
    config: Path, data: Path, out: Path, device: str = AUTO_DEVICE
) -> dict[str, RunInfo]:
    """Train every scheme of ``cfg.schemes`` into ``out/<scheme>``, resumable scheme by scheme."""
    cfg = load_config(config)
    runs = {}
    for scheme in cfg.schemes:
        run_dir = Path(out) / scheme.replace("+", "_")
        scheme_cfg = cfg.model_copy(update={"scheme": scheme})
        done = (run_dir / "run.json").is_file()
        state = "done, skipped" if done else "training"
        logger.info("[ablate] %s: %s -> %s", scheme, state, run_dir)
        runs[scheme] = train_run(scheme_cfg, data, run_dir, resume=run_dir.exists(), device=device)
    return runs


def train_run(
    cfg: ExperimentConfig,
    data_dir: Path,
    out: Path,
    fold: int | None = None,
    splits: Path | None = None,
    resume: bool = False,
    devices: int = 1,
    progress: bool = True,
    callbacks: list[L.Callback] | None = None,
    device: str = AUTO_DEVICE,
) -> RunInfo:
    """Train every network of ``cfg.scheme`` into ``out``, measure its domain recognition and
    decide its postprocessing; returns the run's index. ``device``: where the networks train
    and predict the validation subjects (``auto``: CUDA when available)."""
    data_dir, out = Path(data_dir), Path(out)
    initial = cfg.training.initial_weights
    trained = train_networks(
        cfg, data_dir, out, fold, splits, resume, devices, progress, callbacks,
        resolve_run(initial) if initial is not None else None, device,
    )  # fmt: skip
    if trained.primary:
        fit_run_recognition(out, trained, progress)
        fit_run_anatomy(out, trained, cfg)
        _decide_postprocessing(out, data_dir, progress, device)
        _log_summary(out, trained)
    return trained.info


def run_routes(out: Path, trained: TrainedRun) -> dict[str, Route]:
    """Every domain's route through the run's saved networks."""
    paths = {}
    for plan in trained.plans:
        net, _ = load_model(out / "models" / plan.name)
        for domain in plan.domains:
            union = plan.label_space == "union"
            select = trained.label_space.union_channels(domain) if union else None
            paths[domain] = Route.for_domain(net, plan.domains, domain, select)
    return paths


def fit_run_recognition(out: Path, trained: TrainedRun, progress: bool = True) -> None:
    """Measure the run's domain references and calibration from its training slice cache."""
    paths = run_routes(out, trained)
    caches = trained.caches
    volumes = {  # read-only memory-mapped views: only the recognition subsample is read
        name: tuple(
            [caches[name].images[slice(*caches[name].case_slices[case])] for case in cases]
            for cases in split
        )
        for name, split in trained.subjects.items()
    }
    calibration = fit_recognition(out, paths, volumes, progress=progress)  # type: ignore[arg-type]
    if calibration is None:
        logger.info("[train] domain recognition: fewer than two training scans in a domain; it "
                    "will use the BN running statistics")  # fmt: skip
    else:
        logger.info("[train] domain recognition: references measured, refusal threshold %.3g (%s)",
                    calibration.threshold, out / REFERENCE_FILE)  # fmt: skip


def fit_run_anatomy(out: Path, trained: TrainedRun, cfg: ExperimentConfig) -> None:
    """Measure every domain's anatomy statistics from its training label maps (slice cache),
    calibrated on its own predictions of its held-out scans."""
    caches = trained.caches
    structures = {d.name: list(d.structures) for d in trained.info.domains}
    paths = run_routes(out, trained)
    inferer = WholeViewInferer.from_config(cfg.inference)
    label_maps, predictions = {}, {}
    for name in structures:
        cache = caches[name]
        rows = {case: slice(*cache.case_slices[case]) for case in cache.case_slices}
        spacing = {case: cache.inverse[case].slice_spacing for case in cache.case_slices}
        training, held_out = trained.subjects[name]
        label_maps[name] = [(cache.labels[rows[c]], spacing[c]) for c in training]
        with torch.no_grad():
            predictions[name] = [
                (segment_whole_view(inferer, cache.images[rows[c]], paths[name]), spacing[c])
                for c in held_out
            ]
    if fit_anatomy(out, structures, label_maps, predictions):
        logger.info("[train] anatomy statistics of the training labels: %s", out / ANATOMY_FILE)
    else:
        logger.info("[train] anatomy statistics: a domain has no training label map with every "
                    "structure; --domain auto decides by appearance alone")  # fmt: skip


def _decide_postprocessing(
    out: Path, data_dir: Path, progress: bool = True, device: str = AUTO_DEVICE
) -> None:
    """Decide the run's postprocessing on its validation subjects (``postprocessing.json``)."""
    decision = decide_postprocessing(out, data_dir, progress=progress, device=device)
    if decision is not None:
        logger.info("postprocessing decided on the validation subjects:\n%s",
                    decision_table(decision))  # fmt: skip


def _log_summary(out: Path, trained: TrainedRun) -> None:
    for plan in trained.plans:
        index = out / "models" / plan.name / "model.json"
        if index.is_file():
            meta = json.loads(index.read_text(encoding="utf-8")).get("metadata", {})
            dice = meta.get("best_validation_dice")
            text = f"{dice:.3f}" if isinstance(dice, float) else "n/a"
            logger.info("[train] %s: best validation Dice %s", plan.name, text)
    logger.info("[train] run folder: %s", out)
