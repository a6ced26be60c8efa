"""Calibrating domain recognition on scans of known domain.

The distances of scans to their own domain give the calibration
(:func:`~jointseg.recognition.calibration.calibration_from_scores`): :func:`calibrate_domains`
measures them; :func:`study_scans` picks a few of each domain's validation cases (training cases
when it has none) from a run's study, for a run trained without a calibration
(``jointseg calibrate``, :mod:`jointseg.workflows.calibration`).

Reading a scan and preprocessing it as the training slices were is the caller's
(:class:`~jointseg.inference.predictor.Predictor`): ``volume_of(scan)`` gives the slice stack.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

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


def study_scans(
    info: RunInfo, study: str | Path | None = None, per_domain: int = CASES_PER_DOMAIN
) -> dict[str, list[Path]]:
    """Up to ``per_domain`` held-out (else training) scans per domain of the run from its study
    folder (``study``, else the run's ``data_dir``); {} when the folder is not there."""
    study = study or info.data_dir
    if not study or not Path(study).is_dir():
        return {}
    scans: dict[str, list[Path]] = {}
    for entry in info.domains:
        wanted = info.validation_cases.get(entry.name) or info.training_cases.get(entry.name)
        if not wanted:
            continue
        try:
            cases = {c.case_id: c.image for c in list_cases(Path(study) / entry.folder)}
        except DatasetError:
            continue
        found = [cases[c] for c in wanted if c in cases][:per_domain]
        if found:
            scans[entry.name] = found
    return scans
