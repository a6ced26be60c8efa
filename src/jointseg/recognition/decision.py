"""Automatic domain (joint) recognition: which training domain a scan belongs to, or none.

Every candidate domain scores a slice subsample of the scan (preprocessed as the training
slices were; :mod:`jointseg.recognition.features`): against the domain's measured references
when the run has them (:mod:`jointseg.recognition.references`, measured after training),
a ranking distance (appearance and content) and a refusal distance (appearance); without them,
the BN running statistics of the domain's early layers give both. The candidate with the
smallest ranking distance wins, ``confidence = softmax(-distance / temperature)``; the scan is
refused when that candidate's refusal distance exceeds the calibrated ``threshold``.

Only the appearance needs no more than the encoder's first layers; the content needs the whole
network. Candidates are therefore taken in order of appearance distance, and one whose
appearance distance alone is already no smaller than the best ranking distance found cannot win
(the content term is never negative): its head is not run, and its ranking distance is reported
as that lower bound (``DomainScore.complete`` False). The decision is the same as with every
candidate complete; usually one or two heads run instead of all.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from jointseg.models.network import Route, head_logits
from jointseg.recognition.anatomy import AnatomyScore
from jointseg.recognition.calibration import Calibration
from jointseg.recognition.features import (
    appearance_descriptor,
    bn_distance,
    content_descriptor,
    scan_features,
    shared_context_slices,
    subsample_tensor,
)
from jointseg.recognition.references import DomainReference

REASON_WIDTH = 60  # the most characters of the anatomy reason a refusal message shows


class DomainRecognitionError(ValueError):
    """No training domain fits the scan: a one-line message (:func:`refusal_message`); the full
    evidence in ``decision`` (:meth:`DomainDecision.to_dict`, :meth:`DomainDecision.describe`)."""

    def __init__(self, message: str, decision: DomainDecision) -> None:
        super().__init__(message)
        self.decision = decision

    def __reduce__(self) -> tuple:
        return type(self), (str(self), self.decision)


@dataclass(frozen=True)
class Candidate:
    """A domain to test: how the network runs it and, when the run has measured them, its
    references."""

    name: str
    path: Route
    reference: DomainReference | None = None


@dataclass(frozen=True)
class DomainScore:
    """A candidate's ranking distance (a lower bound when not ``complete``), refusal distance
    and softmax confidence."""

    name: str
    distance: float
    confidence: float
    refusal: float
    complete: bool = True


@dataclass(frozen=True)
class DomainDecision:
    """The recognized domain (None when refused) and every candidate's score, best first;
    ``anatomy``: each candidate's anatomy score when the anatomy check decided."""

    domain: str | None
    confidence: float
    scores: list[DomainScore]
    threshold: float
    anatomy: dict[str, AnatomyScore] = field(default_factory=dict)

    def describe(self) -> str:
        parts = ", ".join(
            f"{s.name}: distance {'' if s.complete else '>= '}{s.distance:.3g}"
            + (f" (appearance {s.refusal:.3g})" if s.refusal != s.distance else "")
            + (f", {self.anatomy[s.name].describe()}" if s.name in self.anatomy else "")
            + f", confidence {s.confidence:.2f}"
            for s in self.scores
        )
        if self.anatomy:
            return parts
        return f"{parts} (refusal threshold {self.threshold:.3g})"

    def to_dict(self) -> dict:
        """The decision as JSON-able data: the domain (None: refused), what decided, the
        refusal threshold and every candidate's scores, best first (non-finite numbers: None)."""
        return {
            "domain": self.domain,
            "confidence": _number(self.confidence, 4),
            "decided_by": "anatomy" if self.anatomy else "appearance",
            "refusal_threshold": _number(self.threshold, 5),
            "candidates": {s.name: self.candidate_dict(s) for s in self.scores},
        }

    def candidate_dict(self, score: DomainScore) -> dict:
        """One candidate's scores in :meth:`to_dict`, with its anatomy check when it ran."""
        entry = {
            "distance": _number(score.distance, 5),
            "refusal_distance": _number(score.refusal, 5),
            "distance_is_lower_bound": not score.complete,
            "confidence": _number(score.confidence, 4),
        }
        check = self.anatomy.get(score.name)
        if check is not None:
            entry |= {
                "anatomy_distance": _number(check.distance, 4),
                "anatomy_plausible": check.plausible,
                "anatomy_problems": list(check.reasons),
            }
        return entry


