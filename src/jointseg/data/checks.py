"""Validation of datasets on disk: every problem of every case, reported at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from jointseg.data.io import ScanReadError, count_nonfinite, geometry_mismatches, read_image
from jointseg.data.manifest import (
    Case,
    DatasetError,
    DatasetManifest,
    list_cases,
    load_manifest,
    orphan_labels,
)
from jointseg.data.scan_checks import constant_problem, dimension_problem, nonfinite_problem


@dataclass(frozen=True)
class Problem:
    """One finding about one file."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class CheckReport:
    """All errors and warnings of the checked datasets."""

    datasets: list[Path] = field(default_factory=list)
    cases: int = 0
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def merge(self, other: CheckReport) -> None:
        self.datasets += other.datasets
        self.cases += other.cases
        self.errors += other.errors
        self.warnings += other.warnings


def dataset_folders(path: str | Path) -> list[Path]:
    """``path`` itself if it is a dataset folder, else its sub-folders holding a dataset.json."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: not a folder")
    if (path / "dataset.json").is_file():
        return [path]
    found = sorted(p for p in path.iterdir() if (p / "dataset.json").is_file())
    if not found:
        raise DatasetError(f"{path}: no dataset.json here nor in any sub-folder")
    return found


def check_path(path: str | Path, progress: bool = True) -> CheckReport:
    """Check a dataset folder, or every dataset folder of a study folder."""
    report = CheckReport()
    for folder in dataset_folders(path):
        report.merge(check_dataset(folder, progress=progress))
    return report


def check_dataset(dataset_dir: str | Path, progress: bool = True) -> CheckReport:
    """Validate every case of a dataset (training and test splits)."""
    dataset_dir = Path(dataset_dir)
    report = CheckReport(datasets=[dataset_dir])
    try:
        manifest = load_manifest(dataset_dir)
    except DatasetError as error:
        report.errors.append(Problem(dataset_dir / "dataset.json", str(error).split(": ", 1)[-1]))
        return report
    seen_values: set[int] = set()
    train_cases = list_cases(dataset_dir, "train")
    if not train_cases:
        report.errors.append(Problem(dataset_dir / "imagesTr", "no training images found"))
    elif len(train_cases) != manifest.numTraining:
        report.warnings.append(
            Problem(
                dataset_dir / "dataset.json",
                f"numTraining is {manifest.numTraining} but imagesTr holds "
                f"{len(train_cases)} cases",
            )
        )
    cases = train_cases + list_cases(dataset_dir, "test")
    for split in ("train", "test"):
        for orphan in orphan_labels(dataset_dir, split):
            report.errors.append(Problem(orphan, "label map without a matching image"))
    iterator = tqdm(cases, desc=f"check {dataset_dir.name}", disable=not progress, leave=False)
    for case in iterator:
        report.cases += 1
        seen_values |= _check_case(case, manifest, report)
    for name, value in manifest.structures.items():
        if value not in seen_values and train_cases:
            report.warnings.append(
                Problem(dataset_dir / "dataset.json", f"label {name}={value} never occurs")
            )
    return report


def _check_case(case: Case, manifest: DatasetManifest, report: CheckReport) -> set[int]:
    image = _read(case.image, report)
    if case.label is None:
        if case.split == "train":
            report.errors.append(Problem(case.image, "training image without a label map"))
        return set()
    label = _read(case.label, report)
    if image is not None:
        _check_intensities(case.image, image, report)
    if label is None:
        return set()
    if image is not None:
        mismatches = geometry_mismatches(image, label)
        if mismatches:
            report.errors.append(
                Problem(case.label, "geometry differs from its image: " + "; ".join(mismatches))
            )
    return _check_labels(case.label, label, manifest, report)


def _read(path: Path, report: CheckReport) -> sitk.Image | None:
    try:
        image = read_image(path)
    except ScanReadError as error:
        report.errors.append(Problem(path, str(error).split(": ", 1)[-1]))
        return None
    problem = dimension_problem(image.GetSize())  # components: refused by read_image
    if problem:
        report.errors.append(Problem(path, problem))
        return None
    return image


def _check_intensities(path: Path, image: sitk.Image, report: CheckReport) -> None:
    voxels = image.GetNumberOfPixels()
    problem = nonfinite_problem(count_nonfinite(path, image), voxels) or constant_problem(image)
    if problem:
        report.errors.append(Problem(path, problem))


def _check_labels(
    path: Path, label: sitk.Image, manifest: DatasetManifest, report: CheckReport
) -> set[int]:
    array = sitk.GetArrayViewFromImage(label)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            report.errors.append(Problem(path, "label map holds non-integer values"))
            return set()
    values = {int(v) for v in np.unique(array)}
    undeclared = sorted(values - set(manifest.labels.values()))
    if undeclared:
        declared = ", ".join(f"{k}={v}" for k, v in manifest.labels.items())
        report.errors.append(
            Problem(
                path, f"label values {undeclared} are not declared in dataset.json ({declared})"
            )
        )
    if values <= {0}:
        report.errors.append(Problem(path, "empty label map (no structure labelled)"))
    return values


def format_report(report: CheckReport) -> str:
    """A human-readable summary: every error and warning, one per line."""
    lines = [
        f"checked {len(report.datasets)} dataset(s), {report.cases} case(s): "
        f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)"
    ]
    lines += [f"ERROR   {p}" for p in report.errors]
    lines += [f"WARNING {p}" for p in report.warnings]
    return "\n".join(lines)
