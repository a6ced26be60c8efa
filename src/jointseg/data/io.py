"""Reading and writing scans (NIfTI, NRRD, MHA, DICOM series) through SimpleITK.

Every scan and label map is read through :func:`read_image` (voxels) or :func:`read_header`
(geometry only). Before ITK sees a file its integrity is verified, because ITK fills a file that
is cut short with zeros instead of failing: a gzip stream is read through once (its CRC and
length checked), a NIfTI header's voxel count is compared with the bytes the file holds, and a
DICOM series is checked for missing and duplicated slices. Every failure is a
:class:`ScanReadError` whose message names the file and the problem.

A multi-echo DICOM series (one series holding every slice once per echo: T2 mapping, multi-echo
spin echo) is read one echo at a time: ``echo=1`` is the first (the lowest Echo Numbers, then
Echo Time); without ``echo`` such a series is refused with the echoes it holds. A folder holding
several series is read one series at a time: ``series=UID`` picks one, else the largest is read
and a warning lists the others (``jointseg convert FOLDER OUT --series UID`` reads another).
"""

from __future__ import annotations

import errno
import gzip
import logging
import math
import os
import re
import shutil
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from jointseg.data.scan_checks import components_problem
from jointseg.utils.atomic import atomic_path

SCAN_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 22  # bytes per read when verifying a compressed stream
_POSITION_TAG = "0020|0032"  # DICOM Image Position (Patient)
_ORIENTATION_TAG = "0020|0037"  # DICOM Image Orientation (Patient)
_PARALLEL_TOLERANCE = 1e-3  # direction cosines of one series' slices agree to this
_ECHO_TAGS = ("EchoNumbers", "EchoTime")  # (0018,0086), (0018,0081)

logger = logging.getLogger(__name__)


class ScanReadError(OSError):
    """A scan that cannot be read; the message names the path and the problem."""


@dataclass(frozen=True)
class ScanHeader:
    """What a scan's header says, read without its voxels."""

    path: Path
    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    components: int
    pixel_type: str

    @property
    def dimension(self) -> int:
        return len(self.size)

    @property
    def voxels(self) -> int:
        return math.prod(self.size)


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


# ------------------------------------------------------------------------------------ reading
def read_image(
    path: str | os.PathLike[str], echo: int | None = None, series: str | None = None
) -> sitk.Image:
    """Read a scan file or a DICOM series folder, keeping spacing, origin and direction.

    The file is verified first (:func:`verify_scan`). Raises :class:`ScanReadError` naming the
    path for a missing, empty, cut short, corrupt, multi-channel or unsupported scan. ``echo``
    (1-based) picks one echo of a multi-echo DICOM series, which is refused without it;
    ``series`` (a Series Instance UID) one series of a folder holding several (default: the
    largest, with a warning listing the others: :func:`dicom_series_files`).
    """
    path = Path(path)
    for asked, value, where in (
        ("echo", echo, "echoes are chosen in a DICOM series folder"),
        ("series", series, "series are chosen in a folder of DICOM series"),
    ):
        if value is not None and path.is_file():
            raise ScanReadError(f"{path}: {asked} {value} asked of a file; {where}")
    verify_scan(path, echo, series)
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(dicom_series_files(path, echo, series))
        try:
            return reader.Execute()
        except RuntimeError as error:
            raise ScanReadError(
                f"{path}: cannot read the DICOM series: {_itk_reason(error)}"
            ) from None
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ScanReadError(
            f"{path}: cannot read the scan (corrupt or unsupported): {_itk_reason(error)}"
        ) from None
    _check_components(path, image.GetNumberOfComponentsPerPixel())
    return image


