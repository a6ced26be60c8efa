"""``jointseg predict``: scans in, label maps, label tables, meshes, measurements, previews out.

Per scan (``case`` = the file name without extension, or the DICOM folder's name)::

    OUT/<case>_seg<ext>              label map, the dataset's label values, the scan's grid
    OUT/<case>_seg.json              label table: names, values, RGB colours
    OUT/<case>_seg_itksnap.txt       ITK-SNAP label descriptions
    OUT/<case>_seg.ctbl              3D Slicer colour table
    OUT/<case>/<structure>.stl|.ply  smoothed surface meshes, scanner coordinates (mm, LPS)
    OUT/<case>_measurements.json     volume, area, extents, components per structure
    OUT/<case>_preview.png           overlays on three orthogonal slices and a 3D view
    OUT/measurements.csv             one row per case and structure, all cases
    OUT/<case>_seg.dcm, <case>.seg.nrrd   DICOM-SEG, 3D Slicer segmentation (``--format``;
                                     DICOM-SEG by default for a DICOM series: inference/formats.py)
    OUT/<case>_outputs.json          written last: the jointseg version, the case's outputs,
                                     their sizes, the settings, the formats not written and why
                                     (a refused scan: the refusal and every candidate's scores)

Each scan goes through one pipeline: read and check (``load_scan``), the Predictor
(preprocess once, recognize with ``--domain auto``, infer, restore), clean (the run's
``postprocessing.json``: islands removed, holes filled per structure), then the writer stage
(:mod:`jointseg.inference.writer`), which measures, meshes and writes.

A case's files are all computed before the first is written; if writing fails, the case's files
written so far are removed. Every file is written atomically. A case is complete when its
``_outputs.json`` exists, names the same scan and settings (run, domain, TTA, meshes) and every
output it lists exists with its recorded size; a rerun skips complete cases unless
``overwrite``. A scan recognition refused gets a record without outputs, holding the refusal's
evidence (:meth:`~jointseg.recognition.decision.DomainDecision.to_dict`); it is never complete.

An output format that cannot be written (a DICOM-SEG on a series without Frame of Reference,
say) costs the scan nothing else: its label map and other outputs are written, the scan counts
as predicted, and its line is a WARNING naming the format and why; ``format_errors`` in the
``_outputs.json`` keeps the reason. Such a case is not complete while a format asked for with
``--format`` is missing, so a rerun tries it again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from jointseg.data.io import (
    SCAN_EXTENSIONS,
    is_dicom_dir,
    scan_extension,
    strip_extension,
)
from jointseg.inference.backends import load_backend
from jointseg.inference.formats import case_formats, check_formats, run_algorithm, write_formats
from jointseg.inference.packaged import resolve_run
from jointseg.inference.postprocess import Postprocessing
from jointseg.inference.predictor import InputError, Prediction, Predictor, check_adapt_bn
from jointseg.inference.slices import load_scan
from jointseg.inference.writer import (
    completed_outputs,
    remove_outputs,
    write_case,
    write_outputs_record,
)
from jointseg.recognition.decision import DomainRecognitionError
from jointseg.utils.atomic import (
    DiskFullError,
    remove_temporaries,
)
from jointseg.utils.faults import fault_point

logger = logging.getLogger(__name__)


class PredictionError(ValueError):
    """Some scans of a folder could not be predicted; the message lists each with its reason."""


@dataclass
class CaseResult:
    """What ``predict_path`` did with one scan."""

    case: str
    source: Path
    domain: str | None = None
    confidence: float | None = None
    outputs: list[Path] = field(default_factory=list)
    error: str | None = None
    skipped: bool = False
    format_errors: dict[str, str] = field(default_factory=dict)  # format -> why not written


def find_scans(path: str | Path) -> list[Path]:
    """The scans an INPUT names: a scan file, a DICOM series folder, or a folder of those.

    Raises ``FileNotFoundError``/``ValueError`` for a missing path, an unsupported file, or a
    folder without any scan.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_file():
        if scan_extension(path) is None:
            raise ValueError(
                f"{path}: not a supported scan ({', '.join(SCAN_EXTENSIONS)}, or a DICOM folder)"
            )
        return [path]
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file() and scan_extension(p) is not None]
    folders = [p for p in entries if p.is_dir() and is_dicom_dir(p)]
    if files or folders:
        return sorted(files + folders)
    if is_dicom_dir(path):
        return [path]
    raise ValueError(
        f"{path}: an empty folder (no {', '.join(SCAN_EXTENSIONS)} file, DICOM series or folder "
        "of DICOM series in it)"
    )


