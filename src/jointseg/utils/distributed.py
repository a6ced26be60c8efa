"""Process rank under torchrun / Lightning DDP, read from the launcher's environment."""

from __future__ import annotations

import os


def global_rank() -> int:
    """This process's global rank (0 outside distributed runs)."""
    for variable in ("RANK", "SLURM_PROCID"):
        if variable in os.environ:
            return int(os.environ[variable])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return node * per_node + local


def is_global_zero() -> bool:
    """True in the process that writes the run's shared files."""
    return global_rank() == 0