def read_header(
    path: str | os.PathLike[str], echo: int | None = None, series: str | None = None
) -> ScanHeader:
    """The header of a scan file or DICOM series folder (of one ``echo`` of a multi-echo
    series, of one ``series`` of the folder), without reading its voxels.

    Cheap checks only (an empty file, a NIfTI header promising more voxels than an uncompressed
    file holds); :func:`verify_scan` checks a compressed stream through.
    """
    path = Path(path)
    _check_exists(path)
    if path.is_dir():
        files = dicom_series_files(path, echo, series)
        header = _file_header(Path(files[0]), what="DICOM file")
        return ScanHeader(
            path, (*header.size[:2], len(files)), header.spacing, header.origin,
            header.direction, header.components, header.pixel_type,
        )  # fmt: skip
    if not _is_gzip(path):
        _check_nifti_length(path, _head(path), path.stat().st_size)
    header = _file_header(path)
    _check_components(path, header.components)
    return header


def verify_scan(
    path: str | os.PathLike[str], echo: int | None = None, series: str | None = None
) -> ScanHeader:
    """Check that a scan's data is whole, without decoding it into an image; its header.

    A gzip stream is read through (CRC and length), a NIfTI header's voxel count is compared
    with the data present, and a DICOM series (one ``echo`` of a multi-echo one) is checked
    for missing or duplicated slices.
    """
    path = Path(path)
    header = read_header(path, echo, series)
    if path.is_dir():
        _check_slice_positions(path, dicom_series_files(path, echo, series))
    elif _is_gzip(path):
        head, length = _gzip_contents(path)
        _check_nifti_length(path, head, length)
    return header


def verify_scans(paths: Iterable[str | os.PathLike[str]]) -> None:
    """:func:`verify_scan` every path; one :class:`ScanReadError` lists every problem found."""
    problems = []
    for path in paths:
        try:
            verify_scan(path)
        except ScanReadError as error:
            problems.append(str(error))
    if len(problems) == 1:
        raise ScanReadError(problems[0])
    if problems:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        raise ScanReadError(f"{len(problems)} unreadable files:\n{listed}")


def count_nonfinite(path: str | os.PathLike[str], image: sitk.Image) -> int:
    """NaN/inf voxels of a scan read by :func:`read_image`.

    ITK's NIfTI reader turns NaNs into zeros, so a floating-point NIfTI file's raw voxels are
    counted from the file itself.
    """
    if scan_extension(path) in (".nii", ".nii.gz"):
        import nibabel

        nifti = nibabel.load(str(path))
        if not np.issubdtype(nifti.get_data_dtype(), np.floating):
            return 0
        return int(np.count_nonzero(~np.isfinite(np.asarray(nifti.dataobj))))
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating):
        return int(np.count_nonzero(~np.isfinite(array)))
    return 0


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise ScanReadError(f"{path}: no such file or folder")
    if path.is_file() and path.stat().st_size == 0:
        raise ScanReadError(f"{path}: an empty file (0 bytes); an interrupted copy?")


def _check_components(path: Path, components: int) -> None:
    problem = components_problem(components)
    if problem:
        raise ScanReadError(f"{path}: {problem}")


def _file_header(path: Path, what: str = "scan") -> ScanHeader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        if path.is_file() and _is_gzip(path):
            _gzip_contents(path)  # a damaged stream: say so rather than ITK's guess
        raise ScanReadError(
            f"{path}: cannot read the {what} (corrupt or unsupported): {_itk_reason(error)}"
        ) from None
    return ScanHeader(
        path=path,
        size=tuple(int(s) for s in reader.GetSize()),
        spacing=tuple(reader.GetSpacing()),
        origin=tuple(reader.GetOrigin()),
        direction=tuple(reader.GetDirection()),
        components=int(reader.GetNumberOfComponents()),
        pixel_type=sitk.GetPixelIDValueAsString(reader.GetPixelID()),
    )


