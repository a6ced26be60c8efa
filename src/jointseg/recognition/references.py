"""Per-domain recognition references: what a domain's training scans look like to it.

A domain's *reference* is measured on its training scans, each described as that domain runs it
(:func:`jointseg.recognition.features.scan_features`), once for the appearance and once for the
content descriptor: the mean ``mu`` of the domain's descriptors, and a spread ``sigma`` per
feature pooled over the training scans of every domain of the run, all run through the same
domain's path (as in a diagonal linear discriminant):

    sigma_j^2 = mean over domains e of var_j(descriptors of e's training scans, as d runs them)

A scan's distance to the reference is the mean squared z-score

    D = mean_j ((f_j - mu_j)^2 / (sigma_j^2 + floor^2)),   floor = 0.1 x median(sigma)

(about 1 for a scan like the training scans). Pooling gives the spread three times the scans with
three domains, and measures it on scans unlike the domain too: with a domain's own 4-8 training
scans alone, a few features of tiny chance spread decided the distance, and scans a little
outside the training range (sharper, a smaller child) went to another domain.

Candidates are ranked by ``D_appearance + CONTENT_WEIGHT x D_content``; a scan is refused when
even the best candidate's *appearance* distance exceeds the calibrated threshold
(:mod:`jointseg.recognition.calibration`): a head reads anything, noise included, as some
mixture of its classes, so content tells domains apart, not scans from nothing.
``RUN/domain_reference.json`` holds the references (:func:`save_references`,
:func:`load_references`); :func:`jointseg.recognition.fitting.fit_recognition` measures them.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jointseg.recognition.features import ScanFeatures
from jointseg.runs import RunFolder
from jointseg.utils.atomic import atomic_write_json

FORMAT_VERSION = 2  # 2: appearance and content, spreads pooled over the domains
CONTENT_WEIGHT = 0.5  # weight of the content distance in the ranking distance
REFERENCE_FLOOR = 0.1  # floor of a reference's spread, x its median


@dataclass(frozen=True)
class ReferenceStats:
    """Mean of a domain's training-scan descriptors and the spread of its features."""

    mean: np.ndarray
    std: np.ndarray
    scans: int

    def distance(self, descriptor: np.ndarray) -> float:
        """Mean squared z-score of ``descriptor`` (see the module doc)."""
        if descriptor.shape != self.mean.shape:
            raise ValueError(
                f"descriptor of {descriptor.size} values for a reference of {self.mean.size}: "
                "the reference was measured with another network"
            )
        floor = REFERENCE_FLOOR * float(np.median(self.std)) + 1e-12
        z2 = (descriptor - self.mean) ** 2 / (self.std**2 + floor**2)
        return float(np.mean(z2))

    @classmethod
    def fit(
        cls, descriptors: Sequence[np.ndarray], others: Sequence[Sequence[np.ndarray]] = ()
    ) -> ReferenceStats:
        """The reference of at least two descriptors; the spread is the root mean of the
        per-feature variances of ``descriptors`` and of every group in ``others`` (the other
        domains' scans as this domain runs them) that has two or more."""
        if len(descriptors) < 2:
            raise ValueError("a domain reference needs the descriptors of at least two scans")
        own = _stack(descriptors)
        groups = [own] + [_stack(g) for g in others if len(g) >= 2]
        variance = np.mean([g.var(axis=0, ddof=1) for g in groups], axis=0)
        return cls(own.mean(axis=0), np.sqrt(variance), len(descriptors))


def _stack(descriptors: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack([np.asarray(d, dtype=np.float64) for d in descriptors])


@dataclass(frozen=True)
class DomainReference:
    """A domain's appearance and content references."""

    appearance: ReferenceStats
    content: ReferenceStats

    def distances(self, features: ScanFeatures) -> tuple[float, float]:
        """(ranking distance, refusal distance) of a scan's features (module doc)."""
        appearance = self.appearance.distance(features.appearance)
        return self.ranking(appearance, features.content), appearance

    def ranking(self, appearance: float, content: np.ndarray) -> float:
        """The ranking distance from the appearance distance and the content descriptor."""
        return appearance + CONTENT_WEIGHT * self.content.distance(content)

    @classmethod
    def fit(
        cls, own: Sequence[ScanFeatures], others: Sequence[Sequence[ScanFeatures]] = ()
    ) -> DomainReference:
        """Both references from the domain's training scans, spreads pooled with ``others``."""
        return cls(
            ReferenceStats.fit(
                [f.appearance for f in own], [[f.appearance for f in g] for g in others]
            ),
            ReferenceStats.fit([f.content for f in own], [[f.content for f in g] for g in others]),
        )


def save_references(run_dir: str | Path, references: dict[str, DomainReference]) -> Path:
    """Write the references into the run folder (atomically)."""
    path = RunFolder(Path(run_dir)).domain_reference_file

    def stats(ref: ReferenceStats) -> dict:
        return {"mean": ref.mean.tolist(), "std": ref.std.tolist()}

    payload = {
        "format_version": FORMAT_VERSION,
        "domains": {
            name: {
                "scans": ref.appearance.scans,
                "appearance": stats(ref.appearance),
                "content": stats(ref.content),
            }
            for name, ref in references.items()
        },
    }
    atomic_write_json(path, payload)
    return path


def load_references(run_dir: str | Path) -> dict[str, DomainReference]:
    """The run's references (empty when it has none, or only an older format's)."""
    path = RunFolder(Path(run_dir)).domain_reference_file
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format_version") != FORMAT_VERSION:
            warnings.warn(
                f"{path}: domain references of format {data.get('format_version')} (this version "
                f"reads {FORMAT_VERSION}) are ignored; recognition uses the BN running statistics. "
                "Retrain the run to measure them again.",
                stacklevel=2,
            )
            return {}

        def stats(entry: dict, scans: int) -> ReferenceStats:
            return ReferenceStats(
                np.asarray(entry["mean"], dtype=np.float64),
                np.asarray(entry["std"], dtype=np.float64),
                scans,
            )

        return {
            name: DomainReference(
                stats(entry["appearance"], int(entry["scans"])),
                stats(entry["content"], int(entry["scans"])),
            )
            for name, entry in data["domains"].items()
        }
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path}: unreadable domain reference ({error}); delete it to recognize domains "
            "from the BN running statistics instead"
        ) from error
