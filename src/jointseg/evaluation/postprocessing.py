"""Deciding a run's postprocessing on its validation subjects, as nnU-Net decides its own.

The run predicts its validation subjects (``run.json``'s ``validation_cases``); per domain and
structure, each step of :mod:`jointseg.inference.postprocess` is kept only when it does not lower
the structure's mean Dice over those subjects (a tie keeps it: the step cleans the mesh):

1. components: ``"largest"`` and ``"share"`` are each scored on the raw prediction; the better
   one is kept if it is at least as good as no step. On a tie the rule that removes less wins
   (``"share"``): a few validation subjects often hold no second piece at all, and on a test
   scan where the network misses a thin bridge of a bone (the scapula's blade), ``"largest"``
   would delete half of it;
2. hole filling: scored on the label map after every structure's kept components step.

The decision and the Dice measured with and without each step go to ``RUN/postprocessing.json``
(or ``--out``: required for the packaged model, the word ``pretrained``). A domain without
validation subjects keeps the decision the run's file holds for it (the packaged model's
domains in a run ``jointseg adapt`` made of it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from jointseg.data.io import geometry_mismatches, read_image, verify_scans
from jointseg.evaluation.evaluate import LabelPredictor, config_evaluation, plan_train_run
from jointseg.evaluation.metrics import GeometryMismatchError, dice
from jointseg.inference.packaged import output_folder, resolve_run
from jointseg.inference.postprocess import (
    DEFAULT_SHARE,
    ComponentRule,
    Postprocessing,
    StructureSteps,
    fill_holes,
    keep_components,
    postprocess_labels,
)
from jointseg.runs import RunFolder

logger = logging.getLogger(__name__)

TOLERANCE = 1e-9  # Dice differences below this are ties (floating-point noise)
TIE_ORDER: tuple[ComponentRule, ...] = ("share", "largest")  # on a tie, the one removing less
Pairs = list[tuple[np.ndarray, np.ndarray]]  # (predicted, reference) label maps, z,y,x


def _mean_dice(masks: list[np.ndarray], pairs: Pairs, value: int) -> float:
    return float(np.mean([dice(m, ref == value) for m, (_, ref) in zip(masks, pairs, strict=True)]))


def _not_lower(with_step: float, without: float) -> bool:
    return with_step >= without - TOLERANCE


def decide_steps(
    pairs: dict[str, Pairs],
    structures: dict[str, dict[str, int]],
    share: float = DEFAULT_SHARE,
) -> Postprocessing:
    """The steps to keep per domain and structure, from (prediction, reference) label maps.

    ``pairs``: domain -> its validation subjects' label maps; ``structures``: domain ->
    structure name -> label value. Domains without pairs get no steps.
    """
    steps: dict[str, dict[str, StructureSteps]] = {}
    measured: dict[str, dict[str, dict[str, Any]]] = {}
    for domain, items in pairs.items():
        if not items:
            continue
        names = structures[domain]
        record: dict[str, dict[str, Any]] = {n: {"cases": len(items)} for n in names}
        rules: dict[str, StructureSteps] = {}
        for name, value in names.items():
            raw = [pred == value for pred, _ in items]
            scores = {"without": _mean_dice(raw, items, value)}
            for rule in TIE_ORDER:
                kept = [keep_components(m, rule, share) for m in raw]
                scores[rule] = _mean_dice(kept, items, value)
            best = max(TIE_ORDER, key=lambda r: scores[r])  # first rule on a tie
            chosen = best if _not_lower(scores[best], scores["without"]) else None
            rules[name] = StructureSteps(chosen)
            record[name]["components_dice"] = _rounded(scores)
        staged = [postprocess_labels(pred, names, rules, share) for pred, _ in items]
        for name, value in names.items():
            without = _mean_dice([s == value for s in staged], items, value)
            filled = _mean_dice([fill_holes(s, value) == value for s in staged], items, value)
            keep = _not_lower(filled, without)
            rules[name] = StructureSteps(rules[name].components, keep)
            record[name]["fill_holes_dice"] = _rounded({"without": without, "with": filled})
        final = [postprocess_labels(pred, names, rules, share) for pred, _ in items]
        for name, value in names.items():
            record[name]["dice_without"] = record[name]["components_dice"]["without"]
            record[name]["dice_with"] = round(
                _mean_dice([f == value for f in final], items, value), 6
            )
        steps[domain] = rules
        measured[domain] = record
    return Postprocessing(steps, share, measured)


def _rounded(scores: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in scores.items()}


def run_share(run_dir: Path) -> float:
    """The run config's ``evaluation.postprocess_share``."""
    return config_evaluation(run_dir).postprocess_share