def case_name(scan: Path) -> str:
    """The case name of a scan: its file name without extension, or its folder's name."""
    return scan.name if scan.is_dir() else strip_extension(scan)


def output_extension(scan: Path) -> str:
    """The label map's extension: the scan's own format when we write it, else ``.nii.gz``."""
    ext = None if scan.is_dir() else scan_extension(scan)
    return ext if ext in SCAN_EXTENSIONS else ".nii.gz"


def predict_path(
    run: Path,
    input: Path,  # the CLI's argument name
    out: Path,
    domain: str = "auto",
    tta: bool = False,
    device: str = "cpu",
    batch_size: int = 16,
    threads: int | None = None,
    meshes: bool = True,
    overwrite: bool = False,
    postprocess: bool = True,
    formats: list[str] | None = None,  # output formats: inference/formats.py
    backend: str = "auto",  # auto | torch | onnxruntime: inference/backends.py
    onnx: Path | None = None,  # the ONNX export folder (default RUN/onnx)
    precision: str = "auto",  # auto | 32 | bf16: utils/compute.py (the torch backend)
    adapt_bn: bool = False,  # BN statistics re-estimated per scan: Predictor (torch backend)
) -> list[CaseResult]:
    """Predict every scan of ``input`` into ``out``; see the module docstring for the outputs.

    Label maps are postprocessed as the run's ``postprocessing.json`` says (not at all without
    it, or with ``postprocess=False``) before anything is measured or meshed. Scans whose outputs
    are complete are skipped unless ``overwrite``. A scan that fails is reported and skipped; the
    others are still predicted, then a :class:`PredictionError` lists the failures. A single
    scan's failure raises its own error. Nothing is printed: each scan's outcome is logged
    (:func:`case_line`; INFO, WARNING for a failure) and returned. ``run`` may be the word
    ``pretrained``: the model the package ships (:mod:`jointseg.inference.packaged`).
    """
    run = resolve_run(run)  # the word "pretrained": the packaged model
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    scans = find_scans(input)
    _check_unique_cases(scans)
    chosen = check_formats(formats, scans)
    check_adapt_bn(adapt_bn, backend)
    predictor = Predictor.from_run(
        run, device=device, batch_size=batch_size, tta=tta, precision=precision, adapt_bn=adapt_bn
    )
    torch_only = "--adapt-bn" if adapt_bn else "--precision" if precision != "auto" else None
    predictor.backend = load_backend(backend, predictor, onnx, threads, device, torch_only)
    backend = predictor.backend.name  # what "auto" chose
    algorithm = run_algorithm(predictor.run_dir, predictor.info)  # named in DICOM-SEG
    postprocessing = Postprocessing.load(run) if postprocess else None
    if not postprocess:
        logger.info("%s: postprocessing disabled; label maps are written as predicted", run)
    if domain != "auto":
        predictor.info.domain(domain)  # unknown domain: a RunError naming the known ones
    out = Path(out)
    remove_temporaries(out, recursive=True)  # left by a killed run
    settings = {"run": str(Path(run).resolve()), "domain": domain, "tta": tta, "meshes": meshes}
    settings |= {"formats": list(chosen) if chosen is not None else "default", "backend": backend}
    if backend == "torch":
        settings["precision"] = predictor.precision
    if adapt_bn:
        settings["adapt_bn"] = True
    if postprocessing is not None:
        settings["postprocessing"] = {d: postprocessing.describe(d) for d in postprocessing.steps}
    results: list[CaseResult] = []
    progress = tqdm(scans, desc="predict", unit="scan", disable=len(scans) < 2)
    for scan in progress:
        case = case_name(scan)
        progress.set_postfix_str(case)
        result = CaseResult(case, scan)
        done = None if overwrite else completed_outputs(out, case, scan, settings)
        if done is not None:
            result.domain, result.confidence, result.outputs = done
            result.skipped = True
            logger.info(case_line(result))
            results.append(result)
            continue
        try:
            image = load_scan(scan)  # read + check, once
            prediction = predictor.predict_checked(image, domain)  # preprocess, infer, restore
            prediction = postprocess_prediction(postprocessing, prediction)  # clean
            result.domain, result.confidence = prediction.domain, prediction.confidence
            extra, result.format_errors = write_formats(  # the label map in other formats
                case_formats(chosen, scan), scan, prediction, out, case, algorithm
            )
            try:
                written = write_case(image, prediction, out, case, output_extension(scan), meshes)
            except BaseException:
                remove_outputs(extra, out / case)
                raise
            result.outputs = written + extra
            write_outputs_record(out, case, scan, settings, result.domain, result.confidence,
                                 result.outputs, format_errors=result.format_errors)  # fmt: skip
            fault_point("predict.case")
        except (KeyboardInterrupt, SystemExit, DiskFullError):
            raise  # a full disk fails every later scan too
        except Exception as error:  # reported per scan; the others go on
            if isinstance(error, DomainRecognitionError):  # the full evidence, on disk
                record = write_outputs_record(
                    out, case, scan, settings, None, None, [], refusal=error
                )
                logger.info(
                    "[predict] %s: every candidate's recognition scores in %s", case, record
                )
            if len(scans) == 1:
                if isinstance(error, DomainRecognitionError):
                    message = f"{scan}: {_reason(error, scan)}"
                    raise DomainRecognitionError(message, error.decision) from None
                if isinstance(error, InputError):
                    raise type(error)(f"{scan}: {_reason(error, scan)}") from None
                raise
            result.error = _reason(error, scan)
            logger.warning(case_line(result))
        else:
            logger.log(logging.WARNING if result.format_errors else logging.INFO, case_line(result))
        results.append(result)
    failed = [r for r in results if r.error]
    if failed:
        lines = [f"{len(failed)} of {len(results)} scans failed:"]
        lines += [f"  - {r.source}: {r.error}" for r in failed]
        raise PredictionError("\n".join(lines))
    return results


