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
    OUT/<case>_outputs.json          written last: the case's outputs, their sizes, the settings

Label maps are postprocessed as the run's ``postprocessing.json`` says (islands removed, holes
filled per structure) before they are measured, meshed and written.

A case's files are all computed before the first is written; if writing fails, the case's files
written so far are removed. Every file is written atomically. A case is complete when its
``_outputs.json`` exists, names the same scan and settings (run, domain, TTA, meshes) and every
output it lists exists with its recorded size; a rerun skips complete cases unless
``overwrite``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from tqdm import tqdm

from jointseg.data.io import (
    SCAN_EXTENSIONS,
    is_dicom_dir,
    scan_extension,
    strip_extension,
    write_image,
)
from jointseg.inference.backends import load_backend
from jointseg.inference.formats import case_formats, check_formats, run_algorithm, write_formats
from jointseg.inference.label_tables import label_entries, write_label_tables
from jointseg.inference.measurements import (
    csv_rows,
    measure_labels,
    measurements_document,
    update_measurements_csv,
)
from jointseg.inference.meshes import MESH_FORMATS, Geometry, label_meshes, write_mesh
from jointseg.inference.postprocess import Postprocessing
from jointseg.inference.predictor import InputError, Prediction, Predictor
from jointseg.inference.preview import render_preview
from jointseg.inference.slices import load_scan
from jointseg.recognition.decision import DomainRecognitionError
from jointseg.utils.atomic import (
    DiskFullError,
    atomic_write_bytes,
    atomic_write_json,
    remove_temporaries,
)
from jointseg.utils.faults import fault_point

logger = logging.getLogger(__name__)

MEASUREMENTS_CSV = "measurements.csv"
OUTPUTS_SUFFIX = "_outputs.json"


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
    backend: str = "torch",  # or "onnxruntime": inference/backends.py
    onnx: Path | None = None,  # the ONNX export folder (default RUN/onnx)
) -> list[CaseResult]:
    """Predict every scan of ``input`` into ``out``; see the module docstring for the outputs.

    Label maps are postprocessed as the run's ``postprocessing.json`` says (not at all without
    it, or with ``postprocess=False``) before anything is measured or meshed. Scans whose outputs
    are complete are skipped unless ``overwrite``. A scan that fails is reported and skipped; the
    others are still predicted, then a :class:`PredictionError` lists the failures. A single
    scan's failure raises its own error.
    """
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    scans = find_scans(input)
    _check_unique_cases(scans)
    chosen = check_formats(formats, scans)
    predictor = Predictor.from_run(run, device=device, batch_size=batch_size, tta=tta)
    predictor.backend = load_backend(backend, predictor, onnx, threads, device)
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
            tqdm.write(f"[predict] {case}: outputs complete, skipped (--overwrite redoes it)")
            results.append(result)
            continue
        try:
            image = load_scan(scan)
            prediction = postprocess_prediction(postprocessing, predictor.predict(image, domain))
            result.domain, result.confidence = prediction.domain, prediction.confidence
            extra = write_formats(  # the label map in other formats (--format)
                case_formats(chosen, scan), scan, prediction, out, case, algorithm
            )
            try:
                written = write_case(image, prediction, out, case, output_extension(scan), meshes)
            except BaseException:
                _remove(extra, out / case)
                raise
            result.outputs = written + extra
            _write_outputs_record(out, case, scan, settings, result)
            fault_point("predict.case")
        except (KeyboardInterrupt, SystemExit, DiskFullError):
            raise  # a full disk fails every later scan too
        except Exception as error:  # reported per scan; the others go on
            if len(scans) == 1:
                if isinstance(error, (InputError, DomainRecognitionError)):
                    raise type(error)(f"{scan}: {_reason(error, scan)}") from None
                raise
            result.error = _reason(error, scan)
            tqdm.write(f"[predict] {case}: FAILED - {result.error}")
        else:
            how = "" if result.confidence is None else f" (confidence {result.confidence:.2f})"
            tqdm.write(f"[predict] {case}: {result.domain}{how} -> {result.outputs[0]}")
        results.append(result)
    failed = [r for r in results if r.error]
    if failed:
        lines = [f"{len(failed)} of {len(results)} scans failed:"]
        lines += [f"  - {r.source}: {r.error}" for r in failed]
        raise PredictionError("\n".join(lines))
    return results


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


def _outputs_record_path(out: Path, case: str) -> Path:
    return out / f"{case}{OUTPUTS_SUFFIX}"


