"""Rank zero under torchrun / SLURM / Lightning DDP, through Lightning's rank utilities."""

from __future__ import annotations

import os

from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.fabric.utilities.rank_zero import rank_zero_only


def is_global_zero() -> bool:
    """True in the process that writes the run's shared files (always outside distributed runs).

    Lightning's rank (``RANK``, else ``LOCAL_RANK``, else ``SLURM_PROCID``; the strategy's global
    rank once a trainer has set it up) must be 0; without ``RANK``, so must the node rank
    (``NODE_RANK`` / ``GROUP_RANK``), since a local rank is 0 on every node.
    """
    if rank_zero_only.rank != 0:
        return False
    return "RANK" in os.environ or LightningEnvironment().node_rank() == 0
