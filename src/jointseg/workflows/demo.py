"""``jointseg demo``: the whole product, small, on the CPU, in minutes.

Synthesizes a three-joint study (subjects at their protocol's own view and maturity:
``DEMO_VARIATION``), checks it, trains the ``full`` scheme and the ``individual``
baseline, evaluates both on held-out subjects, compares them, predicts one held-out scan into a
label map, meshes and a preview, and writes ``OUT/REPORT.md`` and ``OUT/results.json`` (what it
measured: :func:`demo_results`; :func:`headline` renders it for the report and the README).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from jointseg.config import load_config
from jointseg.data.checks import check_path, format_report
from jointseg.data.manifest import list_cases
from jointseg.evaluation.compare import compare_runs
from jointseg.evaluation.evaluate import SUMMARY_FILE, evaluate_run
from jointseg.evaluation.report import postprocessing_section
from jointseg.inference.predict import PredictionError, predict_path
from jointseg.recognition.decision import DomainRecognitionError
from jointseg.runs import RunFolder
from jointseg.synth.generate import same_study, synthesize_study
from jointseg.utils.atomic import atomic_write_json, atomic_write_text
from jointseg.utils.compute import AUTO_DEVICE
from jointseg.workflows.train import train_run

DEMO_SCHEMES = ("full", "individual")
#: The demo's study: subjects at their protocol's own view and maturity. Generator 3's wide
#: variation (long fields, shifted views, skeletal age off calendar age) needs more subjects
#: or steps than the demo's minutes hold (BENCHMARKS.md, the demo).
DEMO_VARIATION = "typical"
RESULTS_FILE = "results.json"  # OUT/results.json: demo_results()

logger = logging.getLogger(__name__)


def run_demo(
    out: Path,
    config: Path,
    subjects: int = 10,
    test_subjects: int = 4,
    seed: int = 0,
    jobs: int = 2,
    synth_scale: float = 1.0,
    device: str = AUTO_DEVICE,
) -> Path:
    """Run every step of the demo into ``out``, its networks on ``device`` (``auto``: CUDA when
    available); returns the report's path. Resumable."""
    out = Path(out)
    clock = _PhaseClock()
    cfg = load_config(config)
    data = out / "data"
    joints = ["ankle", "knee", "shoulder"]
    if not same_study(data, subjects, test_subjects, joints, seed, scale=synth_scale,
                      variation=DEMO_VARIATION):  # fmt: skip
        _step("synthesize a pediatric ankle/knee/shoulder study")
        synthesize_study(data, subjects, test_subjects, joints, seed, jobs, True,
                         scale=synth_scale, variation=DEMO_VARIATION)  # fmt: skip
    _step("check the datasets")
    report = check_path(data, progress=False)
    logger.info(format_report(report))
    if report.errors:
        raise ValueError(f"the synthesized study in {data} failed its checks")
    clock.lap("synthesize and check")
    runs = {}
    for scheme in DEMO_SCHEMES:
        run_dir = out / "runs" / scheme
        _step(f"train the '{scheme}' scheme")
        scheme_cfg = cfg.model_copy(update={"scheme": scheme})
        train_run(scheme_cfg, data, run_dir, resume=run_dir.exists(), device=device)
        clock.lap(f"train {scheme}")
        _step(f"evaluate '{scheme}' on held-out subjects")
        evaluate_run(run_dir, device=device)
        clock.lap(f"evaluate {scheme}")
        runs[scheme] = run_dir
    _step("compare the schemes")
    compare_md = compare_runs([runs[s] for s in DEMO_SCHEMES], out / "compare", reference="full")
    _step("predict a held-out scan: label map, meshes, measurements, preview")
    scan = list_cases(data / cfg.datasets[1].folder, "test")[0].image
    prediction_dir = out / "prediction"
    predict_known_joint(runs["full"], scan, prediction_dir, cfg.datasets[1].name, device)
    clock.lap("compare and predict")
    results = demo_results(out, runs, clock.phases)
    atomic_write_json(out / RESULTS_FILE, results)
    report_path = _write_report(out, compare_md, prediction_dir, runs, results)
    logger.info("\n[demo] done in %.0f s. Report: %s", clock.total, report_path)
    return report_path