def decide_postprocessing(
    run_dir: str | Path,
    data: str | Path | None = None,
    predictor: LabelPredictor | None = None,
    share: float | None = None,
    progress: bool = True,
    out: str | Path | None = None,
    device: str = "cpu",
) -> Postprocessing | None:
    """Predict the run's validation subjects, decide each step per structure, and write
    ``postprocessing.json`` into ``out`` (default: the run folder); returns the decision (None,
    nothing written, without any validation subject).

    ``run_dir`` may be the word ``pretrained`` (the packaged model; ``out`` required).
    ``data``: the study folder (default: the run's); ``predictor`` (anything with
    ``predict(image, domain).label_map``): default the run's Predictor on ``device``, with
    test-time flips when the config sets ``evaluation.tta``; ``share``: default the config's
    ``evaluation.postprocess_share``. Domains without validation subjects keep the run's
    earlier decision.
    """
    target = output_folder(run_dir, out, "", "postprocessing decision")
    run_dir = resolve_run(run_dir)
    plan = plan_train_run(run_dir, Path(data) if data else None)
    cases = [c for c in plan.cases if c.subset == "validation"]
    if not cases:
        logger.warning("%s: no validation subjects; no postprocessing decided", run_dir)
        return None
    verify_scans(path for case in cases for path in (case.image, case.label))
    if predictor is None:
        from jointseg.evaluation.evaluate import config_tta
        from jointseg.inference.predictor import Predictor

        predictor = Predictor.from_run(run_dir, device, tta=config_tta(run_dir))
    pairs: dict[str, Pairs] = {}
    for case in tqdm(cases, desc="postprocessing", unit="case", disable=not progress):
        reference = read_image(case.label)
        predicted = predictor.predict(read_image(case.image), case.domain).label_map
        problems = geometry_mismatches(predicted, reference)
        if problems:
            raise GeometryMismatchError(
                f"{case.label}: the prediction lies on another grid: " + "; ".join(problems)
            )
        pairs.setdefault(case.domain, []).append(
            (sitk.GetArrayFromImage(predicted), sitk.GetArrayFromImage(reference))
        )
    decision = decide_steps(pairs, plan.structures, run_share(run_dir) if share is None else share)
    decision.cases = {}
    for case in cases:
        decision.cases.setdefault(case.domain, []).append(case.case_id)
    _keep_unmeasured(decision, run_dir)
    path = decision.save(target)
    logger.info("%s: postprocessing decided on %d validation subjects", path, len(cases))
    return decision


def _keep_unmeasured(decision: Postprocessing, run_dir: Path) -> None:
    """Add the run's earlier decisions of the domains ``decision`` did not measure."""
    if not RunFolder(run_dir).postprocessing_file.is_file():
        return
    earlier = Postprocessing.load(run_dir)
    if earlier is None:
        return
    kept = [d for d in earlier.steps if d not in decision.steps]
    for domain in kept:
        decision.steps[domain] = earlier.steps[domain]
        if domain in earlier.measured:
            decision.measured[domain] = earlier.measured[domain]
        if domain in earlier.cases:
            decision.cases[domain] = earlier.cases[domain]
    if kept:
        logger.info("%s: the earlier decisions of %s kept (no validation subjects here)",
                    run_dir, ", ".join(kept))  # fmt: skip


def decision_table(decision: Postprocessing) -> str:
    """A plain-text table of the decision: domain, structure, steps, Dice without and with."""
    lines = [f"{'domain':<12} {'structure':<14} {'steps':<34} {'Dice without':>12} {'with':>8}"]
    for domain, items in decision.steps.items():
        for name, steps in items.items():
            record = decision.measured.get(domain, {}).get(name, {})
            without, with_ = record.get("dice_without"), record.get("dice_with")
            lines.append(
                f"{domain:<12} {name:<14} {steps.describe():<34} "
                f"{_number(without):>12} {_number(with_):>8}"
            )
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


__all__ = ["decide_postprocessing", "decide_steps", "decision_table", "run_share"]
