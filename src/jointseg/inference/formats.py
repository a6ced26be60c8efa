"""Label maps in the formats clinical and research tools open, beside the label map itself.

``--format`` (repeatable) names them; the label map (NIfTI for a DICOM series, else the scan's
own format) and its label tables are always written::

    nifti       nothing more (the label map alone; turns off the DICOM series' default)
    dicom-seg   OUT/<case>_seg.dcm      DICOM Segmentation referencing the source series
                                        (default for a DICOM series input)
    seg.nrrd    OUT/<case>.seg.nrrd     3D Slicer segmentation, named and coloured segments

DICOM-SEG needs the source DICOM instances: asked for scans that are not DICOM series, it is
written for the series among them, and refused when there is none.

A format that cannot be written (a series without Frame of Reference, say) costs no other
output: the label map and the other formats are written, and the failure is returned with its
reason, for the scan's ``_outputs.json`` (``format_errors``) and a warning.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from jointseg.inference.dicom_seg import Algorithm, write_dicom_seg
from jointseg.inference.onnx_manifest import run_identifier, weights_digests
from jointseg.inference.predictor import Prediction
from jointseg.inference.slicer_seg import write_slicer_segmentation
from jointseg.inference.slices import InputError
from jointseg.runs import RunInfo
from jointseg.utils.atomic import is_disk_full

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("nifti", "dicom-seg", "seg.nrrd")


def check_formats(formats: Sequence[str] | None, scans: Sequence[Path]) -> tuple[str, ...] | None:
    """The formats asked for, checked (None: each scan's default); refuses unknown names and
    DICOM-SEG when no scan is a DICOM series."""
    if formats is None:
        return None
    unknown = [f for f in formats if f not in OUTPUT_FORMATS]
    if unknown:
        raise ValueError(
            f"unknown --format {', '.join(unknown)}; choose from {', '.join(OUTPUT_FORMATS)}"
        )
    if "dicom-seg" in formats and not any(scan.is_dir() for scan in scans):
        names = ", ".join(str(s) for s in scans[:3]) + (" ..." if len(scans) > 3 else "")
        raise ValueError(
            f"--format dicom-seg needs DICOM series as input (the segmentation references "
            f"their slices), but none of {names} is a DICOM series folder"
        )
    return tuple(dict.fromkeys(formats))


def case_formats(formats: Sequence[str] | None, scan: Path) -> tuple[str, ...]:
    """The formats written beside one scan's label map (None: the scan's default, DICOM-SEG
    for a DICOM series)."""
    if formats is None:
        return ("dicom-seg",) if scan.is_dir() else ()
    wanted = [f for f in formats if f != "nifti"]
    if "dicom-seg" in wanted and not scan.is_dir():
        logger.info("%s: not a DICOM series; no DICOM-SEG written for it", scan)
        wanted.remove("dicom-seg")
    return tuple(wanted)


def format_path(out: Path, case: str, kind: str) -> Path:
    return out / {"dicom-seg": f"{case}_seg.dcm", "seg.nrrd": f"{case}.seg.nrrd"}[kind]


def run_algorithm(run_dir: Path, info: RunInfo) -> Algorithm:
    """The algorithm a DICOM-SEG names for a prediction by ``run_dir`` (its domain is set
    per prediction)."""
    identifier = run_identifier(weights_digests(run_dir, info))
    return Algorithm(Path(run_dir).resolve().name, identifier, "", info.scheme)


def write_formats(
    formats: Sequence[str],
    scan: Path,
    prediction: Prediction,
    out: Path,
    case: str,
    algorithm: Algorithm,
) -> tuple[list[Path], dict[str, str]]:
    """Write the prediction's label map in each of ``formats``: the paths written, and each
    format that could not be written with the reason (its file from an earlier prediction of
    the case removed). A full disk or an interrupt removes every path written and is raised."""
    algorithm = replace(algorithm, domain=prediction.domain)
    written: list[Path] = []
    errors: dict[str, str] = {}
    try:
        for kind in formats:
            path = format_path(out, case, kind)
            try:
                written.append(_write_format(kind, scan, prediction, algorithm, path))
            except Exception as error:
                if is_disk_full(error):
                    raise
                if not isinstance(error, InputError):  # not a property of the scan: a defect
                    logger.debug("%s: %s not written", case, kind, exc_info=True)
                errors[kind] = str(error).strip() or type(error).__name__
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
    except BaseException:
        for path in written:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        raise
    return written, errors


def _write_format(
    kind: str, scan: Path, prediction: Prediction, algorithm: Algorithm, path: Path
) -> Path:
    if kind == "dicom-seg":
        return write_dicom_seg(scan, prediction.label_map, prediction.structures, algorithm, path)
    if kind == "seg.nrrd":
        return write_slicer_segmentation(prediction.label_map, prediction.structures, path)
    raise ValueError(f"unknown output format {kind!r}")


__all__ = [
    "OUTPUT_FORMATS",
    "case_formats",
    "check_formats",
    "format_path",
    "run_algorithm",
    "write_formats",
]