def _itk_reason(error: RuntimeError) -> str:
    """The last meaningful line of an ITK error, without source locations and object addresses."""
    lines = [line.strip() for line in str(error).strip().splitlines()]
    lines = [
        line
        for line in lines
        if line
        and not line.startswith("Exception thrown in SimpleITK")
        and line != "Reason: No such file or directory"
    ]
    text = lines[-1] if lines else "unknown error"
    text = re.sub(r"^(sitk::ERROR|ITK ERROR): (\w+\(0x[0-9a-f]+\): )?", "", text)
    text = re.sub(r"^\[\w+\] \w+: ", "", text)
    if "Unable to determine ImageIO reader" in text:
        return "no reader recognizes it (unknown format, or a damaged header)"
    if "File cannot be read" in text:
        return "the file is damaged or cut short"
    return text


# ------------------------------------------------------------------------ compressed streams
def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == _GZIP_MAGIC


def _head(path: Path, size: int = 540) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(size)


def _gzip_contents(path: Path) -> tuple[bytes, int]:
    """The first bytes and the total length of a gzip file's contents, read through once."""
    head, length = b"", 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(_CHUNK):
                if len(head) < 540:
                    head += chunk[: 540 - len(head)]
                length += len(chunk)
    except EOFError:
        raise ScanReadError(
            f"{path}: the file is cut short: its compressed data ends before the end of "
            "the stream (an interrupted copy?)"
        ) from None
    except gzip.BadGzipFile as error:
        raise ScanReadError(
            f"{path}: corrupt compressed data: {error} (the file was damaged)"
        ) from None
    except zlib.error as error:
        raise ScanReadError(
            f"{path}: corrupt compressed data: {error} (the file was damaged)"
        ) from None
    return head, length


def _nifti_layout(head: bytes) -> tuple[int, int, tuple[int, ...]] | None:
    """(data offset, data bytes, dims) of a single-file NIfTI-1/2 header; None if not one."""
    for order in "<>":
        if len(head) >= 348 and struct.unpack_from(order + "i", head)[0] == 348:
            if head[344:348] != b"n+1\x00":
                return None
            dims = struct.unpack_from(order + "8h", head, 40)
            bitpix = struct.unpack_from(order + "h", head, 72)[0]
            offset = int(struct.unpack_from(order + "f", head, 108)[0])
            break
        if len(head) >= 540 and struct.unpack_from(order + "i", head)[0] == 540:
            if head[4:8] != b"n+2\x00":
                return None
            dims = struct.unpack_from(order + "8q", head, 16)
            bitpix = struct.unpack_from(order + "h", head, 14)[0]
            offset = struct.unpack_from(order + "q", head, 168)[0]
            break
    else:
        return None
    rank = dims[0]
    if not 1 <= rank <= 7 or bitpix <= 0 or any(d < 1 for d in dims[1 : rank + 1]):
        return None  # a damaged header: ITK's reader names it
    shape = tuple(int(d) for d in dims[1 : rank + 1])
    return offset, math.prod(shape) * bitpix // 8, shape


def _check_nifti_length(path: Path, head: bytes, available: int) -> None:
    layout = _nifti_layout(head)
    if layout is None:
        return
    offset, need, shape = layout
    if offset + need > available:
        held = max(0, available - offset)
        raise ScanReadError(
            f"{path}: the header promises {'x'.join(map(str, shape))} voxels "
            f"({need} bytes) but the file holds only {held} bytes of voxel data "
            f"({100 * held / need:.0f}%): cut short, or a wrong header"
        )


# ----------------------------------------------------------------------------------- DICOM
@dataclass(frozen=True)
class DicomSeries:
    """One series of a DICOM folder: its Series Instance UID, files, and what its first file
    calls it (Series Number and Series Description; "" when absent)."""

    uid: str
    files: tuple[str, ...]
    description: str

    def summary(self) -> str:
        named = f", {self.description}" if self.description else ""
        return f"{self.uid} ({len(self.files)} files{named})"


def dicom_series(folder: Path) -> list[DicomSeries]:
    """Every series of a DICOM folder, the largest first; :class:`ScanReadError` for none."""
    uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not uids:
        raise ScanReadError(f"{folder}: a folder without any DICOM series")
    found = []
    for uid in uids:
        files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        found.append(DicomSeries(uid, files, _series_description(files[0]) if files else ""))
    return sorted(found, key=lambda s: -len(s.files))


