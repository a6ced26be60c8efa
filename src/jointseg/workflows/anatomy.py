"""Anatomy statistics for a run trained without them, from its study folder.

``jointseg train`` measures them at the end of training (:mod:`jointseg.workflows.train`).
:func:`fit_run_anatomy_from_study` does the same afterwards for a run that lacks
``anatomy_reference.json``: each domain's training label maps, preprocessed as training
preprocessed them, and the run's own predictions of its validation scans, which calibrate the
statistics and say whether the domain is reliable (:mod:`jointseg.recognition.anatomy`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

from jointseg.data.io import read_image
from jointseg.data.manifest import list_cases
from jointseg.data.preprocess import preprocess_case
from jointseg.inference.predictor import Predictor
from jointseg.recognition.anatomy import AnatomyReference
from jointseg.recognition.fitting import fit_anatomy
from jointseg.runs import RunError, RunFolder

logger = logging.getLogger(__name__)


def fit_run_anatomy_from_study(
    run_dir: str | Path, study: str | Path | None = None, progress: bool = False
) -> dict[str, AnatomyReference]:
    """Measure and store ``run_dir``'s anatomy statistics from its study (``study``, else the
    run's ``data_dir``); returns them ({} and nothing written when a domain has no training
    label map with every structure). Overwrites an existing file."""
    run_dir = Path(run_dir)
    predictor = Predictor.from_run(run_dir)
    info = predictor.info
    study = Path(study or info.data_dir or "")
    if not info.training_cases:
        raise RunError(f"{run_dir}: the run lists no training cases to measure anatomy on")
    label_maps, predictions = {}, {}
    for domain in tqdm(info.domains, desc="anatomy", unit="domain", disable=not progress):
        folder = study / domain.folder
        cases = {c.case_id: c for c in list_cases(folder, "train")}
        missing = [c for c in info.training_cases[domain.name] if c not in cases]
        if missing:
            raise RunError(f"{folder}: the run's training cases {missing[:3]} are not there")
        lut = domain.labels().local_lookup()
        label_maps[domain.name] = []
        for case_id in info.training_cases[domain.name]:
            image, label = read_image(cases[case_id].image), read_image(cases[case_id].label)
            done = preprocess_case(image, label, predictor.config.preprocessing)
            label_maps[domain.name].append((lut[done.label], done.inverse.slice_spacing))
        predictions[domain.name] = []
        for case_id in info.validation_cases.get(domain.name, []):
            done = predictor.preprocess(read_image(cases[case_id].image))
            labels = predictor.segment_slices(done.image, predictor.routes[domain.name])
            predictions[domain.name].append((labels, done.inverse.slice_spacing))
    structures = {d.name: list(d.structures) for d in info.domains}
    references = fit_anatomy(run_dir, structures, label_maps, predictions)
    logger.info("%s: anatomy statistics %s (reliable: %s)", run_dir,
                RunFolder(run_dir).anatomy_reference_file,
                [n for n, r in references.items() if r.reliable] or "none")  # fmt: skip
    return references
