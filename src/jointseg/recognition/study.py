"""Calibrating domain recognition on scans of known domain, stored in the run folder.

The distances of scans to their own domain give the calibration
(:func:`~jointseg.recognition.calibration.calibration_from_scores`). When a run has no
``domain_calibration.json`` yet and its study folder is still where it was trained,
:func:`calibrate_from_study` measures a few of each domain's validation cases (training cases
when it has none) and writes the file, once.

Reading a scan and preprocessing it as the training slices were is the caller's
(:class:`~jointseg.inference.predictor.Predictor`): ``volume_of(scan)`` gives the slice stack.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from jointseg.data.io import ScanReadError
from jointseg.data.manifest import DatasetError, list_cases
from jointseg.recognition.calibration import (
    CALIBRATION_FACTOR,
    Calibration,
    calibration_from_scores,
)
from jointseg.recognition.decision import Candidate, candidate_distances
from jointseg.recognition.features import subsample_tensor
from jointseg.runs import RunInfo

CASES_PER_DOMAIN = 3

Scan = TypeVar("Scan")


def in_domain_distances(
    candidate: Candidate, volume: np.ndarray, batch_size: int = 16
) -> tuple[float, float]:
    """The (ranking, refusal) distances of a preprocessed scan ``volume`` to ``candidate``."""
    slices = subsample_tensor(volume, candidate.path.context_slices)
    return candidate_distances(candidate, slices, batch_size)


def calibrate_domains(
    candidate: Callable[[str], Candidate],
    volume_of: Callable[[Scan], np.ndarray],
    scans: Mapping[str, Sequence[Scan]],
    factor: float = CALIBRATION_FACTOR,
    batch_size: int = 16,
) -> Calibration:
    """Calibrate on ``scans`` (domain -> scans of it); ``candidate(domain)`` scores them."""
    scores = {
        name: [in_domain_distances(candidate(name), volume_of(s), batch_size) for s in items]
        for name, items in scans.items()
        if items
    }
    return calibration_from_scores(scores, factor, source="scans")


def study_scans(info: RunInfo, per_domain: int = CASES_PER_DOMAIN) -> dict[str, list[Path]]:
    """Up to ``per_domain`` held-out (else training) scans per domain from the run's study."""
    if not info.data_dir or not Path(info.data_dir).is_dir():
        return {}
    scans: dict[str, list[Path]] = {}
    for entry in info.domains:
        wanted = info.validation_cases.get(entry.name) or info.training_cases.get(entry.name)
        if not wanted:
            continue
        try:
            cases = {c.case_id: c.image for c in list_cases(Path(info.data_dir) / entry.folder)}
        except DatasetError:
            continue
        found = [cases[c] for c in wanted if c in cases][:per_domain]
        if found:
            scans[entry.name] = found
    return scans


def calibrate_from_study(
    info: RunInfo,
    run_dir: Path,
    candidate: Callable[[str], Candidate],
    volume_of: Callable[[Path], np.ndarray],
    batch_size: int = 16,
) -> Calibration | None:
    """Calibrate from the run's own study folder when it is reachable and store it (unless the
    run folder is read-only); None when the study is not reachable or its scans unreadable."""
    scans = study_scans(info)
    if not scans:
        return None
    try:
        calibration = calibrate_domains(candidate, volume_of, scans, batch_size=batch_size)
    except (ScanReadError, ValueError):
        return None
    calibration.source = "study"
    try:
        calibration.save(run_dir)
    except OSError:
        pass  # a read-only run folder: use the calibration without storing it
    return calibration