def _number(value: float, digits: int) -> float | None:
    """``value`` rounded for JSON; None when not finite (JSON has no infinity)."""
    return round(float(value), digits) if math.isfinite(value) else None


def candidate_distances(
    candidate: Candidate, slices: Tensor, batch_size: int = 16
) -> tuple[float, float]:
    """(ranking, refusal) distances to the candidate's references, or twice the distance to
    its BN running statistics when it has none."""
    if candidate.reference is not None:
        return candidate.reference.distances(scan_features(candidate.path, slices, batch_size))
    distance = bn_distance(candidate.path.net, slices, candidate.path.index, batch_size)
    return distance, distance


def decide(
    distances: dict[str, float],
    calibration: Calibration | None = None,
    refusal: dict[str, float] | None = None,
    bounds: Collection[str] = (),
) -> DomainDecision:
    """Turn candidate distances into a decision: the candidate with the smallest ranking
    distance among those whose refusal distance (``refusal``, else the ranking distance) is
    within the threshold wins; the scan is refused (``domain`` None) when none is. A candidate
    ranked first but out of the threshold does not hide one within it. ``bounds``: candidates
    whose distance is a lower bound."""
    calibration = calibration or Calibration()
    refusal = refusal or distances
    names = list(distances)
    values = np.array([distances[n] for n in names], float)
    logits = -values / calibration.temperature
    weights = np.exp(logits - logits.max())
    confidence = weights / weights.sum()
    order = np.argsort(values, kind="stable")
    scores = [
        DomainScore(
            names[i],
            float(values[i]),
            float(confidence[i]),
            float(refusal[names[i]]),
            names[i] not in bounds,
        )
        for i in order
    ]
    accepted = [s for s in scores if s.refusal <= calibration.threshold]
    if not accepted:
        return DomainDecision(None, scores[0].confidence, scores, calibration.threshold)
    return DomainDecision(accepted[0].name, accepted[0].confidence, scores, calibration.threshold)


def recognize_domain(
    candidates: Sequence[Candidate],
    volume: np.ndarray,
    calibration: Calibration | None = None,
    batch_size: int = 16,
    complete: bool = False,
) -> DomainDecision:
    """Score every candidate on a slice subsample of ``volume`` [S, H, W] (preprocessed);
    ``complete``: run every candidate's head (no lower bounds), as the anatomy rule ranks
    candidates other than the appearance winner."""
    if not candidates:
        raise ValueError("no candidate domain to recognize")
    if len({c.reference is None for c in candidates}) > 1:
        raise ValueError("either every candidate has a reference or none has")
    slices = subsample_tensor(volume, shared_context_slices(c.path for c in candidates))
    if candidates[0].reference is None:
        scores = {c.name: candidate_distances(c, slices, batch_size) for c in candidates}
        return decide({name: r for name, (r, _) in scores.items()}, calibration)
    references = {c.name: c.reference for c in candidates if c.reference is not None}
    appearance = {
        c.name: references[c.name].appearance.distance(
            appearance_descriptor(c.path, slices, batch_size)
        )
        for c in candidates
    }
    threshold = (calibration or Calibration()).threshold
    ranking: dict[str, float] = {}
    bounds = []
    for c in sorted(candidates, key=lambda c: appearance[c.name]):
        rivals = ranking.values()  # a candidate within the threshold competes with those only
        if appearance[c.name] <= threshold:
            rivals = [ranking[n] for n in ranking if appearance[n] <= threshold]
        if not complete and appearance[c.name] >= min(rivals, default=np.inf):
            ranking[c.name] = appearance[c.name]  # cannot win: a lower bound is enough
            bounds.append(c.name)
        else:
            content = content_descriptor(c.path, slices, batch_size)
            ranking[c.name] = references[c.name].ranking(appearance[c.name], content)
    return decide(ranking, calibration, appearance, bounds)


