"""Reading and writing scans (NIfTI, NRRD, MHA, DICOM series) through SimpleITK."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from jointseg.utils.atomic import atomic_path

SCAN_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")


class ScanReadError(OSError):
    """A scan that cannot be read; the message names the path and the problem."""


def scan_extension(path: str | os.PathLike[str]) -> str | None:
    """The supported extension of ``path`` (``.nii.gz`` counts as one), or None."""
    name = Path(path).name.lower()
    for ext in SCAN_EXTENSIONS:
        if name.endswith(ext):
            return ext
    return None


def strip_extension(path: str | os.PathLike[str]) -> str:
    """The file name of ``path`` without its scan extension."""
    name = Path(path).name
    ext = scan_extension(path)
    return name[: -len(ext)] if ext else name


def is_dicom_dir(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a folder holding at least one DICOM series."""
    path = Path(path)
    return path.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def read_image(path: str | os.PathLike[str]) -> sitk.Image:
    """Read a scan file or a DICOM series folder, keeping spacing, origin and direction.

    Raises :class:`ScanReadError` naming the path for a missing, unreadable or corrupt scan.
    """
    path = Path(path)
    if not path.exists():
        raise ScanReadError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_dicom_series(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
        raise ScanReadError(
            f"{path}: cannot read the scan (corrupt or unsupported): {first}"
        ) from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ScanReadError(
            f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "a single-channel scan is expected"
        )
    return image


def _read_dicom_series(folder: Path) -> sitk.Image:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ScanReadError(f"{folder}: a folder without any DICOM series")
    if len(series) > 1:
        # Take the largest series; multi-echo or multi-series folders are common.
        series = sorted(
            series,
            key=lambda s: len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s)),
            reverse=True,
        )
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise ScanReadError(f"{folder}: cannot read the DICOM series: {error}") from None


_LOW_SPACE = 1 << 20  # bytes free after a write below which the file is read back


def write_image(image: sitk.Image, path: str | os.PathLike[str], compress: bool = True) -> None:
    """Write ``image`` atomically; the format follows the extension.

    ITK's NIfTI writer truncates a file silently when the disk fills up; when little space is
    left after the write, the file is read back and compared, and a damaged one raises
    :class:`jointseg.utils.atomic.DiskFullError` (the previous file stays).
    """
    if scan_extension(path) is None:
        raise ValueError(f"{path}: unsupported extension, use one of {SCAN_EXTENSIONS}")
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
        if shutil.disk_usage(tmp.parent).free < _LOW_SPACE:
            _check_written(tmp, image)


def _check_written(path: Path, image: sitk.Image) -> None:
    try:
        written = sitk.ReadImage(str(path))
        ok = written.GetSize() == image.GetSize() and np.array_equal(
            sitk.GetArrayViewFromImage(written), sitk.GetArrayViewFromImage(image)
        )
    except RuntimeError:
        ok = False
    if not ok:
        raise OSError(errno.ENOSPC, "no space left on device", str(path))


def array_to_image(
    array: np.ndarray,
    reference: sitk.Image | None = None,
    *,
    spacing=None,
    origin=None,
    direction=None,
) -> sitk.Image:
    """Wrap a z,y,x ``array`` as an image with the geometry of ``reference`` (or the given one)."""
    image = sitk.GetImageFromArray(array)
    if reference is not None:
        image.CopyInformation(reference)
    if spacing is not None:
        image.SetSpacing(tuple(float(s) for s in spacing))
    if origin is not None:
        image.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        image.SetDirection(tuple(float(d) for d in direction))
    return image


def geometry_mismatches(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-3) -> list[str]:
    """Human-readable differences in size, spacing, origin and direction between two images."""
    problems: list[str] = []
    if a.GetSize() != b.GetSize():
        problems.append(f"size {a.GetSize()} vs {b.GetSize()}")
    checks = (
        ("spacing", a.GetSpacing(), b.GetSpacing(), tolerance * max(1.0, max(a.GetSpacing()))),
        ("origin", a.GetOrigin(), b.GetOrigin(), tolerance * max(1.0, max(a.GetSpacing()))),
        ("direction", a.GetDirection(), b.GetDirection(), tolerance),
    )
    for name, va, vb, tol in checks:
        if np.max(np.abs(np.asarray(va) - np.asarray(vb))) > tol:
            problems.append(f"{name} {_fmt(va)} vs {_fmt(vb)}")
    return problems


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
