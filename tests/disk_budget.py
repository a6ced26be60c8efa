"""A full disk, simulated: ``os.write`` into one folder fails with ENOSPC after a byte budget.

Linux only: /proc names the file behind each descriptor. Used by tests/test_faults.py and
benchmarks/robustness_faults.py.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path


def budgeted_write(
    folder: Path, budget: int, real_write: Callable[[int, bytes], int] = os.write
) -> Callable[[int, bytes], int]:
    """An ``os.write`` whose writes into ``folder`` fail with ENOSPC after ``budget`` bytes."""
    left = [budget]

    def write(fd: int, data) -> int:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if not target.startswith(str(folder)):
            return real_write(fd, data)
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = real_write(fd, bytes(data)[: left[0]])
        left[0] -= written
        return written

    return write
