"""Label maps in the formats clinical and research tools open, beside the label map itself.

``--format`` (repeatable) names them; the label map (NIfTI for a DICOM series, else the scan's
own format) and its label tables are always written::

    nifti       nothing more (the label map alone; turns off the DICOM series' default)
    dicom-seg   OUT/<case>_seg.dcm      DICOM Segmentation referencing the source series
                                        (default for a DICOM series input)
    seg.nrrd    OUT/<case>.seg.nrrd     3D Slicer segmentation, named and coloured segments

DICOM-SEG needs the source DICOM instances: asked for scans that are not DICOM series, it is
written for the series among them, and refused when there is none. Asked for, a series that
cannot carry one (no Frame of Reference, slices off the label map's grid) fails its scan;
written by default, it is skipped with a warning.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from jointseg.inference.dicom_seg import Algorithm, DicomSegError, write_dicom_seg
from jointseg.inference.onnx_manifest import run_identifier, weights_digests
from jointseg.inference.predictor import Prediction
from jointseg.inference.slicer_seg import write_slicer_segmentation
from jointseg.runs import RunInfo

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


@dataclass(frozen=True)
class CaseFormat:
    """A format to write for one scan; one that is not ``required`` (the DICOM series' default
    DICOM-SEG) is skipped with a warning when the series cannot carry it."""

    kind: str
    required: bool = True


def case_formats(formats: Sequence[str] | None, scan: Path) -> tuple[CaseFormat, ...]:
    """The formats written beside one scan's label map."""
    if formats is None:
        return (CaseFormat("dicom-seg", required=False),) if scan.is_dir() else ()
    wanted = [f for f in formats if f != "nifti"]
    if "dicom-seg" in wanted and not scan.is_dir():
        logger.info("%s: not a DICOM series; no DICOM-SEG written for it", scan)
        wanted.remove("dicom-seg")
    return tuple(CaseFormat(kind) for kind in wanted)


def format_path(out: Path, case: str, kind: str) -> Path:
    return out / {"dicom-seg": f"{case}_seg.dcm", "seg.nrrd": f"{case}.seg.nrrd"}[kind]


def run_algorithm(run_dir: Path, info: RunInfo) -> Algorithm:
    """The algorithm a DICOM-SEG names for a prediction by ``run_dir`` (its domain is set
    per prediction)."""
    identifier = run_identifier(weights_digests(run_dir, info))
    return Algorithm(Path(run_dir).resolve().name, identifier, "", info.scheme)


def write_formats(
    formats: Sequence[CaseFormat],
    scan: Path,
    prediction: Prediction,
    out: Path,
    case: str,
    algorithm: Algorithm,
) -> list[Path]:
    """Write the prediction's label map in each of ``formats``; returns the paths (none left
    on failure)."""
    label_map, structures = prediction.label_map, prediction.structures
    algorithm = replace(algorithm, domain=prediction.domain)
    written: list[Path] = []
    try:
        for item in formats:
            path = format_path(out, case, item.kind)
            if item.kind == "dicom-seg":
                try:
                    written.append(write_dicom_seg(scan, label_map, structures, algorithm, path))
                except DicomSegError as error:
                    if item.required:
                        raise
                    logger.warning("%s; no DICOM-SEG written", error)
            elif item.kind == "seg.nrrd":
                written.append(write_slicer_segmentation(label_map, structures, path))
    except BaseException:
        for path in written:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        raise
    return written


__all__ = [
    "OUTPUT_FORMATS",
    "CaseFormat",
    "case_formats",
    "check_formats",
    "format_path",
    "run_algorithm",
    "write_formats",
]
