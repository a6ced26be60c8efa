"""benchmarks/adapt_bn.py: the table on hand-built scores, and the pairs it parses."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import adapt_bn  # noqa: E402


def _scores() -> pd.DataFrame:
    rows = []
    for protocol, shift in (("ankle", 0.1), ("knee", -0.1)):
        for subject in (0, 1):
            for structure, plain in (("femur", 0.8), ("tibia", 0.6)):
                for mode, dice in (("plain", plain), ("adapted", plain + shift + 0.02 * subject)):
                    rows.append({"joint": "knee", "protocol": protocol, "subject": subject,
                                 "mode": mode, "structure": structure, "dice": dice,
                                 "seconds": 1.0})  # fmt: skip
    return pd.DataFrame(rows)


def test_table_has_each_bone_and_the_pairs_mean_in_order() -> None:
    table = adapt_bn.bone_table(_scores())
    assert list(zip(table["protocol"], table["bone"], strict=True)) == [
        ("ankle", "femur"), ("ankle", "tibia"), ("ankle", "mean"),
        ("knee", "femur"), ("knee", "tibia"), ("knee", "mean"),
    ]  # fmt: skip
    mean = table[(table["protocol"] == "ankle") & (table["bone"] == "mean")].iloc[0]
    assert mean["plain"] == pytest.approx(0.7) and mean["adapted"] == pytest.approx(0.81)
    assert mean["change"] == pytest.approx(0.11)
    text = adapt_bn.markdown(table, 2)
    assert "| knee | ankle (T1 SE) | femur | 0.800 | 0.910 | +0.110 |" in text
    assert "| knee | knee (PD SE FS) | **mean** | **0.700** | **0.610** | **-0.090** |" in text


def test_pairs_are_parsed_and_checked() -> None:
    assert adapt_bn.parse_pairs("knee:ankle,elbow:knee") == [("knee", "ankle"), ("elbow", "knee")]
    with pytest.raises(SystemExit, match="JOINT:PROTOCOL"):
        adapt_bn.parse_pairs("knee")
    with pytest.raises(ValueError, match="unknown protocol"):
        adapt_bn.parse_pairs("knee:hip")
