"""Refusal threshold and softmax temperature of domain recognition (``domain_calibration.json``).

Both come from the distances of scans of known domain to their own domain
(:func:`calibration_from_scores`): the threshold is :data:`CALIBRATION_FACTOR` x the largest
refusal (appearance) distance, the temperature the median ranking distance. Training measures
them on held-out scans (:mod:`jointseg.recognition.fitting`), as do ``jointseg adapt`` and
packing; ``jointseg calibrate`` measures them for a run trained without them
(:mod:`jointseg.recognition.study`). Reading a run without the file gives the documented
defaults; reading never writes it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jointseg.runs import RunFolder
from jointseg.utils.atomic import atomic_write_json

# Without a calibration file (and without references: BN running-statistics distances, measured on
# small trained networks: unseen scans of a training domain 0.02-0.05, scans of another domain
# 0.2-1, pure noise about 0.5) the threshold sits at about four times the in-domain range.
DEFAULT_THRESHOLD = 0.15
DEFAULT_TEMPERATURE = 0.02
CALIBRATION_FACTOR = 4.0  # calibrated threshold = factor x the largest in-domain distance
MIN_THRESHOLD = 0.05


@dataclass
class Calibration:
    """Refusal threshold and softmax temperature for the distances (plus what they came from)."""

    threshold: float = DEFAULT_THRESHOLD
    temperature: float = DEFAULT_TEMPERATURE
    in_domain: dict[str, list[float]] = field(default_factory=dict)
    source: str = "default"  # default | file | scans | study | reference

    @classmethod
    def load(cls, run_dir: str | Path) -> Calibration:
        """The run's calibration, or the documented defaults when it has none."""
        path = RunFolder(Path(run_dir)).calibration_file
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            threshold=float(data["threshold"]),
            temperature=float(data.get("temperature", DEFAULT_TEMPERATURE)),
            in_domain={k: [float(v) for v in vs] for k, vs in data.get("in_domain", {}).items()},
            source="file",
        )

    @classmethod
    def from_distances(
        cls,
        in_domain: dict[str, list[float]],
        factor: float = CALIBRATION_FACTOR,
        ranking: dict[str, list[float]] | None = None,
    ) -> Calibration:
        """Threshold = ``factor`` x the largest in-domain refusal distance (at least
        :data:`MIN_THRESHOLD`); temperature = the median in-domain ranking distance (``ranking``,
        else ``in_domain``; at least a tenth of the default)."""
        values = [v for vs in in_domain.values() for v in vs]
        if not values:
            raise ValueError("calibration needs at least one in-domain distance")
        ranked = [v for vs in (ranking or in_domain).values() for v in vs]
        temperature = max(float(np.median(ranked)), DEFAULT_TEMPERATURE / 10)
        threshold = max(factor * max(values), MIN_THRESHOLD)
        return cls(threshold=threshold, temperature=temperature, in_domain=in_domain)

    def save(self, run_dir: str | Path) -> Path:
        """Write ``domain_calibration.json`` into ``run_dir`` (atomically); returns its path."""
        path = RunFolder(Path(run_dir)).calibration_file
        atomic_write_json(
            path,
            {
                "threshold": self.threshold,
                "temperature": self.temperature,
                "in_domain": self.in_domain,
            },
        )
        return path


def calibration_from_scores(
    scores: Mapping[str, Sequence[tuple[float, float]]],
    factor: float = CALIBRATION_FACTOR,
    source: str = "default",
) -> Calibration:
    """The calibration of in-domain ``scores`` (domain -> (ranking, refusal) distances of scans
    of that domain): the one place a calibration is computed."""
    calibration = Calibration.from_distances(
        {name: [a for _, a in pairs] for name, pairs in scores.items()},
        factor,
        {name: [r for r, _ in pairs] for name, pairs in scores.items()},
    )
    calibration.source = source
    return calibration
