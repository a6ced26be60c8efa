"""``jointseg calibrate``: the recognition calibration of a run that has none.

``jointseg train``, ``jointseg adapt`` and packing write ``domain_calibration.json`` (the refusal
threshold and temperature of ``--domain auto``); loading a run never writes it. A run without
the file (trained by an earlier version, or the file removed) recognizes domains with the default
calibration, and says so, until :func:`calibrate_run` measures it on up to three of each domain's
validation scans (training scans when it has none) in its study folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

from jointseg.inference.packaged import output_folder, resolve_run
from jointseg.inference.predictor import Predictor
from jointseg.recognition.calibration import Calibration
from jointseg.recognition.study import study_scans
from jointseg.runs import RunError, RunFolder, RunInfo

logger = logging.getLogger(__name__)


def calibrate_on_study(
    predictor: Predictor, info: RunInfo, out: Path, study: str | Path | None = None
) -> Calibration:
    """Calibrate ``predictor``'s recognition on the scans ``info`` lists in ``study`` (default:
    ``info.data_dir``) and store it in ``out``; :class:`~jointseg.runs.RunError` when none of
    them is there."""
    scans = study_scans(info, study)
    if not scans:
        where = study or info.data_dir or "none recorded"
        raise RunError(
            f"{predictor.run_dir}: none of the run's validation or training scans is in its "
            f"study ({where}); give the study folder the run was trained on with --data"
        )
    calibration = predictor.calibrate_domains(scans, out=out)
    logger.info(
        "%s: recognition calibrated on %d scans: refusal threshold %.3g, temperature %.3g",
        RunFolder(out).calibration_file, sum(len(s) for s in scans.values()),
        calibration.threshold, calibration.temperature,
    )  # fmt: skip
    return calibration


def calibrate_run(
    run: str | Path,
    study: str | Path | None = None,
    out: str | Path | None = None,
    device: str = "cpu",
) -> Path:
    """Measure ``run``'s recognition calibration on its study (``study``, else the run's
    ``data_dir``) and write ``domain_calibration.json`` into ``out`` (default: the run folder;
    required for the word ``pretrained``); returns the file's path. Overwrites an existing
    file."""
    target = output_folder(run, out, "", "recognition calibration")
    predictor = Predictor.from_run(resolve_run(run), device)
    calibrate_on_study(predictor, predictor.info, target, study)
    return RunFolder(target).calibration_file
