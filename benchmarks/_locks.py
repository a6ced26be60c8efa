"""File locks that let several benchmark processes share one output folder.

Both are ``fcntl.flock`` locks on a hidden file beside the guarded path, released by the
system when the holder dies, so that an interrupted piece of work is free again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _lock_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent / f".{path.name}.claim"


@contextmanager
def claimed(path: Path) -> Iterator[bool]:
    """Whether this process holds the work ``path``: an exclusive, non-blocking lock held for
    the block (False at once when another process holds it)."""
    import fcntl

    with open(_lock_file(path), "w", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` held for the block, waiting for another holder to finish
    (for a step that several processes need done once, such as planning)."""
    import fcntl

    with open(_lock_file(path), "w", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