class _PhaseClock:
    """Wall seconds of each phase of one call (a resumed demo times what it redid)."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = round(now - self.last, 1)
        self.last = now

    @property
    def total(self) -> float:
        return time.perf_counter() - self.started


def demo_results(out: Path, runs: dict[str, Path], phases: dict[str, float]) -> dict:
    """What the demo measured, for ``OUT/results.json``: the study, the machine, each phase's
    seconds, and per scheme, joint and bone the held-out mean Dice and HD95 (mm)."""
    from jointseg._version import __version__
    from jointseg.utils.environment import cpu_description

    study = json.loads((out / "data" / "synth.json").read_text(encoding="utf-8"))
    scores: dict[str, dict] = {}
    for scheme, run_dir in runs.items():
        summary = RunFolder(run_dir).evaluation_dir / SUMMARY_FILE
        document = json.loads(summary.read_text(encoding="utf-8"))["summary"]["test"]
        scores[scheme] = {
            joint: {
                bone: {
                    "dice": _rounded(values["dice"]["mean"]),
                    "hd95": _rounded(values["hd95"]["mean"]),  # None: no subject predicted
                    "empty": values["hd95"]["missing"],  # no prediction: no HD95
                }
                for bone, values in bones.items()
            }
            for joint, bones in document.items()
        }
    return {
        "date": time.strftime("%Y-%m-%d"),
        "jointseg_version": __version__,
        "generator_version": study["generator_version"],
        "variation": study.get("variation", "wide"),
        "subjects": study["subjects"],
        "test_subjects": study["test_subjects"],
        "machine": cpu_description(),
        "seconds": round(sum(phases.values()), 1),
        "phases": phases,
        "test": scores,
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def headline(results: dict) -> str:
    """The demo's figures in Markdown: a sentence on what ran where, and the table of each
    bone's held-out Dice per scheme (REPORT.md's head; the README's demo section)."""
    machine = results["machine"]
    schemes = list(results["test"])
    minutes = results["seconds"] / 60
    lines = [
        f"Measured {results['date']} on {machine['cpu']} ({machine['threads']} threads, "
        f"{machine['kernels']} kernels), jointseg {results['jointseg_version']}, generator "
        f"version {results['generator_version']} ({results['variation']} variation), "
        f"{results['subjects']} training and {results['test_subjects']} held-out subjects per "
        f"joint: the demo took {results['seconds']:.0f} s ({minutes:.1f} min) without the "
        "install.",
        "",
        "| joint: bone | " + " | ".join(f"`{s}` Dice (HD95 mm)" for s in schemes) + " |",
        "|---|" + "---|" * len(schemes),
    ]
    first = results["test"][schemes[0]]
    for joint, bones in first.items():
        for bone in bones:
            cells = []
            for scheme in schemes:
                value = results["test"][scheme].get(joint, {}).get(bone)
                if value is None:
                    cells.append("-")
                    continue
                empty = value.get("empty", 0)
                mark = f", {empty} empty*" if empty else ""
                hd95 = "-" if value["hd95"] is None else f"{value['hd95']:.1f}"
                cells.append(f"{value['dice']:.3f} ({hd95}{mark})")
            lines.append(f"| {joint}: {bone} | " + " | ".join(cells) + " |")
    if any(
        value.get("empty", 0)
        for scheme in results["test"].values()
        for bones in scheme.values()
        for value in bones.values()
    ):
        lines += [
            "",
            "\\* subjects with no prediction of the bone: Dice 0, no HD95 (the HD95 is the mean "
            "over the others).",
        ]
    return "\n".join(lines)


