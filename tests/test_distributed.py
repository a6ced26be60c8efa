"""Rank zero from Lightning's rank, and without RANK from the node rank too."""

from __future__ import annotations

import pytest
from lightning.fabric.utilities.rank_zero import rank_zero_only

from jointseg.utils.distributed import is_global_zero

VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


@pytest.mark.parametrize(
    ("environment", "rank", "zero"),
    [
        ({}, 0, True),
        ({"LOCAL_RANK": "1"}, 1, False),
        ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, 0, False),
        ({"LOCAL_RANK": "0", "GROUP_RANK": "1"}, 0, False),
        ({"LOCAL_RANK": "0", "NODE_RANK": "0"}, 0, True),
        ({"RANK": "0", "NODE_RANK": "1"}, 0, True),
        ({"RANK": "3"}, 3, False),
    ],
)
def test_rank_zero(
    environment: dict[str, str], rank: int, zero: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setattr(rank_zero_only, "rank", rank)  # what Lightning reads on import
    assert is_global_zero() is zero
