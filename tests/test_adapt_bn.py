"""Prediction with test-time BN adaptation (``adapt_bn``, ``jointseg predict --adapt-bn``) with
the tiny model of tests/tiny_model.py (the session-wide `trained_run` fixture is in conftest.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tests.tiny_model import DICE_BOUND, DOMAINS, dice, make_scan

pytestmark = pytest.mark.trains


@pytest.fixture(scope="module")
def adapting(trained_run):
    from jointseg.inference.predictor import Predictor

    return Predictor.from_run(trained_run, batch_size=8, adapt_bn=True)


def _state(predictor) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": value.clone()
        for name, net in predictor.networks.items()
        for key, value in net.state_dict().items()
    }


def _contrast_changed(image: sitk.Image) -> sitk.Image:
    """A contrast the model never saw: the intensities through a gamma of 3, then scaled and
    shifted (an affine change alone is undone by the preprocessing's normalization)."""
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    low, high = array.min(), array.max()
    changed = ((array - low) / (high - low)) ** 3 * 2500 + 40
    out = sitk.GetImageFromArray(changed.astype(np.float32))
    out.CopyInformation(image)
    return out


def _labels(prediction) -> np.ndarray:
    return sitk.GetArrayFromImage(prediction.label_map)


def test_adapted_prediction_restores_the_statistics_and_segments(adapting):
    before = _state(adapting)
    for domain in DOMAINS:
        image, truth = make_scan(domain, 3)
        prediction = adapting.predict(image, domain=domain)
        assert prediction.details["adapt_bn"] is True
        got, want = _labels(prediction), sitk.GetArrayFromImage(truth)
        for value in DOMAINS[domain].values():
            assert dice(got, want, value) > DICE_BOUND, (domain, value)
    after = _state(adapting)
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert not any(m.training for net in adapting.networks.values() for m in net.modules())


def test_adaptation_on_a_contrast_change_differs_and_is_deterministic(adapting, predictor):
    image = _contrast_changed(make_scan("knee", 4)[0])
    plain = predictor.predict(image, domain="knee", return_probabilities=True)
    assert plain.details["adapt_bn"] is False
    first = adapting.predict(image, domain="knee", return_probabilities=True)
    again = adapting.predict(image, domain="knee", return_probabilities=True)
    probabilities = [sitk.GetArrayFromImage(p.probabilities) for p in (plain, first, again)]
    assert np.abs(probabilities[1] - probabilities[0]).max() > 0.05
    assert np.array_equal(probabilities[1], probabilities[2])
    assert np.array_equal(_labels(first), _labels(again))
    assert not np.array_equal(_labels(first), _labels(plain))


def test_recognition_decides_on_the_unadapted_network(adapting, predictor):
    image = make_scan("shoulder", 5)[0]
    adapted, plain = adapting.predict(image), predictor.predict(image)
    assert adapted.domain == plain.domain == "shoulder"
    assert adapted.confidence == plain.confidence
    assert adapted.decision.to_dict() == plain.decision.to_dict()


def test_onnxruntime_backend_is_refused(adapting, monkeypatch):
    from jointseg.inference.backends import OnnxRuntimeBackend

    monkeypatch.setattr(adapting, "backend", OnnxRuntimeBackend({}))
    with pytest.raises(ValueError, match="needs the torch backend"):
        adapting.predict(make_scan("knee", 6)[0], domain="knee")


def test_cli_flag_and_its_refusal_with_onnxruntime(trained_run, tmp_path):
    from typer.testing import CliRunner

    from jointseg.cli import app
    from jointseg.data.io import write_image

    scan = tmp_path / "k6.nii.gz"
    image, truth = make_scan("knee", 6)
    write_image(_contrast_changed(image), scan)
    out = tmp_path / "out"
    args = ["predict", str(trained_run), str(scan), "--out", str(out), "--no-meshes"]
    result = CliRunner().invoke(app, [*args, "--domain", "knee", "--adapt-bn"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "k6_outputs.json").read_text(encoding="utf-8"))
    assert record["settings"]["adapt_bn"] is True
    assert sitk.ReadImage(str(out / "k6_seg.nii.gz")).GetSize() == truth.GetSize()
    bad = CliRunner().invoke(app, [*args, "--adapt-bn", "--backend", "onnxruntime"])
    assert bad.exit_code == 2
    assert "--adapt-bn" in bad.output and "needs the torch backend" in bad.output