def _series_description(name: str) -> str:
    import pydicom

    try:
        ds = pydicom.dcmread(name, stop_before_pixels=True,
                             specific_tags=["SeriesNumber", "SeriesDescription"])  # fmt: skip
    except Exception:  # an unreadable header is named when the series is read
        return ""
    parts = [str(ds.get(tag, "") or "").strip() for tag in ("SeriesNumber", "SeriesDescription")]
    return " ".join(p for p in parts if p)


_WARNED_FOLDERS: set[tuple[str, tuple[str, ...]]] = set()


def dicom_series_files(
    folder: Path, echo: int | None = None, series: str | None = None
) -> list[str]:
    """The files of one series of a DICOM folder: ``series`` (a Series Instance UID), else the
    largest, with a warning (once per folder) listing every series and how to pick another. Of
    a multi-echo series, those of ``echo`` (1-based, :func:`dicom_echoes` order), which it needs.
    """
    found = dicom_series(folder)
    listed = "; ".join(s.summary() for s in found)
    if series is not None:
        picked = next((s for s in found if s.uid == series), None)
        if picked is None:
            raise ScanReadError(f"{folder}: no series {series} here; it holds {listed}")
    else:
        picked = found[0]
        key = (str(Path(folder).resolve()), tuple(s.uid for s in found))
        if len(found) > 1 and key not in _WARNED_FOLDERS:
            _WARNED_FOLDERS.add(key)
            logger.warning(
                "%s: %d DICOM series; reading the largest, %s. The others: %s. Read another "
                "with `jointseg convert %s OUT.nii.gz --series UID`", folder, len(found),
                picked.summary(), "; ".join(s.summary() for s in found[1:]), folder,
            )  # fmt: skip
    chosen = list(picked.files)
    echoes = dicom_echoes(chosen)
    if echo is None and len(echoes) > 1:
        listed = ", ".join(_echo_name(k, key) for k, key in enumerate(echoes, 1))
        raise ScanReadError(
            f"{folder}: a multi-echo series: {len(echoes)} echoes of "
            f"{len(chosen) // len(echoes)} slices each in one series ({listed}); read one echo "
            "(`jointseg convert FOLDER OUT.nii.gz --echo 1` saves the first as a NIfTI scan)"
        )
    if echo is None:
        return chosen
    if not 1 <= echo <= len(echoes):
        raise ScanReadError(
            f"{folder}: no echo {echo}: the series holds {len(echoes)} echo"
            f"{'es' if len(echoes) > 1 else ''}"
        )
    return echoes[list(echoes)[echo - 1]]


EchoKey = tuple[float, float]  # (Echo Numbers, Echo Time in ms); inf where a tag is absent


def dicom_echoes(files: list[str]) -> dict[EchoKey, list[str]]:
    """The files of a DICOM series grouped by echo, the first echo first (lowest Echo Numbers,
    then Echo Time), each group in the series' order. A series where some files carry an echo
    tag and others do not is refused, naming a file without it."""
    import pydicom

    groups: dict[EchoKey, list[str]] = {}
    tagged = {}
    for name in files:
        try:
            ds = pydicom.dcmread(name, stop_before_pixels=True, specific_tags=list(_ECHO_TAGS))
        except Exception as error:  # pydicom raises many kinds on damaged files
            raise ScanReadError(f"{name}: cannot read the DICOM header: {error}") from None
        values = [ds.get(tag) for tag in _ECHO_TAGS]
        tagged[name] = any(v not in (None, "") for v in values)
        key = tuple(_echo_value(v) for v in values)
        groups.setdefault(key, []).append(name)  # type: ignore[arg-type]
    if len(set(tagged.values())) > 1:
        bare = next(name for name, has in tagged.items() if not has)
        raise ScanReadError(
            f"{bare}: no Echo Numbers or Echo Time, while other files of its series "
            f"({Path(bare).parent}) have them: a series that mixes echoes cannot be split"
        )
    return dict(sorted(groups.items()))


