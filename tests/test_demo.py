"""The demo end to end, small: every step runs and the report opens with the comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from jointseg.config import shipped_config_text
from jointseg.workflows.demo import run_demo


@pytest.mark.slow
def test_demo_runs_every_step(tmp_path: Path) -> None:
    config = yaml.safe_load(shipped_config_text("demo"))
    config["training"].update({"epochs": 1, "iterations_per_epoch": 3, "validation_every": 1})
    config["regularization"]["shape_prior"]["steps"] = 5
    config["preprocessing"]["patch_size"] = [96, 96]
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    report = run_demo(tmp_path / "out", path, subjects=3, test_subjects=1, synth_scale=0.5)
    text = report.read_text(encoding="utf-8")
    assert text.index("## Comparison on held-out subjects") < text.index("## A held-out scan")
    assert "| **full** |" in text and "| individual |" in text
    # iterations_per_dataset (demo config): the 3-joint network takes 3 x 3 steps per epoch
    assert "`full` 1 network x 9 steps" in text and "`individual` 3 networks x 3 steps" in text
    assert "## Postprocessing of the full model's labels" in text and "| Dice with |" in text
    record = json.loads((tmp_path / "out" / "data" / "synth.json").read_text(encoding="utf-8"))
    assert record["variation"] == "typical"  # the demo's study: DEMO_VARIATION
    prediction = tmp_path / "out" / "prediction"
    assert len(list(prediction.glob("*_seg.nii.gz"))) == 1
    assert len(list(prediction.glob("*_preview.png"))) == 1
    for scheme in ("full", "individual"):
        assert (tmp_path / "out" / "runs" / scheme / "evaluation" / "metrics.csv").is_file()


def test_a_refused_scan_is_predicted_with_its_known_joint(monkeypatch, tmp_path: Path) -> None:
    from jointseg.recognition.decision import DomainRecognitionError, decide, refusal_message
    from jointseg.workflows import demo

    calls = []

    def predict_path(run, scan, out, domain, device):
        calls.append((domain, device))
        if domain == "auto":  # a single scan's refusal raises its own error
            refused = decide({"knee": 9.0, "shoulder": 12.0})
            raise DomainRecognitionError(f"{scan}: {refusal_message(refused)}", refused)

    monkeypatch.setattr(demo, "predict_path", predict_path)
    demo.predict_known_joint(tmp_path / "run", tmp_path / "knee.nii.gz", tmp_path / "out", "knee")
    assert calls == [("auto", "auto"), ("knee", "auto")]
