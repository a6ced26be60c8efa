"""The ``jointseg`` command line: argument parsing only; every command calls into the package."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, NoReturn

import typer

app = typer.Typer(
    help="Multi-task, multi-domain segmentation of small pediatric joint MR datasets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

CONFIG_HELP = (
    "Experiment YAML config: a path, or 'demo' / 'paper' / 'robust' / 'pretrained' for a "
    "shipped one."
)
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help=CONFIG_HELP)]
DataOpt = Annotated[
    Path, typer.Option("--data", "-d", help="Study folder: the folder holding the dataset folders.")
]
StudyOpt = Annotated[
    Path | None, typer.Option("--data", "-d", help="Study folder (default: the run's).")
]
PostprocessOpt = typer.Option(
    "--postprocess/--no-postprocess", help="Apply the run's postprocessing.json, if it has one."
)
RUN_HELP = "Trained run folder, or 'pretrained': the model the package ships."
RunArg = Annotated[Path, typer.Argument(help=RUN_HELP)]
DEVICE_HELP = "Where the networks run: cpu, cuda, cuda:N, or auto (cuda when available)."
DeviceOpt = Annotated[str, typer.Option(help=DEVICE_HELP)]

logger = logging.getLogger(__name__)


def _fail(error: BaseException | str, code: int = 2) -> NoReturn:
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=code)


def _deprecated(old: str, new: str) -> None:
    """Log that the option ``old`` is deprecated in favour of ``new`` (it still works)."""
    from jointseg.workflows.console import configure_logging

    configure_logging()
    logger.warning("warning: %s is deprecated; use %s (the old name will be removed)", old, new)


def _data_errors() -> tuple[type[Exception], ...]:
    """Bad input data (unreadable or refused scans, invalid datasets): exit status 1."""
    from jointseg.data.io import ScanReadError
    from jointseg.data.manifest import DatasetError
    from jointseg.inference.predict import PredictionError
    from jointseg.inference.slices import InputError
    from jointseg.recognition.decision import DomainRecognitionError

    return (ScanReadError, DatasetError, PredictionError, InputError, DomainRecognitionError)


def _usage_errors() -> tuple[type[Exception], ...]:
    """A command called wrongly (arguments, config, run folder): exit status 2."""
    from jointseg.config import ConfigError
    from jointseg.runs import RunError

    return (ConfigError, RunError, FileNotFoundError, FileExistsError, ValueError)


def _run(func, *args, **kwargs):
    """Call ``func``; a data error or a full disk exits with status 1, a usage error with 2,
    each with its message and without a traceback."""
    from jointseg.utils.atomic import DiskFullError, is_disk_full
    from jointseg.workflows.console import configure_logging

    configure_logging()
    try:
        return func(*args, **kwargs)
    except DiskFullError as error:
        _fail(error, 1)
    except _data_errors() as error:
        _fail(error, 1)
    except _usage_errors() as error:
        _fail(error, 2)
    except EOFError as error:  # click would turn it into a bare "Aborted!"
        _fail(f"unexpected end of a file: {error}", 1)
    except (OSError, RuntimeError) as error:
        if not is_disk_full(error):
            raise
        where = f" while writing {error.filename}" if getattr(error, "filename", None) else ""
        _fail(RuntimeError(f"no space left on device{where}"), 1)


@app.command()
def info() -> None:
    """Print versions, devices and thread counts."""
    from jointseg.utils.environment import environment_report

    typer.echo(environment_report())


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Study folder to write.")],
    subjects: Annotated[int, typer.Option(help="Training subjects per joint.")] = 15,
    test_subjects: Annotated[int, typer.Option(help="Held-out subjects per joint.")] = 0,
    joints: Annotated[
        str, typer.Option(help="Comma-separated joints: ankle, knee, shoulder, elbow, knee_t1.")
    ] = "ankle,knee,shoulder",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    jobs: Annotated[int, typer.Option(help="Parallel worker processes.")] = 1,
    preview: Annotated[bool, typer.Option(help="Write preview_<joint>.png pictures.")] = False,
    randomize: Annotated[
        bool,
        typer.Option(
            help="Render the same subjects with random contrasts, planes, resolutions and "
            "artefacts into Dataset1XX_<Joint>Randomized folders (domain randomization)."
        ),
    ] = False,
    variation: Annotated[
        str,
        typer.Option(
            help="How far subjects vary in view and maturity: wide (fields of view up to 1.8x "
            "the protocol's, moved along the limb; skeletal age off calendar age) or typical "
            "(the same subjects at the protocol's own view and maturity)."
        ),
    ] = "wide",
) -> None:
    """Synthesize pediatric joint MR datasets (ankle, knee, shoulder, elbow; the knee at a second
    site as knee_t1) with exact bone labels."""
    from jointseg.synth.generate import synthesize_study

    joint_list = [j.strip() for j in joints.split(",") if j.strip()]
    _run(
        synthesize_study,
        out,
        subjects,
        test_subjects,
        joint_list,
        seed,
        jobs,
        preview,
        randomize=randomize,
        variation=variation,
    )


@app.command()
def check(
    data: Annotated[Path, typer.Argument(help="A dataset folder or a study folder.")],
) -> None:
    """Validate datasets: geometry, labels, intensities, pairs. Exits non-zero on errors."""
    from jointseg.data.checks import check_path, format_report

    report = _run(check_path, data)
    typer.echo(format_report(report))
    if report.errors:
        raise typer.Exit(code=1)


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="A DICOM folder or a scan file.")],
    out: Annotated[
        Path | None,
        typer.Argument(help="The scan to write (.nii.gz, .nii, .nrrd, .mha); not with --list."),
    ] = None,
    series: Annotated[
        str | None,
        typer.Option(help="Series Instance UID of the series to read (default: the largest)."),
    ] = None,
    echo: Annotated[
        int | None, typer.Option(help="The echo of a multi-echo series (1: the first).")
    ] = None,
    list_series: Annotated[
        bool, typer.Option("--list", help="List the folder's DICOM series and write nothing.")
    ] = False,
) -> None:
    """Convert a DICOM series (or any scan) to a NIfTI/NRRD/MHA scan for a dataset, keeping its
    geometry, so that labels drawn on it fit voxel for voxel."""
    from jointseg.data.io import convert_scan, dicom_echoes, dicom_series

    if list_series:
        for found in _run(dicom_series, source):
            echoes = len(_run(dicom_echoes, list(found.files)))
            typer.echo(f"{found.summary()}{f', {echoes} echoes' if echoes > 1 else ''}")
        return
    if out is None:
        _fail("give the scan to write (OUT), or --list")
    image = _run(convert_scan, source, out, echo, series)
    size = "x".join(map(str, image.GetSize()))
    spacing = "x".join(f"{v:.3g}" for v in image.GetSpacing())
    typer.echo(f"wrote {out} ({size} voxels of {spacing} mm)")


@app.command()
def init(
    data: Annotated[Path, typer.Argument(help="The study folder (Dataset*/dataset.json).")],
    out: Annotated[
        Path | None, typer.Option(help="The config to write (default: DATA/jointseg.yaml).")
    ] = None,
    base: Annotated[
        str,
        typer.Option(
            help="The shipped config to start from: demo (minutes on a CPU), paper (the "
            "paper's scale, a GPU), pretrained (the shipped model's recipe), robust."
        ),
    ] = "demo",
    force: Annotated[bool, typer.Option(help="Replace an existing config.")] = False,
) -> None:
    """Write a commented training config for the datasets a study folder holds, with the
    scheme that suits their number."""
    from jointseg.workflows.init_config import write_init_config

    path, datasets, scheme = _run(write_init_config, data, out, base, force)
    for found in datasets:
        typer.echo(found.line())
    typer.echo(f"wrote {path} (scheme {scheme}); next: jointseg check {data}, then "
               f"jointseg train --config {path} --data {data} --out runs/{scheme}")  # fmt: skip


@app.command()
def preprocess(config: ConfigOpt, data: DataOpt) -> None:
    """Preprocess every dataset of a config into the slice cache."""
    from jointseg.config import load_config
    from jointseg.data.cache import preprocess_study

    cfg = _run(load_config, config)
    _run(preprocess_study, cfg, data)


@app.command()
def train(
    config: ConfigOpt,
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder.")],
    scheme: Annotated[str | None, typer.Option(help="Override the config's scheme.")] = None,
    fold: Annotated[int | None, typer.Option(help="Train on a fold of the splits file.")] = None,
    splits: Annotated[Path | None, typer.Option(help="Splits file (jointseg splits).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
    devices: Annotated[
        int, typer.Option(help="Training processes (one GPU each, or CPU processes): DDP if > 1.")
    ] = 1,
    seed: Annotated[int | None, typer.Option(help="Override the config's seed.")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Train one scheme into a run folder."""
    from jointseg.workflows.train import train_from_cli

    _run(
        train_from_cli,
        config,
        data,
        out,
        scheme=scheme,
        fold=fold,
        splits=splits,
        resume=resume,
        devices=devices,
        seed=seed,
        device=device,
    )


