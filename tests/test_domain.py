"""Domain recognition from BN statistics, on a network whose per-domain statistics are fitted."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from jointseg.config import ModelConfig
from jointseg.models import build_model
from jointseg.models.network import Route, head_index
from jointseg.recognition.calibration import Calibration
from jointseg.recognition.decision import (
    Candidate,
    DomainRecognitionError,
    candidate_distances,
    decide,
    recognize_domain,
    refusal_message,
)
from jointseg.recognition.features import (
    ScanFeatures,
    bn_distance,
    early_batchnorm_layers,
    scan_features,
    subsample_indices,
)
from jointseg.recognition.references import CONTENT_WEIGHT, DomainReference, ReferenceStats

MESSAGE_BOUND = 200  # the most characters of a refusal's message

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
    return [Candidate("smooth", Route(net, 0)), Candidate("striped", Route(net, 1))]


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
    nearest = min(noise.scores, key=lambda s: s.refusal).name
    assert f"(nearest: {nearest}, appearance distance" in message and "--domain" in message
    assert "\n" not in message and len(message) < MESSAGE_BOUND


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


def test_reference_spread_is_pooled_over_the_other_domains():
    own = [np.array([0.0, 1.0]), np.array([2.0, 1.0])]  # variances 2, 0
    other = [np.array([5.0, 0.0]), np.array([5.0, 4.0]), np.array([5.0, 2.0])]  # variances 0, 4
    lone = [np.array([9.0, 9.0])]  # a single scan has no variance: left out
    ref = ReferenceStats.fit(own, [other, lone])
    np.testing.assert_allclose(ref.mean, [1.0, 1.0])
    np.testing.assert_allclose(ref.std, np.sqrt([(2 + 0) / 2, (0 + 4) / 2]))
    assert ref.scans == 2
    floor2 = (0.1 * np.median(ref.std)) ** 2
    expected = np.mean([(3 - 1) ** 2 / (1 + floor2), (1 - 1) ** 2 / (2 + floor2)])
    assert ref.distance(np.array([3.0, 1.0])) == pytest.approx(expected)


def test_scan_features_are_the_early_moments_and_the_heads_reading(fitted_net):
    volume = torch.from_numpy(smooth_volume(3)).unsqueeze(1)
    features = scan_features(Route(fitted_net, 1), volume, batch_size=5)
    assert features.appearance.shape == (5 * 2 * 16,)  # 5 layers x (means, log-variances) x 16
    # content: log mean class probability (2 classes) and logit of the mean top probability
    with torch.no_grad():
        probabilities = torch.softmax(
            fitted_net(volume, torch.ones(12, dtype=torch.long)).logits[1], 1
        )
    mean = probabilities.double().mean(dim=(0, 2, 3)).numpy()
    top = probabilities.double().max(1).values.mean().item()
    expected = np.append(np.log(mean + 1e-3), np.log(top / (1 - top)))
    np.testing.assert_allclose(features.content, expected, rtol=1e-6)
    # a union head reads only the domain's channels, in the given order
    union = scan_features(Route(fitted_net, 1, select=(1, 0)), volume)
    np.testing.assert_allclose(union.content[:2], np.log(mean[::-1] + 1e-3), rtol=1e-6)
    np.testing.assert_allclose(union.appearance, features.appearance)


def test_domain_reference_ranks_by_appearance_and_content_and_refuses_by_appearance():
    def stats(mean, std):
        return ReferenceStats(np.array(mean, float), np.array(std, float), 4)

    reference = DomainReference(stats([0.0, 0.0], [1.0, 1.0]), stats([1.0], [0.5]))
    ranking, refusal = reference.distances(ScanFeatures(np.array([1.0, 2.0]), np.array([2.0])))
    floor2 = 0.1**2  # 0.1 x median spread, squared
    appearance = np.mean([1 / (1 + floor2), 4 / (1 + floor2)])
    content = 1 / (0.25 + 0.05**2)
    assert refusal == pytest.approx(appearance)
    assert ranking == pytest.approx(appearance + CONTENT_WEIGHT * content)
    # the decision ranks by the first, refuses by the second
    calibration = Calibration(threshold=3.0, temperature=1.0)
    decision = decide({"a": 5.0, "b": 6.0}, calibration, refusal={"a": 3.5, "b": 1.0})
    # "a" ranks first but is out of the threshold: "b", within it, is not hidden by it
    assert decision.scores[0].name == "a" and decision.domain == "b"
    assert decision.confidence == pytest.approx(1 / (1 + np.exp(1.0)))  # b's softmax share
    assert decide({"a": 5.0, "b": 6.0}, calibration, refusal={"a": 2.5, "b": 9}).domain == "a"
    assert decide({"a": 5.0, "b": 6.0}, calibration, refusal={"a": 3.5, "b": 9}).domain is None
    # the threshold comes from refusal distances, the temperature from ranking distances
    calibrated = Calibration.from_distances({"a": [1.0, 2.0]}, 4.0, {"a": [3.0, 5.0]})
    assert (calibrated.threshold, calibrated.temperature) == (8.0, 4.0)


def test_head_index_follows_the_heads():
    two_heads = build_model(CFG, [2, 2], domain_specific_bn=True)
    one_head = build_model(CFG, [3], domain_specific_bn=False)
    assert head_index(two_heads, ["ankle", "knee"], "knee") == 1
    assert head_index(one_head, ["ankle", "knee"], "knee") == 0


def test_recognition_with_measured_references(fitted_net):
    def features(volume, index):
        path = Route(fitted_net, index)
        return scan_features(path, torch.from_numpy(volume).unsqueeze(1))

    makers = {"smooth": smooth_volume, "striped": striped_volume}
    references = {
        name: DomainReference.fit([features(make(seed), i) for seed in range(400, 406)])
        for i, (name, make) in enumerate(makers.items())
    }
    candidates = [
        Candidate(name, Route(fitted_net, i), references[name]) for i, name in enumerate(makers)
    ]
    in_domain = {
        name: [references[name].distances(features(make(s), i))[1] for s in (500, 501)]
        for i, (name, make) in enumerate(makers.items())
    }
    calibration = Calibration.from_distances(in_domain)
    for seed in range(600, 604):
        for name, make in makers.items():
            decision = recognize_domain(candidates, make(seed), calibration)
            assert decision.domain == name and decision.confidence > 0.9
            other = decision.scores[1].distance
            assert other > 10 * decision.scores[0].distance
            # a candidate that cannot win keeps its appearance distance as a lower bound of
            # its ranking distance; the others are exact
            slices = torch.from_numpy(make(seed)).unsqueeze(1)
            full = {c.name: candidate_distances(c, slices) for c in candidates}
            assert min(full, key=lambda n: full[n][0]) == name
            for score in decision.scores:
                ranking, appearance = full[score.name]
                assert score.refusal == pytest.approx(appearance)
                expected = ranking if score.complete else appearance
                assert score.distance == pytest.approx(expected)
            assert decision.scores[0].complete and not decision.scores[1].complete
            assert ">= " in decision.describe()
    assert recognize_domain(candidates, noise_volume(7), calibration).domain is None
    with pytest.raises(ValueError, match="every candidate"):
        recognize_domain([candidates[0], Candidate("x", Route(fitted_net, 1))], smooth_volume(1))


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


def test_a_refusal_is_one_short_line_with_its_full_evidence_in_the_error():
    """The message names the nearest candidate by refusal distance (not the ranking's first)
    and how to override; the error carries the whole decision, as JSON-able data too."""
    calibration = Calibration(threshold=2.4, temperature=1.0)
    names = [f"joint_{i:02d}_with_a_long_name" for i in range(12)]
    ranking = {name: 5.0 + i for i, name in enumerate(names)}
    refusal = {name: 9.0 - 0.5 * i for i, name in enumerate(names)}
    decision = decide(ranking, calibration, refusal, bounds=names[6:])
    assert decision.domain is None
    message = refusal_message(decision)
    assert message == (
        "refused: the scan fits none of this run's joints (nearest: joint_11_with_a_long_name, "
        "appearance distance 3.5 > threshold 2.4); pass --domain NAME to segment it anyway"
    )
    assert len(message) < MESSAGE_BOUND
    error = DomainRecognitionError(message, decision)
    assert str(error) == message and error.decision is decision
    again = pickle.loads(pickle.dumps(error))  # e.g. from a worker process
    assert str(again) == message and again.decision == decision
    evidence = decision.to_dict()
    assert json.loads(json.dumps(evidence, allow_nan=False)) == evidence
    assert list(evidence["candidates"]) == names  # every candidate, best first
    assert evidence["domain"] is None and evidence["decided_by"] == "appearance"
    assert evidence["refusal_threshold"] == 2.4
    last = evidence["candidates"][names[-1]]
    assert last == {
        "distance": 16.0,
        "refusal_distance": 3.5,
        "distance_is_lower_bound": True,
        "confidence": pytest.approx(decision.scores[-1].confidence, abs=1e-4),
    }
    assert len(decision.describe()) > MESSAGE_BOUND  # the evidence a person need not read