def _echo_value(value: object) -> float:
    if value in (None, ""):
        return math.inf
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = list(value)[0]  # type: ignore[arg-type]
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.inf


def _echo_name(index: int, key: EchoKey) -> str:
    number, time = key
    parts = [f"echo {index}"]
    if math.isfinite(time):
        parts.append(f"TE {time:g} ms")
    if math.isfinite(number) and number != index:
        parts.append(f"Echo Numbers {number:g}")
    return " ".join(parts)


def _check_slice_positions(folder: Path, files: list[str]) -> None:
    """Refuse a series with two slices at one position, a gap where slices are missing, or
    slices that are not parallel."""
    if len(files) < 3:
        return
    positions, normal = [], None
    reader = sitk.ImageFileReader()
    for name in files:
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            raise ScanReadError(
                f"{name}: cannot read the DICOM file: {_itk_reason(error)}"
            ) from None
        if not reader.HasMetaDataKey(_POSITION_TAG) or not reader.HasMetaDataKey(_ORIENTATION_TAG):
            return  # without positions the reader orders by other means; nothing to compare
        row_col = _numbers(reader.GetMetaData(_ORIENTATION_TAG))
        if len(row_col) != 6:
            return
        if normal is None:
            first, first_row_col = Path(name).name, row_col
            normal = np.cross(row_col[:3], row_col[3:])
        elif np.max(np.abs(row_col - first_row_col)) > _PARALLEL_TOLERANCE:
            raise ScanReadError(
                f"{folder}: the slices are not parallel: {Path(name).name} is oriented "
                f"{_fmt(row_col)}, {first} {_fmt(first_row_col)} (Image Orientation Patient); "
                "a volume needs one orientation for every slice"
            )
        positions.append(float(np.dot(_numbers(reader.GetMetaData(_POSITION_TAG)), normal)))
    order = np.argsort(positions, kind="stable")
    where = np.asarray(positions)[order]
    names = [Path(files[i]).name for i in order]
    steps = np.diff(where)
    step = float(np.median(steps))
    duplicates = [i for i, d in enumerate(steps) if d <= max(1e-3, 1e-3 * step)]
    if duplicates:
        pairs = ", ".join(f"{names[i]} and {names[i + 1]} at {where[i]:.4g} mm" for i in duplicates)
        raise ScanReadError(f"{folder}: duplicated slices: {pairs}")
    uneven = [i for i, d in enumerate(steps) if abs(d - step) > 0.1 * step]
    if uneven:
        gaps = ", ".join(
            f"{steps[i]:.4g} mm between {names[i]} ({where[i]:.4g} mm) and "
            f"{names[i + 1]} ({where[i + 1]:.4g} mm)"
            for i in uneven
        )
        raise ScanReadError(
            f"{folder}: missing slices: the slices are {step:.4g} mm apart, but {gaps}"
        )


def _numbers(text: str) -> np.ndarray:
    return np.asarray([float(v) for v in text.strip().split("\\") if v.strip()])


_LOW_SPACE = 1 << 20  # bytes free after a write below which the file is read back


def convert_scan(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    echo: int | None = None,
    series: str | None = None,
) -> sitk.Image:
    """Read ``source`` (a scan file or DICOM folder; ``echo``, ``series`` as in
    :func:`read_image`) and write it to ``out`` (the format follows the extension, atomically);
    the image written. Spacing, origin and direction are kept: labels drawn on ``out`` fit the
    scan voxel for voxel."""
    image = read_image(source, echo, series)
    if Path(out).resolve() == Path(source).resolve():
        raise ValueError(f"{out}: the output would replace the scan it is read from")
    write_image(image, out)
    return image


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
