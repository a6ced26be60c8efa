"""The writer stage of ``jointseg predict``: one case's outputs, computed, then written.

Per case (see :mod:`jointseg.inference.predict` for the layout): the label map, its label
tables, per-structure meshes, measurements (JSON, and a row in the folder's CSV), a preview,
and last the ``_outputs.json`` record that marks the case complete. A new output format is one
more item in :func:`write_case`'s list. Every file is written atomically; when writing fails,
the case's files written so far are removed.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from jointseg._version import __version__
from jointseg.data.io import write_image
from jointseg.inference.label_tables import label_entries, write_label_tables
from jointseg.inference.measurements import (
    csv_rows,
    measure_labels,
    measurements_document,
    update_measurements_csv,
)
from jointseg.inference.meshes import MESH_FORMATS, Geometry, label_meshes, write_mesh
from jointseg.inference.predictor import Prediction
from jointseg.inference.preview import render_preview
from jointseg.recognition.decision import DomainRecognitionError
from jointseg.utils.atomic import atomic_write_bytes, atomic_write_json
from jointseg.utils.names import safe_name

MEASUREMENTS_CSV = "measurements.csv"
OUTPUTS_SUFFIX = "_outputs.json"


def _outputs_record_path(out: Path, case: str) -> Path:
    return out / f"{case}{OUTPUTS_SUFFIX}"


def write_outputs_record(
    out: Path,
    case: str,
    scan: Path,
    settings: dict,
    domain: str | None,
    confidence: float | None,
    outputs: list[Path],
    refusal: DomainRecognitionError | None = None,
    format_errors: dict[str, str] | None = None,
) -> Path:
    """Write the case's ``_outputs.json``: the jointseg version, scan, settings, domain and
    every output's size; ``format_errors``: each output format that could not be written, with
    the reason. For a scan recognition refused (``refusal``; no outputs): its one-line reason
    (``refused``) and the decision's full evidence (``recognition``); such a record never marks
    the case complete."""
    record = {
        "case": case,
        "jointseg_version": __version__,
        "source": str(scan.resolve()),
        "settings": settings,
        "domain": domain,
        "confidence": confidence,
        "outputs": [
            {"path": p.relative_to(out).as_posix(), "bytes": p.stat().st_size} for p in outputs
        ],
    }
    if format_errors:
        record["format_errors"] = dict(format_errors)
    if refusal is not None:
        record |= {"refused": str(refusal), "recognition": refusal.decision.to_dict()}
    path = _outputs_record_path(out, case)
    atomic_write_json(path, record)
    return path


def completed_outputs(
    out: Path, case: str, scan: Path, settings: dict
) -> tuple[str | None, float | None, list[Path]] | None:
    """(domain, confidence, outputs) of a case predicted completely with these settings, or
    None (no record, a refusal's record, other scan or settings, an output missing or of another
    size, a format asked for in ``settings["formats"]`` that could not be written; the DICOM
    series' default DICOM-SEG is not asked for)."""
    try:
        record = json.loads(_outputs_record_path(out, case).read_text(encoding="utf-8"))
        if record["source"] != str(scan.resolve()) or record["settings"] != settings:
            return None
        if "refused" in record:
            return None
        asked = settings.get("formats")
        if isinstance(asked, list) and set(record.get("format_errors", {})) & set(asked):
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
        evidence = prediction.decision.to_dict()
        document["domain_scores"] = evidence["candidates"]
        document["refusal_threshold"] = evidence["refusal_threshold"]
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
                written.append(
                    write_mesh(mesh, mesh_dir / f"{safe_name(name, 'structure')}.{kind}")
                )
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
        remove_outputs(written, mesh_dir)
        raise
    _remove_stale_meshes(mesh_dir, written)
    return written


def remove_outputs(paths: list[Path], mesh_dir: Path) -> None:
    """Delete ``paths`` (those that exist) and ``mesh_dir`` if that leaves it empty."""
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
