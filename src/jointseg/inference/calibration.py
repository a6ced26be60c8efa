"""Calibrating domain recognition on scans of known domain, stored in the run folder.

The refusal threshold is :data:`~jointseg.models.domain_reference.CALIBRATION_FACTOR` times the
largest refusal distance of scans to their own domain, and the softmax temperature the median of
their ranking distances (:meth:`Calibration.from_distances`). When a run has no
``domain_calibration.json`` yet and its study folder is still where it was trained,
:func:`calibrate_from_study` measures a few of each domain's validation cases (training cases
when it has none) and writes the file, once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import SimpleITK as sitk

from jointseg.data.io import ScanReadError
from jointseg.data.manifest import DatasetError, list_cases
from jointseg.inference.domain import candidate_distances
from jointseg.inference.slices import load_scan
from jointseg.models.domain_reference import CALIBRATION_FACTOR, Calibration
from jointseg.models.scan_features import subsample_tensor

if TYPE_CHECKING:
    from jointseg.inference.predictor import Predictor

CASES_PER_DOMAIN = 3


def in_domain_distances(
    predictor: Predictor, domain: str, scan: str | Path | sitk.Image
) -> tuple[float, float]:
    """The (ranking, refusal) distances of ``scan`` to ``domain``."""
    image = load_scan(scan)
    candidate = predictor.candidate(domain)
    volume = predictor.recognition_volume(image)
    slices = subsample_tensor(volume, candidate.path.context_slices)
    return candidate_distances(candidate, slices, predictor.batch_size)


def calibrate_domains(
    predictor: Predictor,
    scans: dict[str, list[str | Path | sitk.Image]],
    factor: float = CALIBRATION_FACTOR,
    save: bool = True,
) -> Calibration:
    """Calibrate on ``scans`` (domain -> scans of it); save into the run and use it."""
    scores = {
        name: [in_domain_distances(predictor, name, scan) for scan in items]
        for name, items in scans.items()
        if items
    }
    calibration = Calibration.from_distances(
        {name: [a for _, a in pairs] for name, pairs in scores.items()},
        factor,
        {name: [r for r, _ in pairs] for name, pairs in scores.items()},
    )
    calibration.source = "scans"
    if save:
        calibration.save(predictor.run_dir)
    predictor.calibration = calibration
    return calibration


def study_scans(predictor: Predictor, per_domain: int = CASES_PER_DOMAIN) -> dict[str, list[Path]]:
    """Up to ``per_domain`` held-out (else training) scans per domain from the run's study."""
    info = predictor.info
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


def calibrate_from_study(predictor: Predictor) -> Calibration | None:
    """Calibrate from the run's own study folder when it is reachable; None otherwise."""
    scans = study_scans(predictor)
    if not scans:
        return None
    try:
        calibration = calibrate_domains(predictor, scans, save=False)
    except (ScanReadError, ValueError):
        return None
    calibration.source = "study"
    try:
        calibration.save(predictor.run_dir)
    except OSError:
        pass  # a read-only run folder: use the calibration without storing it
    return calibration
