"""Per-dataset slice cache: memory-mapped .npy arrays keyed by content (docs/preprocessing.md).

A cache folder ``<cache_root>/<dataset folder>/<key>`` holds, per case, the whole-view slices
``images/<case>.npy`` [S, H, W] float32 and ``labels/<case>.npy`` [S, H, W] uint8 (local
classes; H and W differ between cases), and for the dataset ``foreground.npy`` [N] bool (N: the
slices of all cases, in case order), ``locations.npy`` [M, 4] int32 (class, row, y, x: a seeded
sample of every structure's voxels, for foreground-centred patches) and ``meta.json``.
The key hashes the bytes of every image and label file, the preprocessing parameters, the label
mapping and :data:`CACHE_FORMAT_VERSION`. A folder is written under a temporary name and renamed
into place when complete, so a killed build never leaves a half cache behind. ``meta.json``
records the SHA-256 of every array file and of itself; a cache whose files do not match (half
copied, truncated, flipped bits) is rebuilt, never used. One build per cache folder at a time:
processes take ``.locks/<dataset>/<key>.lock`` (``fcntl.flock``) under the cache root, and the
later one reuses the earlier's cache.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from jointseg.config import ExperimentConfig, PreprocessingConfig
from jointseg.data import io as scan_io
from jointseg.data.labels import DomainLabels
from jointseg.data.manifest import Case, DatasetError, list_cases, load_manifest
from jointseg.data.preprocess import InverseInfo, preprocess_case, slice_stack_shape
from jointseg.utils.atomic import DiskFullError, atomic_write_json, is_disk_full
from jointseg.utils.faults import fault_point

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

CACHE_FORMAT_VERSION = 3  # 3: whole-view slices, one file per case, class locations
CACHE_ENV = "JOINTSEG_CACHE"
_HASH_INDEX = "file_hashes.json"
_STALE_SECONDS = 24 * 3600  # temporary folders older than this are left-overs of killed builds
_LABEL_CHUNK = 1 << 22  # voxels per chunk when listing label values
_DATASET_ARRAYS = ("foreground.npy", "locations.npy")
MAX_LOCATIONS = 10_000  # voxel locations kept per structure and case
_KEY_EXCLUDED = {"jobs", "patch_size"}  # parameters that do not change the cached slices

log = logging.getLogger(__name__)


def default_cache_root(data_dir: Path) -> Path:
    """``data_dir/.jointseg_cache``, or the folder named by the ``JOINTSEG_CACHE`` variable."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path(data_dir) / ".jointseg_cache"


class CaseRows:
    """Per-case [S, H, W] arrays under one row numbering (case after case, as in the cache).

    ``rows[i]`` is one slice; ``rows[a:b]`` or ``rows[array]`` are slices of one case (cases
    differ in H and W); ``len(rows)`` counts every slice.
    """

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays
        self.starts = np.cumsum([0] + [len(a) for a in arrays])

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def dtype(self) -> np.dtype:
        return self.arrays[0].dtype

    def locate(self, rows: np.ndarray | int) -> np.ndarray:
        """Case index of each row."""
        rows = np.asarray(rows)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows outside 0..{len(self) - 1}")
        return np.searchsorted(self.starts, rows, side="right") - 1

    def volume_of(self, row: int) -> tuple[np.ndarray, int]:
        """The [S, H, W] array of ``row``'s case and the row's index in it."""
        case = int(self.locate(int(row)))
        return self.arrays[case], int(row) - int(self.starts[case])

    def shapes(self, rows: np.ndarray) -> np.ndarray:
        """[len(rows), 2]: (H, W) of each row's slice."""
        sides = np.asarray([a.shape[1:] for a in self.arrays], dtype=np.int64).reshape(-1, 2)
        return sides[self.locate(np.asarray(rows, dtype=np.int64))]

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:
        if isinstance(key, slice):
            key = np.arange(*key.indices(len(self)))
        if np.ndim(key) == 0:
            array, local = self.volume_of(int(key))
            return array[local]
        rows = np.asarray(key, dtype=np.int64)
        cases = np.unique(self.locate(rows))
        if cases.size != 1:
            raise IndexError("rows of several cases (of different sizes) cannot be stacked")
        return self.arrays[int(cases[0])][rows - self.starts[cases[0]]]


