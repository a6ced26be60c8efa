"""``jointseg train`` and ``jointseg ablate``: a config and a study folder to finished run folders.

A run is trained (:func:`jointseg.training.runner.train_networks`), then, by rank 0, its domain
recognition is measured (:func:`jointseg.recognition.fitting.fit_recognition`; on the BN running
statistics, :func:`jointseg.recognition.fitting.fit_calibration`, when a domain has too few
training scans for references: every trained run has its calibration; and the anatomy
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
import numpy as np
import torch

from jointseg.config import ExperimentConfig, load_config
from jointseg.data.cache import SliceCache
from jointseg.evaluation.postprocessing import decide_postprocessing, decision_table
from jointseg.inference.packaged import resolve_run
from jointseg.models.checkpoint import INDEX_FILE
from jointseg.models.inferer import WholeViewInferer
from jointseg.models.network import Route
from jointseg.models.run_networks import domain_routes, load_run_networks
from jointseg.recognition.fitting import (
    fit_anatomy,
    fit_calibration,
    fit_recognition,
    segment_whole_view,
)
from jointseg.runs import RunFolder, RunInfo
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
        done = RunFolder(run_dir).is_run()
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
        run = RunFolder(out)
        routes = domain_routes(trained.info, load_run_networks(run, trained.info))
        fit_run_recognition(run, trained, routes, progress)
        fit_run_anatomy(run, trained, routes, cfg)
        _decide_postprocessing(out, data_dir, progress, device)
        _log_summary(run, trained)
    return trained.info


def fit_run_recognition(
    run: RunFolder, trained: TrainedRun, routes: dict[str, Route], progress: bool = True
) -> None:
    """Measure the run's domain references and calibration from its training slice cache (the
    calibration alone, on the BN running statistics, when a domain has too few scans)."""
    volumes = {  # read-only memory-mapped views: only the recognition subsample is read
        name: (
            _case_volumes(trained.caches[name], train),
            _case_volumes(trained.caches[name], held),
        )
        for name, (train, held) in trained.subjects.items()
    }
    calibration = fit_recognition(run.path, routes, volumes, progress=progress)
    if calibration is not None:
        logger.info("[train] domain recognition: references measured, refusal threshold %.3g (%s)",
                    calibration.threshold, run.domain_reference_file)  # fmt: skip
        return
    held_out = {name: held or train for name, (train, held) in volumes.items()}
    calibration = fit_calibration(run.path, routes, held_out)
    logger.info("[train] domain recognition: fewer than two training scans in a domain; it uses "
                "the BN running statistics, refusal threshold %.3g (%s)",
                calibration.threshold, run.calibration_file)  # fmt: skip


def _case_volumes(cache: SliceCache, cases: list[str]) -> list[np.ndarray]:
    return [cache.images[slice(*cache.case_slices[case])] for case in cases]


def fit_run_anatomy(
    run: RunFolder, trained: TrainedRun, routes: dict[str, Route], cfg: ExperimentConfig
) -> None:
    """Measure every domain's anatomy statistics from its training label maps (slice cache),
    calibrated on its own predictions of its held-out scans."""
    caches = trained.caches
    structures = {d.name: list(d.structures) for d in trained.info.domains}
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
                (segment_whole_view(inferer, cache.images[rows[c]], routes[name]), spacing[c])
                for c in held_out
            ]
    if fit_anatomy(run.path, structures, label_maps, predictions):
        logger.info("[train] anatomy statistics of the training labels: %s",
                    run.anatomy_reference_file)  # fmt: skip
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


def _log_summary(run: RunFolder, trained: TrainedRun) -> None:
    for plan in trained.plans:
        index = run.model_dir(plan.name) / INDEX_FILE
        if index.is_file():
            meta = json.loads(index.read_text(encoding="utf-8")).get("metadata", {})
            dice = meta.get("best_validation_dice")
            text = f"{dice:.3f}" if isinstance(dice, float) else "n/a"
            logger.info("[train] %s: best validation Dice %s", plan.name, text)
    logger.info("[train] run folder: %s", run.path)