def predict_known_joint(
    run: Path, scan: Path, out: Path, joint: str, device: str = AUTO_DEVICE
) -> None:
    """Predict ``scan`` with ``--domain auto``; where recognition refuses it (an under-trained
    demo model may not recognize the joint), again with its known ``joint``."""
    try:
        predict_path(run, scan, out, domain="auto", device=device)
    except (PredictionError, DomainRecognitionError) as error:  # one scan: its own error
        logger.info("[demo] automatic joint recognition failed (%s); using the known joint", error)
        predict_path(run, scan, out, domain=joint, device=device)


def _step(text: str) -> None:
    logger.info("\n[demo] === %s ===", text)


def _budget(scheme: str, run_dir: Path) -> str:
    run = RunFolder(run_dir)
    info = run.info()
    training = run.config().training
    steps = {training.epochs * training.iterations(len(m.domains)) for m in info.models}
    networks = len(info.models)
    return (
        f"`{scheme}` {networks} network{'s' if networks > 1 else ''} x "
        f"{'/'.join(str(n) for n in sorted(steps))} steps of {training.batch_size} slices"
    )


def _budget_note(run_dir: Path) -> str:
    if RunFolder(run_dir).config().training.iterations_per_dataset:
        return (
            "Every network takes the same number of steps per dataset it trains on "
            "(`training.iterations_per_dataset`): the single multi-domain network as many in "
            "all as the networks of one dataset each together."
        )
    return (
        "One network per dataset thus gets as many steps per dataset as the single "
        "multi-domain network gets for all datasets together."
    )


def results_block(results_file: Path, page: Path) -> str:
    """The demo's figures as a section of ``page`` (README.md, BENCHMARKS.md): a link to the
    results file a demo wrote, then its :func:`headline`. A test checks the pages against it."""
    import os

    link = Path(os.path.relpath(Path(results_file).resolve(), Path(page).resolve().parent))
    results = json.loads(Path(results_file).read_text(encoding="utf-8"))
    return f"From [`{link.as_posix()}`]({link.as_posix()}):\n\n{headline(results)}"


def _write_report(
    out: Path, compare_md: Path, prediction_dir: Path, runs: dict[str, Path], results: dict
) -> Path:
    previews = sorted(prediction_dir.glob("*_preview.png"))
    compare_text = compare_md.read_text(encoding="utf-8")
    lines = [
        "# jointseg demo",
        "",
        "Synthetic pediatric study in `data/`; every figure below was measured in this run "
        f"(`{RESULTS_FILE}` holds them).",
        "",
        headline(results),
        "",
        "## Comparison on held-out subjects",
        "",
        compare_text.replace("](", f"]({compare_md.parent.relative_to(out)}/"),
        "",
        "Training budget (same config for both schemes): "
        + "; ".join(_budget(scheme, run_dir) for scheme, run_dir in runs.items())
        + ". "
        + _budget_note(next(iter(runs.values()))),
        "",
    ]
    summary = RunFolder(runs["full"]).evaluation_dir / SUMMARY_FILE
    if summary.is_file():
        document = json.loads(summary.read_text(encoding="utf-8"))
        lines += postprocessing_section(document, 2, "Postprocessing of the full model's labels")
    if previews:
        lines += [
            "## A held-out scan, predicted by the full model",
            "",
            f"![preview]({previews[0].relative_to(out)})",
            "",
        ]
    lines += ["## Runs", ""]
    for scheme, run_dir in runs.items():
        run = RunFolder(run_dir.relative_to(out))
        report, curves = run.evaluation_dir / "report.md", run.curves_file
        lines.append(f"- `{scheme}`: [{report}]({report}), curves [{curves}]({curves})")
    lines += [
        "",
        f"Data previews: {', '.join(sorted(p.name for p in (out / 'data').glob('preview_*.png')))}",
    ]
    path = out / "REPORT.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
