"""Atomic file writes: write to a temporary file in the same folder, then rename.

A crash or a kill at any moment leaves either the old file or the new one, never half a file.
A killed process can leave its temporary file behind (``.<stem>.<pid>-<random>.tmp<suffix>``);
:func:`remove_temporaries` deletes those whose process is gone. A full disk raises
:class:`DiskFullError` naming the file, and the previous file stays as it was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jointseg.utils.faults import fault_point

_TEMPORARY = re.compile(r"^\..*\.(\d+)-[A-Za-z0-9_]{8}\.tmp(\.[^/]*)?$")
_STALE_SECONDS = 24 * 3600  # a temporary this old is a left-over, whatever its process id
_NEARLY_FULL = 1 << 20  # bytes: a writer failing with less free space than this ran out of it
_CHUNK = 1 << 20


class DiskFullError(OSError):
    """No space left on the device while writing a file; the message names the file."""

    def __init__(self, path: str | os.PathLike[str]):
        super().__init__(errno.ENOSPC, f"no space left on device while writing {path}")
        self.filename = str(path)

    def __str__(self) -> str:
        return str(self.strerror)


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or an exception it was raised from) is an ENOSPC/EDQUOT error."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "no space left on device" in str(current).lower():
            return True
        current = current.__cause__ or current.__context__
    return False


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < _NEARLY_FULL
    except OSError:
        return False


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The temporary name keeps the final suffix (e.g. ``.nii.gz``) so that libraries choosing a
    writer by extension pick the right one. On an exception the temporary file is removed; one
    caused by a full disk (also a library's error while less than 1 MiB is free) is raised as
    :class:`DiskFullError`.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(final.suffixes[-2:]) if final.name.endswith(".nii.gz") else final.suffix
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{final.stem}.{os.getpid()}-", suffix=f".tmp{suffix}", dir=final.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual file mode
    try:
        yield tmp
        _fsync_file(tmp)
        fault_point(f"write:{final.name}")
        os.replace(tmp, final)
    except BaseException as error:
        full = isinstance(error, Exception) and (
            is_disk_full(error) or (not isinstance(error, OSError) and _nearly_full(final.parent))
        )
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if full and not isinstance(error, DiskFullError):
            raise DiskFullError(final) from error
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    with contextlib.suppress(OSError), open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_all(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` into ``path`` with ``os.write`` (a short write is continued)."""
    view = memoryview(data)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        while view:
            written = os.write(fd, view[:_CHUNK])
            view = view[written:]
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        write_all(tmp, data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int = 2) -> None:
    """Serialize ``obj`` as JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: the process exists
        return True
    return True


def remove_temporaries(folder: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """Delete the temporary files of atomic writes in ``folder`` left by killed processes.

    A temporary is removed when the process that made it is no longer running on this machine,
    or when it is older than a day; others may be in use. Returns the paths removed.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    candidates = root.rglob(".*.tmp*") if recursive else root.glob(".*.tmp*")
    removed = []
    now = time.time()
    for path in candidates:
        match = _TEMPORARY.match(path.name)
        if match is None or not path.is_file():
            continue
        try:
            stale = now - path.stat().st_mtime > _STALE_SECONDS
            if stale or not _process_alive(int(match.group(1))):
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            continue
    return removed