def decide_by_anatomy(
    appearance: DomainDecision,
    anatomy: Callable[[str], AnatomyScore],
    reliable: Collection[str],
) -> DomainDecision:
    """The anatomy rule (``appearance``: every candidate's ranking distance complete). The first
    domain accepted wins, the ``reliable`` ones first, each group in the appearance ranking
    order:

    - a ``reliable`` domain (its own held-out predictions pass the anatomy check) when its
      predicted anatomy (``anatomy(name)``, called only when needed) is plausible, within the
      appearance threshold or not;
    - then any other domain as by appearance alone (refusal distance within the threshold): its
      check would refuse its own scans too. A plausible anatomy is stronger evidence than
      appearance alone, so such a domain never wins over a reliable one whose anatomy fits.

    Ties (domains sharing one model and BN without references) go to the smaller anatomy
    distance; none accepted: refused. ``confidence`` is the appearance softmax renormalized over
    the domains the check did not reject; ``anatomy`` of the decision: the checks that ran."""
    checked: dict[str, AnatomyScore] = {}

    def accepted(score: DomainScore) -> bool:
        if score.name not in reliable:
            return score.refusal <= appearance.threshold
        if score.name not in checked:
            checked[score.name] = anatomy(score.name)
        return checked[score.name].plausible

    order = [s for s in appearance.scores if s.name in reliable]
    order += [s for s in appearance.scores if s.name not in reliable]
    best = next((s for s in order if accepted(s)), None)
    if best is not None:
        tied = [
            s
            for s in appearance.scores
            if math.isclose(s.distance, best.distance, rel_tol=1e-9) and accepted(s)
        ]
        if len(tied) > 1:
            for s in tied:
                checked.setdefault(s.name, anatomy(s.name))
            best = min(tied, key=lambda s: checked[s.name].distance)
    rejected = {name for name, score in checked.items() if name in reliable and not score.plausible}
    kept = [s for s in appearance.scores if s.name not in rejected]
    decision = replace(appearance, anatomy=dict(checked))
    if best is None:
        return replace(decision, domain=None, confidence=0.0)
    total = sum(s.confidence for s in kept)
    share = best.confidence / total if total > 0 else 1.0 / len(kept)
    return replace(decision, domain=best.name, confidence=share)


def refusal_message(decision: DomainDecision) -> str:
    """One short line on a refused scan: the nearest candidate (:func:`nearest_candidate`), why it
    was not accepted, and how to segment the scan anyway. The full evidence is the decision's
    (:meth:`DomainDecision.to_dict`)."""
    nearest = nearest_candidate(decision)
    check = decision.anatomy.get(nearest.name)
    if check is not None and not check.plausible and check.reasons:
        reason = textwrap.shorten(check.reasons[0], REASON_WIDTH, placeholder=" ...")
        why = f"predicted anatomy implausible: {reason}"
    else:
        why = f"appearance distance {nearest.refusal:.3g} > threshold {decision.threshold:.3g}"
    return (
        f"refused: the scan fits none of this run's joints (nearest: {nearest.name}, {why}); "
        "pass --domain NAME to segment it anyway"
    )


def nearest_candidate(decision: DomainDecision) -> DomainScore:
    """The candidate a refusal names: the first in the ranking when the anatomy check decided
    (the first the rule tried), else the one of smallest refusal distance."""
    if decision.anatomy:
        return decision.scores[0]
    return min(decision.scores, key=lambda s: s.refusal)


def break_ties(
    decision: DomainDecision,
    routes: Mapping[str, Route],
    volume: np.ndarray,
    num_classes: int,
    device: torch.device,
) -> DomainDecision:
    """Without references, domains sharing one model and BN (shared/union schemes) score the
    same; among them pick the one whose structures cover most of the union head's predicted
    foreground (``num_classes``: the union's classes)."""
    if decision.domain is None:
        return decision
    best = routes[decision.domain]
    top = next(s.distance for s in decision.scores if s.name == decision.domain)
    tied = [
        s.name
        for s in decision.scores
        if (routes[s.name].net, routes[s.name].index) == (best.net, best.index)
        and math.isclose(s.distance, top, rel_tol=1e-9)
    ]
    if len(tied) < 2 or best.select is None:
        return decision
    net = best.net
    with torch.no_grad():
        slices = subsample_tensor(volume, best.context_slices)
        logits = head_logits(net, slices.to(device), 0)
    counts = np.bincount(logits.argmax(1).cpu().numpy().ravel(), minlength=num_classes)
    cover = {n: float(counts[list(routes[n].select or ())[1:]].sum()) for n in tied}
    winner = max(tied, key=lambda n: cover[n])
    confidence = cover[winner] / (sum(cover.values()) or 1.0)
    return replace(decision, domain=winner, confidence=confidence)
