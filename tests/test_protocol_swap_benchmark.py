"""benchmarks/protocol_swap.py: the tables on hand-built scores, and end to end on the tiny run
with small renderings."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import protocol_swap  # noqa: E402


def _scores(knee_own: float, knee_other: float, recognized_other: str) -> pd.DataFrame:
    rows = []
    for protocol, value, recognized in (("knee", knee_own, "knee"),
                                        ("knee_t1", knee_other, recognized_other)):  # fmt: skip
        for subject in (0, 1):
            for structure, offset in (("femur", 0.05), ("tibia", -0.05)):
                rows.append({"joint": "knee", "protocol": protocol, "subject": subject,
                             "structure": structure, "dice": value + offset,
                             "recognized": recognized if subject == 0 else "knee"})  # fmt: skip
    return pd.DataFrame(rows)


def test_report_marks_the_own_protocol_counts_recognitions_and_compares_runs() -> None:
    runs = {"full": _scores(0.9, 0.1, "refused"), "pretrained": _scores(0.88, 0.8, "knee")}
    text = protocol_swap.report(runs, "swap.png")
    assert "| joint | knee (PD SE FS) | knee_t1 (T1 SE) |" in text
    assert "| knee | **0.900 (2/2)** | 0.100 (1/2) |" in text  # refused counts as wrong
    assert "| knee | **0.880 (2/2)** | 0.800 (2/2) |" in text
    assert "#### pretrained minus full" in text
    assert "| knee | -0.020 | +0.700 |" in text
    assert text.endswith("![Mean Dice of every joint under every protocol](swap.png)")


def test_runs_are_labelled_and_a_label_given_twice_is_refused() -> None:
    assert protocol_swap.parse_runs("full=a/b/full,pretrained") == {
        "full": "a/b/full", "pretrained": "pretrained"}  # fmt: skip
    with pytest.raises(SystemExit, match="given twice"):
        protocol_swap.parse_runs("x=a,x=b")


def test_end_to_end_on_the_tiny_run(trained_run: Path, tmp_path: Path) -> None:
    """The tiny run's knee labels femur and tibia (1, 2); the synthetic knee numbers its bones
    femur 1, fibula 2, patella 3, tibia 4: the run's tibia is scored against label 4."""
    out = tmp_path / "swap"
    argv = [
        "--runs",
        f"tiny={trained_run}",
        "--out",
        str(out),
        "--joints",
        "knee,ankle",  # the tiny run has no ankle: not rendered
        "--protocols",
        "knee,knee_t1",
        "--test",
        "1",
        "--scale",
        "0.2",
        "--jobs",
        "1",
    ]
    protocol_swap.main(argv)
    scores = pd.read_csv(out / "scores-tiny.csv")
    assert sorted(scores["protocol"].unique()) == ["knee", "knee_t1"]
    assert sorted(scores["structure"].unique()) == ["femur", "tibia"]
    assert scores["dice"].between(0, 1).all()
    assert set(scores["recognized"]) <= {"knee", "shoulder", "refused"}
    assert (out / "protocol_swap.png").stat().st_size > 0
    assert "#### tiny" in (out / "protocol_swap.md").read_text(encoding="utf-8")
    image = out / "data" / "knee_t1" / "knee" / "imagesTs" / "knee_test_000_0000.nii.gz"
    assert not (out / "data" / "knee" / "ankle").exists()
    stamp = image.stat().st_mtime_ns
    scores_file = out / "scores-tiny.csv"
    scored = scores_file.stat().st_mtime_ns
    protocol_swap.main(argv)  # kept: nothing rendered or scored again
    assert image.stat().st_mtime_ns == stamp
    assert scores_file.stat().st_mtime_ns == scored
    protocol_swap.main([*argv[:6], "--protocols", "knee,knee_t1,ankle", *argv[8:]])
    assert "ankle" in set(pd.read_csv(scores_file)["protocol"])  # a new protocol: scored again
    with pytest.raises(SystemExit, match="no run has any of the joints ankle"):
        protocol_swap.main([*argv[:4], "--joints", "ankle"])
    with pytest.raises(SystemExit, match="give another --out"):
        protocol_swap.main([*argv[:-4], "--scale", "0.3", "--jobs", "1"])


def test_the_runs_labels_are_scored_by_bone_name() -> None:
    import numpy as np
    import SimpleITK as sitk

    predicted = sitk.GetImageFromArray(np.array([[[0, 1, 2, 3]]], np.uint8))
    predicted.SetSpacing((0.5, 0.5, 3.0))
    remapped, structures = protocol_swap.by_name(
        predicted, {"femur": 1, "tibia": 2, "menisci": 3}, "knee"
    )
    assert structures == {"femur": 1, "tibia": 4}  # the synthetic knee's values; no menisci
    assert sitk.GetArrayFromImage(remapped).ravel().tolist() == [0, 1, 4, 0]
    assert remapped.GetSpacing() == (0.5, 0.5, 3.0)
    with pytest.raises(SystemExit, match="none of the knee's bones"):
        protocol_swap.by_name(predicted, {"humerus": 1}, "knee")
