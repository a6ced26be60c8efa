"""Domain recognition from BN statistics, on a network whose per-domain statistics are fitted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from jointseg.config import ModelConfig
from jointseg.inference.domain import (
    Calibration,
    Candidate,
    DomainRecognitionError,
    ReferenceStats,
    bn_distance,
    decide,
    early_batchnorm_layers,
    recognize_domain,
    refusal_message,
    scan_descriptor,
    subsample_indices,
)
from jointseg.models import build_model

CFG = ModelConfig(encoder="resnet18", width=0.25, decoder_channels=(32, 32, 16, 16, 16))


def _normalized(volume: np.ndarray) -> np.ndarray:
    return ((volume - volume.mean()) / volume.std()).astype(np.float32)


def smooth_volume(seed: int, slices: int = 12) -> np.ndarray:
    """Domain 'smooth': blurred blobs."""
    rng = np.random.default_rng(seed)
    return _normalized(ndimage.gaussian_filter(rng.normal(size=(slices, 64, 64)), (0, 4, 4)))


def striped_volume(seed: int, slices: int = 12) -> np.ndarray:
    """Domain 'striped': fine stripes over mild noise."""
    rng = np.random.default_rng(seed)
    x = np.arange(64)[None, None, :] + rng.uniform(0, 6)
    stripes = np.sin(x * 1.3) * np.ones((slices, 64, 1))
    return _normalized(stripes + 0.3 * rng.normal(size=(slices, 64, 64)))


def noise_volume(seed: int, slices: int = 12) -> np.ndarray:
    return _normalized(np.random.default_rng(seed).normal(size=(slices, 64, 64)))


@pytest.fixture(scope="module")
def fitted_net() -> nn.Module:
    """A random network whose domain BN statistics are those of the two synthetic domains."""
    torch.manual_seed(0)
    net = build_model(CFG, [2, 2], domain_specific_bn=True)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the fitting batches
    net.train()
    with torch.no_grad():
        for seed in range(6):
            x = np.concatenate([smooth_volume(seed, 8), striped_volume(seed, 8)])
            domains = torch.tensor([0] * 8 + [1] * 8)
            net(torch.from_numpy(x).unsqueeze(1), domains)
    return net.eval()


def _candidates(net):
    return [Candidate("smooth", net, 0), Candidate("striped", net, 1)]


def test_subsample_indices_cover_the_stack():
    assert subsample_indices(5).tolist() == [0, 1, 2, 3, 4]
    picked = subsample_indices(300, count=32)
    assert len(picked) == 32 and picked[0] == 0 and picked[-1] == 299
    with pytest.raises(ValueError):
        subsample_indices(0)


def test_early_layers_are_the_stem_and_first_stage(fitted_net):
    layers = early_batchnorm_layers(fitted_net)
    assert len(layers) == 2 * 5  # (stem + 2 blocks x 2) x two domains
    plain = build_model(CFG, [2], domain_specific_bn=False)
    assert len(early_batchnorm_layers(plain)) == 5
    # The forward pass stops after them: later stages and the decoder never run.
    calls = []
    handles = [
        m.register_forward_hook(lambda *_: calls.append(1))
        for m in (fitted_net.encoder.layer2, fitted_net.decoder)
    ]
    try:
        bn_distance(fitted_net, torch.from_numpy(smooth_volume(1)).unsqueeze(1), 0, batch_size=4)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == []


def test_distance_is_small_in_domain_and_large_across(fitted_net):
    smooth = torch.from_numpy(smooth_volume(100)).unsqueeze(1)
    striped = torch.from_numpy(striped_volume(100)).unsqueeze(1)
    d_ss = bn_distance(fitted_net, smooth, 0)
    d_sx = bn_distance(fitted_net, smooth, 1)
    d_xx = bn_distance(fitted_net, striped, 1)
    d_xs = bn_distance(fitted_net, striped, 0)
    assert d_ss < 0.1 and d_xx < 0.1
    assert d_sx > 5 * d_ss and d_xs > 5 * d_xx
    # Batch size does not change the statistics.
    assert bn_distance(fitted_net, smooth, 0, batch_size=5) == pytest.approx(d_ss, rel=1e-6)


def test_recognition_picks_each_domain_and_refuses_noise(fitted_net):
    candidates = _candidates(fitted_net)
    held_out = {
        "smooth": [smooth_volume(s) for s in (200, 201)],
        "striped": [striped_volume(s) for s in (200, 201)],
    }
    distances = {
        name: [bn_distance(fitted_net, torch.from_numpy(v).unsqueeze(1), i) for v in vols]
        for i, (name, vols) in enumerate(held_out.items())
    }
    calibration = Calibration.from_distances(distances)
    for seed in range(300, 304):
        for name, make in (("smooth", smooth_volume), ("striped", striped_volume)):
            decision = recognize_domain(candidates, make(seed), calibration)
            assert decision.domain == name
            assert decision.confidence > 0.9
    noise = recognize_domain(candidates, noise_volume(7), calibration)
    assert noise.domain is None
    assert noise.scores[0].distance > calibration.threshold
    message = refusal_message(noise)
    assert "smooth" in message and "striped" in message and "--domain" in message


def test_reference_distance_is_a_floored_mean_squared_z_score():
    ref = ReferenceStats.fit([np.array([0.0, 1.0, 5.0]), np.array([2.0, 1.0, 5.0])])
    assert ref.scans == 2
    np.testing.assert_allclose(ref.mean, [1.0, 1.0, 5.0])
    np.testing.assert_allclose(ref.std, [np.sqrt(2), 0.0, 0.0])
    floor2 = (0.1 * 0.0) ** 2 + 1e-24  # median of (sqrt 2, 0, 0) is 0: only the tiny floor
    assert ref.distance(ref.mean) == 0.0
    value = ref.distance(np.array([1.0 + np.sqrt(2), 1.0, 5.0]))
    assert value == pytest.approx((2.0 / (2.0 + floor2)) / 3)
    wider = ReferenceStats.fit([np.array([0.0, 0.0]), np.array([2.0, 4.0])])  # std sqrt2, 2sqrt2
    floor = 0.1 * np.median([np.sqrt(2), 2 * np.sqrt(2)])
    expected = np.mean([1.0 / (2 + floor**2), 4.0 / (8 + floor**2)])
    assert wider.distance(np.array([2.0, 4.0])) == pytest.approx(expected)
    with pytest.raises(ValueError, match="another network"):
        ref.distance(np.zeros(4))
    with pytest.raises(ValueError, match="at least two"):
        ReferenceStats.fit([np.zeros(3)])


def test_recognition_with_measured_references(fitted_net):
    def descriptor(volume, index):
        return scan_descriptor(fitted_net, torch.from_numpy(volume).unsqueeze(1), index)

    makers = {"smooth": smooth_volume, "striped": striped_volume}
    references = {
        name: ReferenceStats.fit([descriptor(make(seed), i) for seed in range(400, 406)])
        for i, (name, make) in enumerate(makers.items())
    }
    candidates = [Candidate(name, fitted_net, i, references[name]) for i, name in enumerate(makers)]
    in_domain = {
        name: [references[name].distance(descriptor(make(s), i)) for s in (500, 501)]
        for i, (name, make) in enumerate(makers.items())
    }
    calibration = Calibration.from_distances(in_domain)
    for seed in range(600, 604):
        for name, make in makers.items():
            decision = recognize_domain(candidates, make(seed), calibration)
            assert decision.domain == name and decision.confidence > 0.9
            other = decision.scores[1].distance
            assert other > 10 * decision.scores[0].distance
    assert recognize_domain(candidates, noise_volume(7), calibration).domain is None
    with pytest.raises(ValueError, match="every candidate"):
        recognize_domain([candidates[0], Candidate("x", fitted_net, 1)], smooth_volume(1))


def test_decide_softmax_and_threshold():
    calibration = Calibration(threshold=0.5, temperature=0.1)
    decision = decide({"a": 0.3, "b": 0.1, "c": 0.2}, calibration)
    assert decision.domain == "b"
    assert [s.name for s in decision.scores] == ["b", "c", "a"]
    weights = np.exp(-np.array([0.1, 0.2, 0.3]) / 0.1)
    assert decision.confidence == pytest.approx(weights[0] / weights.sum())
    assert sum(s.confidence for s in decision.scores) == pytest.approx(1.0)
    refused = decide({"a": 0.9, "b": 0.7}, calibration)
    assert refused.domain is None and refused.scores[0].name == "b"
    single = decide({"only": 0.05})
    assert single.domain == "only" and single.confidence == 1.0


def test_calibration_round_trip(tmp_path):
    assert Calibration.load(tmp_path).source == "default"
    calibration = Calibration.from_distances({"a": [0.02, 0.04], "b": [0.03]}, factor=4)
    assert calibration.threshold == pytest.approx(0.16)
    assert calibration.temperature == pytest.approx(0.03)
    calibration.save(tmp_path)
    loaded = Calibration.load(tmp_path)
    assert (loaded.threshold, loaded.temperature, loaded.source) == (0.16, 0.03, "file")
    assert loaded.in_domain == {"a": [0.02, 0.04], "b": [0.03]}
    assert Calibration.from_distances({"a": [0.001]}).threshold == pytest.approx(0.05)
    with pytest.raises(ValueError):
        Calibration.from_distances({})


def test_error_type_is_a_value_error():
    assert issubclass(DomainRecognitionError, ValueError)
