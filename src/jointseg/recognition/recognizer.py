"""A run's domain recognizer: its candidates, its calibration, and the decision on a scan.

:class:`DomainRecognizer` holds what recognition needs of a trained run (each domain's
:class:`~jointseg.models.network.Route`, the measured references, the calibration) and decides
on a preprocessed slice stack: :func:`~jointseg.recognition.decision.recognize_domain`, then
:func:`~jointseg.recognition.decision.break_ties` for domains sharing one union head, then the
refusal. It reads the run's references and calibration (:meth:`DomainRecognizer.load_run`;
reading writes nothing: a run without a calibration decides with the default one, and says so
once, naming ``jointseg calibrate``) and calibrates on scans of known domain when asked
(:meth:`DomainRecognizer.calibrate`). Reading and preprocessing a scan stay the caller's:
``volume_of(scan)`` gives the slice stack.

With the run's anatomy statistics (``anatomy_reference.json``) and a ``segment`` function
(whole-view inference of a slice stack through a route, the caller's), the anatomy rule decides
(:func:`~jointseg.recognition.decision.decide_by_anatomy`): the reliable candidates first, in
appearance order, segmented until one is accepted (usually the first, one inference), then the
others by appearance. Runs without the statistics decide by appearance alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from jointseg.models.network import Route
from jointseg.recognition.anatomy import (
    AnatomyReference,
    AnatomyScore,
    load_anatomy,
    measure_anatomy,
)
from jointseg.recognition.calibration import CALIBRATION_FACTOR, Calibration
from jointseg.recognition.decision import (
    Candidate,
    DomainDecision,
    DomainRecognitionError,
    break_ties,
    decide_by_anatomy,
    recognize_domain,
    refusal_message,
)
from jointseg.recognition.references import DomainReference, load_references
from jointseg.recognition.study import calibrate_domains
from jointseg.runs import RunFolder

Scan = TypeVar("Scan")
Segment = Callable[[np.ndarray, Route], np.ndarray]  # (slice stack, route) -> local labels

logger = logging.getLogger(__name__)


@dataclass
class DomainRecognizer:
    """Recognition over ``routes`` (domain -> route); ``num_classes``: the union's classes (the
    tie-break reads a union head)."""

    routes: Mapping[str, Route]
    num_classes: int
    device: torch.device
    batch_size: int = 16
    references: dict[str, DomainReference] = field(default_factory=dict)
    calibration: Calibration = field(default_factory=Calibration)
    anatomy: dict[str, AnatomyReference] = field(default_factory=dict)
    segment: Segment | None = None
    run_dir: Path | None = None  # the run whose files were read (:meth:`load_run`)
    _warned: bool = field(default=False, init=False, repr=False)

    def load_run(self, run_dir: Path) -> None:
        """Take the run's references, calibration and anatomy statistics (reading only).
        References of an older format are ignored, and with them the calibration measured in
        their units: recognition falls back to the BN statistics and the default calibration.
        Without anatomy statistics (runs trained before them) it decides by appearance alone."""
        self.run_dir = Path(run_dir)
        self.references = load_references(run_dir)
        stale = RunFolder(self.run_dir).domain_reference_file.is_file() and not self.references
        self.calibration = Calibration() if stale else Calibration.load(run_dir)
        self.anatomy = load_anatomy(run_dir)
        if not self.uses_anatomy:
            logger.info(
                "%s: no anatomy statistics for every domain (%s; runs trained before them): "
                "--domain auto decides by appearance alone",
                run_dir, RunFolder.ANATOMY_REFERENCE,
            )  # fmt: skip

    @property
    def uses_anatomy(self) -> bool:
        """Whether the anatomy rule decides: statistics for every domain."""
        return bool(self.routes) and all(name in self.anatomy for name in self.routes)

    @property
    def calibrated(self) -> bool:
        """Whether the calibration was measured (stored, on scans or on the study)."""
        return self.calibration.source != "default"

    def candidates(self) -> list[Candidate]:
        """Every domain as a recognition candidate (see :meth:`candidate`)."""
        return [self.candidate(name) for name in self.routes]

    def candidate(self, domain: str) -> Candidate:
        """``domain`` with its route; with its measured reference when the run has one for
        every domain (distances of both kinds are not comparable)."""
        complete = all(name in self.references for name in self.routes)
        reference = self.references[domain] if complete else None
        return Candidate(domain, self.routes[domain], reference)

    def recognize(
        self,
        volume: np.ndarray,
        refuse: bool = True,
        spacing: Sequence[float] | None = None,
    ) -> DomainDecision:
        """The decision on a preprocessed slice stack [S, H, W]; raises
        :class:`DomainRecognitionError` when no domain fits (its full evidence logged at DEBUG),
        unless ``refuse`` is False (then ``decision.domain`` is None). ``spacing``: the stack's
        voxel size (mm, along S, H, W), which the anatomy rule needs (with :attr:`segment` and
        the run's statistics)."""
        self._warn_uncalibrated()
        anatomy = self.uses_anatomy and self.segment is not None and spacing is not None
        decision = recognize_domain(
            self.candidates(), volume, self.calibration, self.batch_size, complete=anatomy
        )
        if anatomy:
            reliable = [name for name, reference in self.anatomy.items() if reference.reliable]
            decision = decide_by_anatomy(
                decision, lambda name: self.anatomy_score(volume, spacing, name), reliable
            )
        else:
            decision = break_ties(decision, self.routes, volume, self.num_classes, self.device)
        if decision.domain is None and refuse:
            logger.debug("domain recognition refused the scan: %s", decision.describe())
            raise DomainRecognitionError(refusal_message(decision), decision)
        return decision

    def _warn_uncalibrated(self) -> None:
        """Once: a run without a calibration refuses by the default threshold."""
        if self.calibrated or self._warned or self.run_dir is None:
            return
        self._warned = True
        logger.warning(
            "%s: the run has no recognition calibration (%s); --domain auto uses the default "
            "refusal threshold %.3g and temperature %.3g. Measure it with `jointseg calibrate "
            "%s --data STUDY`",
            self.run_dir, RunFolder.CALIBRATION, self.calibration.threshold,
            self.calibration.temperature, self.run_dir,
        )  # fmt: skip

    def anatomy_score(
        self, volume: np.ndarray, spacing: Sequence[float] | None, domain: str
    ) -> AnatomyScore:
        """``domain``'s head segments the stack; how plausible that is as its anatomy."""
        if self.segment is None or spacing is None:
            raise ValueError("the anatomy check needs a segment function and the voxel size")
        reference = self.anatomy[domain]
        labels = self.segment(volume, self.routes[domain])
        return reference.score(measure_anatomy(labels, spacing, len(reference.structures)))

    def anatomy_scores(
        self, volume: np.ndarray, spacing: Sequence[float] | None
    ) -> dict[str, AnatomyScore]:
        """Every domain's anatomy check (:meth:`anatomy_score`)."""
        return {name: self.anatomy_score(volume, spacing, name) for name in self.routes}

    def calibrate(
        self,
        scans: Mapping[str, Sequence[Scan]],
        volume_of: Callable[[Scan], np.ndarray],
        factor: float = CALIBRATION_FACTOR,
    ) -> Calibration:
        """Calibrate on scans of known domain (domain -> scans) and use it."""
        self.calibration = calibrate_domains(
            self.candidate, volume_of, scans, factor, self.batch_size
        )
        return self.calibration