@dataclass
class SliceCache:
    """All whole-view slices of a dataset's cases; arrays are read-only memory maps."""

    images: CaseRows
    labels: CaseRows
    case_ids: list[str]
    case_slices: dict[str, tuple[int, int]]
    foreground: np.ndarray
    locations: np.ndarray  # [M, 4] int32: class, row, y, x
    inverse: dict[str, InverseInfo]
    path: Path

    def __len__(self) -> int:
        return len(self.images)

    def rows(self, case_ids: Iterable[str]) -> np.ndarray:
        """Row indices (int64, in the order given) of the slices of ``case_ids``."""
        parts = []
        for case_id in case_ids:
            if case_id not in self.case_slices:
                raise KeyError(f"case {case_id!r} is not in the slice cache at {self.path}")
            parts.append(np.arange(*self.case_slices[case_id], dtype=np.int64))
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def _case_files(case_id: str) -> tuple[str, str]:
    return f"images/{case_id}.npy", f"labels/{case_id}.npy"


def load_slice_cache(folder: Path) -> SliceCache:
    """Open a complete cache folder (arrays memory-mapped read-only)."""
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    cases = meta["cases"]
    arrays: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    for case in cases:
        for names, name in zip(arrays, _case_files(case["case_id"]), strict=True):
            names.append(np.load(folder / name, mmap_mode="r"))
    return SliceCache(
        images=CaseRows(arrays[0]),
        labels=CaseRows(arrays[1]),
        case_ids=[c["case_id"] for c in cases],
        case_slices={c["case_id"]: (int(c["start"]), int(c["stop"])) for c in cases},
        foreground=np.load(folder / "foreground.npy"),
        locations=np.load(folder / "locations.npy"),
        inverse={c["case_id"]: InverseInfo.from_dict(c["inverse"]) for c in cases},
        path=folder,
    )


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_files(paths: list[Path], cache_root: Path) -> list[str]:
    """Content hashes of ``paths``, remembered by path, size, mtime, ctime and inode.

    The index lives in ``cache_root/file_hashes.json``; unchanged files are not read again.
    """
    index_path = cache_root / _HASH_INDEX
    try:
        index: dict[str, Any] = json.loads(index_path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        index = {}
    digests, changed = [], False
    for path in paths:
        stat = path.stat()
        stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
        key = str(path.resolve())
        entry = index.get(key)
        if entry is None or entry.get("stamp") != stamp:
            entry = {"stamp": stamp, "sha256": file_sha256(path)}
            index[key], changed = entry, True
        digests.append(entry["sha256"])
    if changed:
        atomic_write_json(index_path, index, indent=0)
    return digests


def cache_key(
    digests: list[tuple[str, str, str]], labels: DomainLabels, cfg: PreprocessingConfig
) -> str:
    """Key of a cache: (case id, image sha256, label sha256) per case, parameters, labels."""
    payload = {
        "version": CACHE_FORMAT_VERSION,
        "preprocessing": cfg.model_dump(mode="json", exclude=_KEY_EXCLUDED),
        "structures": [[name, value] for name, value in labels.structures.items()],
        "cases": [list(d) for d in digests],
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def label_values(label: sitk.Image) -> np.ndarray:
    """Sorted distinct values of a label image, listed chunk by chunk (no full copy)."""
    flat = sitk.GetArrayViewFromImage(label).reshape(-1)
    found: set = set()
    for start in range(0, flat.size, _LABEL_CHUNK):
        found.update(np.unique(flat[start : start + _LABEL_CHUNK]).tolist())
    return np.asarray(sorted(found))


@dataclass(frozen=True)
class _Task:
    case: Case
    start: int
    stop: int
    folder: Path
    labels: DomainLabels
    cfg: PreprocessingConfig


def class_locations(local: np.ndarray, start: int, case_id: str, classes: int) -> np.ndarray:
    """[M, 4] int32 (class, row, y, x) of up to :data:`MAX_LOCATIONS` voxels per structure of
    a case's label slices [S, H, W] (rows from ``start``); the sample is seeded by the case id."""
    parts = []
    for value in range(1, classes):
        flat = np.flatnonzero(local == value)
        if flat.size > MAX_LOCATIONS:
            rng = np.random.default_rng([zlib.crc32(case_id.encode("utf-8")), value])
            flat = np.sort(rng.choice(flat, MAX_LOCATIONS, replace=False))
        s, y, x = np.unravel_index(flat, local.shape)
        parts.append(np.stack([np.full_like(s, value), s + start, y, x], axis=1))
    found = np.concatenate(parts) if parts else np.zeros((0, 4), dtype=np.int64)
    return found.astype(np.int32).reshape(-1, 4)


def _process(task: _Task) -> tuple[InverseInfo, np.ndarray, np.ndarray]:
    """Preprocess one case into its (temporary) cache files: inverse, foreground, locations."""
    case, labels = task.case, task.labels
    assert case.label is not None
    image = scan_io.read_image(case.image)
    label = scan_io.read_image(case.label)
    allowed = {0, *labels.structures.values()}
    unknown = [v for v in label_values(label).tolist() if v not in allowed]
    if unknown:
        raise DatasetError(
            f"{case.label}: label values {unknown} are not in the dataset.json labels "
            f"{ {'background': 0, **labels.structures} }"
        )
    try:
        result = preprocess_case(image, label, task.cfg)
    except ValueError as error:
        raise DatasetError(f"{case.image}: {error}") from None
    del image, label
    assert result.label is not None
    local = task.labels.local_lookup().astype(np.uint8)[result.label]
    for name, rows in zip(_case_files(case.case_id), (result.image, local), strict=True):
        array = np.load(task.folder / name, mmap_mode="r+")
        if array.shape != rows.shape:
            raise DatasetError(f"{case.image}: header and voxel data disagree on the grid size")
        array[:] = rows
        array.flush()
        del array
    locations = class_locations(local, task.start, case.case_id, labels.num_classes)
    return result.inverse, local.reshape(len(local), -1).any(axis=1), locations


def _init_worker(threads: int) -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _run(tasks: list[_Task], jobs: int, progress: bool, desc: str) -> list[Any]:
    results: list[Any] = [None] * len(tasks)
    with tqdm(total=len(tasks), desc=desc, unit="vol", disable=not progress) as bar:
        if jobs <= 1 or len(tasks) <= 1:
            for i, task in enumerate(tasks):
                results[i] = _process(task)
                fault_point("preprocess.case")
                bar.update()
            return results
        workers = min(jobs, len(tasks))
        threads = max(1, (os.cpu_count() or 1) // workers)
        context = multiprocessing.get_context("spawn")  # safe with torch/ITK threads
        with ProcessPoolExecutor(workers, context, _init_worker, (threads,)) as pool:
            futures = {pool.submit(_process, task): i for i, task in enumerate(tasks)}
            try:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    fault_point("preprocess.case")
                    bar.update()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    return results


def _header_shape(path: Path, cfg: PreprocessingConfig) -> tuple[int, int, int]:
    header = scan_io.read_header(path)
    if header.dimension != 3:
        raise DatasetError(f"{path}: expected a 3D scan, got size {header.size}")
    return slice_stack_shape(header.size, header.spacing, header.direction, cfg)


def _meta_checksum(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def verify_cache(folder: Path) -> str | None:
    """Why the cache folder is not intact (a missing, resized or altered file), or None."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "meta.json is missing"
    except (OSError, ValueError) as error:
        return f"meta.json is unreadable ({error})"
    if not isinstance(meta, dict) or meta.get("checksum") != _meta_checksum(meta):
        return "meta.json does not match its checksum"
    for name, expected in meta.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, {expected['bytes']} were written"
        if file_sha256(path) != expected["sha256"]:
            return f"{name} does not match its SHA-256"
    return None


def _try_load(folder: Path, key: str) -> SliceCache | None:
    """The cache in ``folder`` if it is the one of ``key`` and intact; None otherwise."""
    if not folder.exists():
        return None
    problem = verify_cache(folder)
    if problem is not None:
        log.warning("slice cache %s is damaged (%s); it will be rebuilt", folder, problem)
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        return load_slice_cache(folder) if meta.get("key") == key else None
    except (OSError, ValueError, KeyError):
        return None


@contextlib.contextmanager
def _entry_lock(folder: Path) -> Iterator[None]:
    """Hold ``<cache root>/.locks/<dataset>/<key>.lock`` exclusively: waits for another process
    building the same cache.

    Without ``fcntl``, or where the lock file cannot be created (a read-only cache), no lock.
    """
    handle = None
    if fcntl is not None:
        with contextlib.suppress(OSError):
            lock = folder.parent.parent / ".locks" / folder.parent.name / f"{folder.name}.lock"
            lock.parent.mkdir(parents=True, exist_ok=True)
            handle = open(lock, "a+b")  # noqa: SIM115
    try:
        if handle is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        if handle is not None:
            handle.close()  # releases the lock


def _preallocate(path: Path) -> None:
    """Reserve the disk blocks of a new memory-mapped array: a full disk fails here with
    ENOSPC, not later with SIGBUS in a worker writing into the map."""
    allocate = getattr(os, "posix_fallocate", None)
    if allocate is None:
        return
    fd = os.open(path, os.O_RDWR)
    try:
        allocate(fd, 0, os.fstat(fd).st_size)
    except OSError as error:
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


def _remove_stale(parent: Path, entry: str) -> None:
    """Remove temporary folders of killed builds: this entry's (its lock is held), old others."""
    now = time.time()
    for path in parent.glob(".tmp-*"):
        try:
            mine = path.name.startswith(f".tmp-{entry}-")
            if mine or now - path.stat().st_mtime > _STALE_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def _write(
    folder: Path,
    key: str,
    cases: list[Case],
    digests: list,
    labels: DomainLabels,
    cfg: PreprocessingConfig,
    jobs: int,
    progress: bool,
    desc: str,
) -> None:
    """Build the cache in a temporary folder beside ``folder`` and rename it into place."""
    scan_io.verify_scans(  # every unreadable file listed before anything is written
        path for case in cases for path in (case.image, case.label) if path is not None
    )
    shapes = [_header_shape(case.image, cfg) for case in cases]
    bounds = np.cumsum([0] + [s[0] for s in shapes])
    tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        names: list[str] = []
        for case, shape in zip(cases, shapes, strict=True):
            files = _case_files(case.case_id)
            for name, dtype in zip(files, (np.float32, np.uint8), strict=True):
                np.lib.format.open_memmap(tmp / name, mode="w+", dtype=dtype, shape=shape).flush()
                _preallocate(tmp / name)
            names += files
        tasks = [
            _Task(case, int(bounds[i]), int(bounds[i + 1]), tmp, labels, cfg)
            for i, case in enumerate(cases)
        ]
        results = _run(tasks, jobs, progress, desc)
        foreground = np.concatenate([r[1] for r in results]) if results else np.zeros(0, bool)
        np.save(tmp / "foreground.npy", foreground)
        locations = np.concatenate([r[2] for r in results]) if results else np.zeros((0, 4))
        order = np.lexsort((locations[:, 1], locations[:, 0]))  # by class, then row
        np.save(tmp / "locations.npy", locations[order].astype(np.int32))
        meta = {
            "key": key,
            "version": CACHE_FORMAT_VERSION,
            "structures": labels.structures,
            "preprocessing": cfg.model_dump(mode="json", exclude=_KEY_EXCLUDED),
            "cases": [
                {
                    "case_id": case.case_id,
                    "image": str(case.image),
                    "label": str(case.label),
                    "image_sha256": digest[1],
                    "label_sha256": digest[2],
                    "start": int(bounds[i]),
                    "stop": int(bounds[i + 1]),
                    "shape": list(shapes[i]),
                    "inverse": results[i][0].to_dict(),
                }
                for i, (case, digest) in enumerate(zip(cases, digests, strict=True))
            ],
            "files": {
                name: {"bytes": (tmp / name).stat().st_size, "sha256": file_sha256(tmp / name)}
                for name in [*names, *_DATASET_ARRAYS]
            },
        }
        meta["checksum"] = _meta_checksum(meta)
        atomic_write_json(tmp / "meta.json", meta, indent=1)
        _move_into_place(tmp, folder, key)
    except OSError as error:
        if is_disk_full(error) and not isinstance(error, DiskFullError):
            raise DiskFullError(f"the slice cache {folder}") from error
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(tmp: Path, folder: Path, key: str) -> None:
    if folder.exists():
        if _try_load(folder, key) is not None:
            return  # another process finished the same cache first
        stale = folder.parent / f".tmp-stale-{uuid.uuid4().hex[:8]}"
        os.rename(folder, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, folder)
    except OSError:
        if _try_load(folder, key) is None:
            raise


def _build_or_load(
    dataset_dir: Path,
    cases: list[Case],
    labels: DomainLabels,
    cfg: PreprocessingConfig,
    cache_root: Path | None,
    jobs: int | None,
    progress: bool,
) -> tuple[SliceCache, bool]:
    dataset_dir = Path(dataset_dir)
    root = Path(cache_root) if cache_root is not None else default_cache_root(dataset_dir.parent)
    if not cases:
        raise DatasetError(f"{dataset_dir}: no cases to preprocess")
    unlabeled = [str(c.image) for c in cases if c.label is None]
    if unlabeled:
        raise DatasetError(f"no label file for {', '.join(unlabeled)}")
    paths = [p for case in cases for p in (case.image, case.label)]
    hashes = hash_files(paths, root)
    digests = [(c.case_id, hashes[2 * i], hashes[2 * i + 1]) for i, c in enumerate(cases)]
    key = cache_key(digests, labels, cfg)
    folder = root / dataset_dir.name / key[:32]
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _entry_lock(folder):
        cached = _try_load(folder, key)
        if cached is not None:
            return cached, True
        _remove_stale(folder.parent, folder.name)
        jobs = cfg.jobs if jobs is None else jobs
        _write(folder, key, cases, digests, labels, cfg, jobs, progress, labels.name)
    cache = _try_load(folder, key)
    if cache is None:
        raise RuntimeError(f"{folder}: the slice cache could not be written")
    return cache, False


def build_slice_cache(
    dataset_dir: Path,
    cases: list[Case],
    labels: DomainLabels,
    cfg: PreprocessingConfig,
    cache_root: Path | None = None,
    jobs: int | None = None,
    progress: bool = True,
) -> SliceCache:
    """The slice cache of ``cases``, reused when present, built (in parallel) otherwise.

    ``cache_root`` defaults to :func:`default_cache_root` of the study folder (the dataset's
    parent); ``jobs`` defaults to ``cfg.jobs``. The result does not depend on ``jobs``.
    """
    return _build_or_load(dataset_dir, cases, labels, cfg, cache_root, jobs, progress)[0]


def preprocess_study(
    cfg: ExperimentConfig, data_dir: Path, cache_root: Path | None = None
) -> dict[str, SliceCache]:
    """Slice caches of every dataset of ``cfg`` (training cases), keyed by domain name."""
    data_dir = Path(data_dir)
    root = Path(cache_root) if cache_root is not None else default_cache_root(data_dir)
    caches: dict[str, SliceCache] = {}
    for dataset in cfg.datasets:
        dataset_dir = data_dir / dataset.folder
        labels = DomainLabels(dataset.name, load_manifest(dataset_dir).structures)
        cases = list_cases(dataset_dir, "train")
        if not cases:
            raise DatasetError(f"{dataset_dir}: no training cases in imagesTr")
        began = time.perf_counter()
        cache, reused = _build_or_load(
            dataset_dir, cases, labels, cfg.preprocessing, root, None, progress=True
        )
        seconds = time.perf_counter() - began
        log.info(
            "%s: %d cases, %d slices (%d with foreground), %s in %.1f s: %s",
            dataset.name, len(cases), len(cache), int(cache.foreground.sum()),
            "reused" if reused else "built", seconds, cache.path,
        )  # fmt: skip
        caches[dataset.name] = cache
    return caches


def preprocess_randomized(
    cfg: ExperimentConfig, data_dir: Path, cache_root: Path | None = None
) -> dict[str, SliceCache]:
    """Slice caches of the ``randomized_folder`` of every dataset that has one (its training
    cases), keyed by domain name; none when ``training.randomized_fraction`` is 0.

    A randomized dataset must carry the labels of its domain's dataset.
    """
    if cfg.training.randomized_fraction <= 0:
        return {}
    if all(dataset.randomized_folder is None for dataset in cfg.datasets):
        log.warning("training.randomized_fraction is set but no dataset has a randomized_folder")
        return {}
    data_dir = Path(data_dir)
    root = Path(cache_root) if cache_root is not None else default_cache_root(data_dir)
    caches: dict[str, SliceCache] = {}
    for dataset in cfg.datasets:
        if dataset.randomized_folder is None:
            continue
        folder = data_dir / dataset.randomized_folder
        structures = load_manifest(folder).structures
        expected = load_manifest(data_dir / dataset.folder).structures
        if structures != expected:
            raise DatasetError(
                f"{folder / 'dataset.json'}: labels {structures} differ from those of "
                f"{dataset.folder} ({expected})"
            )
        cases = list_cases(folder, "train")
        if not cases:
            raise DatasetError(f"{folder}: no training cases in imagesTr")
        labels = DomainLabels(dataset.name, structures)
        cache, reused = _build_or_load(folder, cases, labels, cfg.preprocessing, root, None, True)
        log.info(
            "%s (randomized): %d cases, %d slices, %s: %s",
            dataset.name, len(cases), len(cache), "reused" if reused else "built", cache.path,
        )  # fmt: skip
        caches[dataset.name] = cache
    return caches