def case_line(result: CaseResult) -> str:
    """One line on what became of a scan: skipped, failed (why), or its domain and label map
    (and each output format not written, with why)."""
    if result.skipped:
        return f"[predict] {result.case}: outputs complete, skipped (--overwrite redoes it)"
    if result.error:
        return f"[predict] {result.case}: FAILED - {result.error}"
    how = "" if result.confidence is None else f" (confidence {result.confidence:.2f})"
    line = f"[predict] {result.case}: {result.domain}{how} -> {result.outputs[0]}"
    for kind, reason in result.format_errors.items():
        line += f"; {kind} not written: {reason}"
    return line


def postprocess_prediction(
    postprocessing: Postprocessing | None, prediction: Prediction
) -> Prediction:
    """``prediction`` with its label map postprocessed (unchanged without a postprocessing);
    ``details["postprocessing"]`` names the steps applied per structure."""
    if postprocessing is None:
        return prediction
    domain, structures = prediction.domain, prediction.structures
    label_map = postprocessing.apply_image(prediction.label_map, domain, structures)
    details = {**prediction.details, "postprocessing": postprocessing.describe(domain)}
    return replace(prediction, label_map=label_map, details=details)


def _reason(error: Exception, scan: Path) -> str:
    text = str(error).strip() or type(error).__name__
    prefix = f"{scan}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def _check_unique_cases(scans: list[Path]) -> None:
    names: dict[str, Path] = {}
    for scan in scans:
        other = names.setdefault(case_name(scan), scan)
        if other != scan:
            raise ValueError(f"{other} and {scan} would write the same outputs; rename one")


__all__ = [
    "CaseResult",
    "PredictionError",
    "case_line",
    "case_name",
    "completed_outputs",
    "find_scans",
    "output_extension",
    "postprocess_prediction",
    "predict_path",
    "write_case",
]