@app.command()
def adapt(
    ctx: typer.Context,
    run: Annotated[
        Path,
        typer.Argument(
            help="Trained multi-domain run folder, or 'pretrained': the model the package ships."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The new run folder.")],
    dataset: Annotated[
        Path | None,
        typer.Option(help="Required: the new dataset's folder (one dataset, nnU-Net layout)."),
    ] = None,
    mode: Annotated[
        str, typer.Option(help="What trains: head, norm+head, all or branch (docs/adapt.md).")
    ] = "norm+head",
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 300,
    init: Annotated[str, typer.Option(help="New BN from the 'nearest' domain or 'pooled'.")] = (
        "nearest"
    ),
    name: Annotated[str | None, typer.Option(help="New domain name (default: folder).")] = None,
    subjects: Annotated[int | None, typer.Option(help="Train on the first N cases.")] = None,
    validation: Annotated[int, typer.Option(help="Cases held out for validation.")] = 0,
    lr: Annotated[
        float | None,
        typer.Option(help="Base learning rate (default: the run's); new layers at 3x it."),
    ] = None,
    statistics: Annotated[
        str, typer.Option(help="New BN statistics: 'fixed' (as started) or 'reestimated'.")
    ] = "fixed",
    device: DeviceOpt = "auto",
    data: Annotated[Path | None, typer.Option(hidden=True, help="Deprecated: --dataset.")] = None,
    train: Annotated[str | None, typer.Option(hidden=True, help="Deprecated: --mode.")] = None,
) -> None:
    """Add a dataset (a new joint or site) as a new domain of a trained run."""
    from jointseg.workflows.adapt import adapt_run

    if data is not None:
        if dataset is not None:
            _fail("give the dataset once, as --dataset (--data is its deprecated name)")
        _deprecated("adapt --data", "--dataset")
        dataset = data
    if dataset is None:
        _fail("missing option '--dataset': the new dataset's folder")
    if train is not None:
        if ctx.get_parameter_source("mode").name == "COMMANDLINE":
            _fail("give the mode once, as --mode (--train is its deprecated name)")
        _deprecated("adapt --train", "--mode")
        mode = train
    _run(adapt_run, run, dataset, out, mode=mode, steps=steps, init=init, name=name,
         subjects=subjects, validation=validation, lr=lr, statistics=statistics,
         device=device)  # fmt: skip
    typer.echo(f"adapted run: {out}")


@app.command()
def ablate(
    config: ConfigOpt,
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder of one run per scheme.")],
    device: DeviceOpt = "auto",
) -> None:
    """Train every scheme of the config's grid with identical data, folds and seeds."""
    from jointseg.workflows.train import ablate_from_cli

    _run(ablate_from_cli, config, data, out, device=device)


@app.command()
def splits(
    data: Annotated[Path, typer.Argument(help="Study folder.")],
    folds: Annotated[int, typer.Option(help="Number of folds (= subjects: leave-one-out).")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    out: Annotated[
        Path | None, typer.Option(help="Splits file (default DATA/splits.json).")
    ] = None,
) -> None:
    """Write a cross-validation splits file (by subject, per dataset)."""
    from jointseg.data.splits import write_splits

    path = _run(write_splits, data, folds, seed, out)
    typer.echo(f"wrote {path}")


@app.command()
def cv(
    config: ConfigOpt,
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Cross-validation folder.")],
    scheme: Annotated[str | None, typer.Option(help="Override the config's scheme.")] = None,
    splits: Annotated[Path | None, typer.Option(help="Splits file.")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Train every fold and predict each held-out subject in its original geometry."""
    from jointseg.workflows.cross_validation import run_cross_validation

    _run(run_cross_validation, config, data, out, scheme=scheme, splits=splits, device=device)


@app.command()
def evaluate(
    run: Annotated[
        Path,
        typer.Argument(
            help="A run folder, a cv folder, or 'pretrained': the model the package ships."
        ),
    ],
    data: StudyOpt = None,
    postprocess: Annotated[bool, PostprocessOpt] = True,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Evaluation folder (default RUN/evaluation; required for 'pretrained').",
        ),
    ] = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Score a run on data it has not trained on; write metrics, summary and report."""
    from jointseg.evaluation.evaluate import evaluate_run

    path = _run(evaluate_run, run, data=data, postprocess=postprocess, out=out, device=device)
    typer.echo(f"report: {path}")


@app.command()
def postprocess(
    run: RunArg,
    data: StudyOpt = None,
    share: Annotated[
        float | None,
        typer.Option(help="Keep components above this share of the largest (default: config)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Folder for postprocessing.json (default: the run folder; "
            "required for 'pretrained').",
        ),
    ] = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Decide the run's postprocessing on its validation subjects (postprocessing.json)."""
    from jointseg.evaluation.postprocessing import decide_postprocessing, decision_table
    from jointseg.runs import RunFolder

    if share is not None and not 0 < share <= 1:
        _fail(f"--share must be in (0, 1], got {share}")
    decision = _run(decide_postprocessing, run, data, share=share, out=out, device=device)
    if decision is None:
        _fail(f"{run}: the run has no validation subjects to decide postprocessing on", 1)
    typer.echo(decision_table(decision))
    typer.echo(f"wrote {(out or run) / RunFolder.POSTPROCESSING}")


@app.command()
def calibrate(
    run: RunArg,
    data: StudyOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Folder for domain_calibration.json (default: the run folder; "
            "required for 'pretrained').",
        ),
    ] = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Measure --domain auto's calibration (domain_calibration.json) of a run trained without
    one, on a few of its validation scans in its study."""
    from jointseg.workflows.calibration import calibrate_run

    path = _run(calibrate_run, run, data, out=out, device=device)
    typer.echo(f"wrote {path}")


@app.command()
def compare(
    runs: Annotated[
        list[Path],
        typer.Argument(help="Evaluated run folders, or the folders `evaluate --out` wrote."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    reference: Annotated[str | None, typer.Option(help="Reference scheme.")] = None,
) -> None:
    """The paper's table: schemes x structures, with paired Wilcoxon tests (Holm)."""
    from jointseg.evaluation.compare import compare_runs

    path = _run(compare_runs, runs, out, reference=reference)
    typer.echo(f"comparison: {path}")


@app.command()
def predict(
    run: RunArg,
    input: Annotated[Path, typer.Argument(help="Scan file, DICOM folder, or folder of scans.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    domain: Annotated[str, typer.Option(help="Domain name, or 'auto'.")] = "auto",
    tta: Annotated[bool, typer.Option(help="Test-time flips (slower).")] = False,
    device: DeviceOpt = "cpu",
    batch_size: Annotated[int, typer.Option(help="Slices per forward pass.")] = 16,
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
    meshes: Annotated[bool, typer.Option(help="Write per-structure meshes.")] = True,
    overwrite: Annotated[
        bool, typer.Option(help="Redo scans whose outputs are complete (default: skip them).")
    ] = False,
    postprocess: Annotated[bool, PostprocessOpt] = True,
    format: Annotated[  # noqa: A002 - the option's name
        list[str] | None,
        typer.Option(
            help="Also write: dicom-seg, seg.nrrd; nifti: the label map alone "
            "(default: dicom-seg for a DICOM series). Repeatable."
        ),
    ] = None,
    backend: Annotated[
        str,
        typer.Option(
            help="auto (ONNX Runtime where installed and the run has a current export: "
            "`jointseg export`; else torch), torch, or onnxruntime."
        ),
    ] = "auto",
    onnx: Annotated[
        Path | None,
        typer.Option(
            help="ONNX export folder (default RUN/onnx; for 'pretrained': export's --out)."
        ),
    ] = None,
    precision: Annotated[
        str,
        typer.Option(
            help="auto (bfloat16 where the CPU/GPU computes it natively, else float32), 32, "
            "or bf16."
        ),
    ] = "auto",
    adapt_bn: Annotated[
        bool,
        typer.Option(
            help="Re-estimate the domain's batch-norm statistics on the scan itself before "
            "segmenting it (AdaBN): meant for a scanner or protocol unlike the training data "
            "(it lowered the shipped model's Dice: docs/predict.md). Slower by one extra pass; "
            "the torch backend only.",
        ),
    ] = False,
) -> None:
    """Predict label maps, per-bone meshes, measurements and previews."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from jointseg.inference.predict import predict_path
    from jointseg.workflows.console import PACKAGE_LOGGER, configure_logging

    configure_logging()
    with logging_redirect_tqdm([logging.getLogger(PACKAGE_LOGGER)]):  # lines above the bar
        _run(
            predict_path,
            run,
            input,
            out,
            domain=domain,
            tta=tta,
            device=device,
            batch_size=batch_size,
            threads=threads,
            meshes=meshes,
            overwrite=overwrite,
            postprocess=postprocess,
            formats=format,
            backend=backend,
            onnx=onnx,
            precision=precision,
            adapt_bn=adapt_bn,
        )


@app.command()
def export(
    run: RunArg,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder (default RUN/onnx; required for 'pretrained')."),
    ] = None,
) -> None:
    """Export the run's networks to ONNX: one checked graph per domain, and a manifest."""
    from jointseg.inference.export import export_run

    manifest = _run(export_run, run, out)
    typer.echo(f"ONNX export: {manifest.parent} ({manifest.name})")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Demo folder.")] = Path("demo"),
    config: ConfigOpt = Path("demo"),
    device: DeviceOpt = "auto",
) -> None:
    """Synthesize, train, evaluate, compare and predict: the whole product, small, on the CPU."""
    from jointseg.workflows.demo import run_demo

    _run(run_demo, out, config, device=device)


if __name__ == "__main__":  # pragma: no cover
    app()
