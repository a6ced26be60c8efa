"""``jointseg demo``: the whole product, small, on the CPU, in minutes.

Synthesizes a three-joint study, checks it, trains the ``full`` scheme and the ``individual``
baseline, evaluates both on held-out subjects, compares them, predicts one held-out scan into a
label map, meshes and a preview, and writes ``OUT/REPORT.md``.
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
from jointseg.synth.generate import synthesize_study
from jointseg.utils.atomic import atomic_write_text
from jointseg.utils.compute import AUTO_DEVICE
from jointseg.workflows.train import train_run

DEMO_SCHEMES = ("full", "individual")

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
    started = time.perf_counter()
    cfg = load_config(config)
    data = out / "data"
    if not (data / "synth.json").is_file():
        _step("synthesize a pediatric ankle/knee/shoulder study")
        joints = ["ankle", "knee", "shoulder"]
        synthesize_study(data, subjects, test_subjects, joints, seed, jobs, True, scale=synth_scale)
    _step("check the datasets")
    report = check_path(data, progress=False)
    logger.info(format_report(report))
    if report.errors:
        raise ValueError(f"the synthesized study in {data} failed its checks")
    runs = {}
    for scheme in DEMO_SCHEMES:
        run_dir = out / "runs" / scheme
        _step(f"train the '{scheme}' scheme")
        scheme_cfg = cfg.model_copy(update={"scheme": scheme})
        train_run(scheme_cfg, data, run_dir, resume=run_dir.exists(), device=device)
        _step(f"evaluate '{scheme}' on held-out subjects")
        evaluate_run(run_dir, device=device)
        runs[scheme] = run_dir
    _step("compare the schemes")
    compare_md = compare_runs([runs[s] for s in DEMO_SCHEMES], out / "compare", reference="full")
    _step("predict a held-out scan: label map, meshes, measurements, preview")
    scan = list_cases(data / cfg.datasets[1].folder, "test")[0].image
    prediction_dir = out / "prediction"
    predict_known_joint(runs["full"], scan, prediction_dir, cfg.datasets[1].name, device)
    report_path = _write_report(
        out, compare_md, prediction_dir, runs, time.perf_counter() - started
    )
    logger.info("\n[demo] done in %.0f s. Report: %s", time.perf_counter() - started, report_path)
    return report_path


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


def _write_report(
    out: Path, compare_md: Path, prediction_dir: Path, runs: dict[str, Path], seconds: float
) -> Path:
    previews = sorted(prediction_dir.glob("*_preview.png"))
    compare_text = compare_md.read_text(encoding="utf-8")
    lines = [
        "# jointseg demo",
        "",
        f"Synthetic pediatric study in `data/`; every figure below was measured in this run "
        f"({seconds:.0f} s on this machine).",
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