def _write_outputs_record(
    out: Path, case: str, scan: Path, settings: dict, result: CaseResult
) -> None:
    record = {
        "case": case,
        "source": str(scan.resolve()),
        "settings": settings,
        "domain": result.domain,
        "confidence": result.confidence,
        "outputs": [
            {"path": p.relative_to(out).as_posix(), "bytes": p.stat().st_size}
            for p in result.outputs
        ],
    }
    atomic_write_json(_outputs_record_path(out, case), record)


def completed_outputs(
    out: Path, case: str, scan: Path, settings: dict
) -> tuple[str | None, float | None, list[Path]] | None:
    """(domain, confidence, outputs) of a case predicted completely with these settings, or
    None (no record, other scan or settings, an output missing or of another size)."""
    try:
        record = json.loads(_outputs_record_path(out, case).read_text(encoding="utf-8"))
        if record["source"] != str(scan.resolve()) or record["settings"] != settings:
            return None
        outputs = []
        for item in record["outputs"]:
            path = out / item["path"]
            if not path.is_file() or path.stat().st_size != item["bytes"]:
                return None
            outputs.append(path)
        return record["domain"], record["confidence"], outputs
    except (OSError, ValueError, KeyError, TypeError):
        return None


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


def write_case(
    image: sitk.Image,
    prediction: Prediction,
    out: Path,
    case: str,
    extension: str = ".nii.gz",
    meshes: bool = True,
) -> list[Path]:
    """Compute, then write every output of one case; returns the paths, label map first."""
    labels = sitk.GetArrayViewFromImage(prediction.label_map)
    geometry = Geometry.of(prediction.label_map)
    structures = prediction.structures
    surfaces = label_meshes(labels, structures, geometry) if meshes else {}
    items = measure_labels(labels, structures, geometry, surfaces)
    document = measurements_document(case, prediction.domain, prediction.confidence, items)
    document["seconds"] = round(prediction.seconds, 3)
    document["postprocessing"] = prediction.details.get("postprocessing")
    if prediction.decision is not None:
        document["domain_scores"] = {
            s.name: {
                "distance": round(s.distance, 5),
                "refusal_distance": round(s.refusal, 5),
                "distance_is_lower_bound": not s.complete,
                "confidence": round(s.confidence, 4),
            }
            for s in prediction.decision.scores
        }
        document["refusal_threshold"] = round(prediction.decision.threshold, 5)
    title = f"{case}: {prediction.domain}"
    if prediction.confidence is not None:
        title += f" (confidence {prediction.confidence:.2f})"
    png = render_preview(image, np.asarray(labels), label_entries(structures), surfaces, title)

    written: list[Path] = []
    mesh_dir = out / case
    with contextlib.suppress(FileNotFoundError):  # the case is incomplete until rewritten
        _outputs_record_path(out, case).unlink()
    try:
        seg = out / f"{case}_seg{extension}"
        write_image(prediction.label_map, seg)
        written.append(seg)
        written += write_label_tables(out, case, structures, prediction.domain)
        for name, mesh in surfaces.items():
            for kind in MESH_FORMATS:
                written.append(write_mesh(mesh, mesh_dir / f"{_safe(name)}.{kind}"))
        path = out / f"{case}_measurements.json"
        atomic_write_json(path, document)
        written.append(path)
        path = out / f"{case}_preview.png"
        atomic_write_bytes(path, png)
        written.append(path)
        update_measurements_csv(
            out / MEASUREMENTS_CSV, case, csv_rows(case, prediction.domain, items)
        )
    except BaseException:
        _remove(written, mesh_dir)
        raise
    _remove_stale_meshes(mesh_dir, written)
    return written


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "structure"


def _remove(paths: list[Path], mesh_dir: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if mesh_dir.is_dir() and not any(mesh_dir.iterdir()):
        shutil.rmtree(mesh_dir, ignore_errors=True)


def _remove_stale_meshes(mesh_dir: Path, written: list[Path]) -> None:
    """Meshes an earlier prediction of the case left for structures not found this time."""
    if not mesh_dir.is_dir():
        return
    for path in mesh_dir.iterdir():
        if path.suffix.lstrip(".") in MESH_FORMATS and path not in written:
            path.unlink()


__all__ = [
    "CaseResult",
    "PredictionError",
    "case_name",
    "completed_outputs",
    "find_scans",
    "output_extension",
    "postprocess_prediction",
    "predict_path",
    "write_case",
]
