"""Supervised contrastive loss: hand-computed values, a loop reference, stability, training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jointseg.losses import multiscale_supcon_loss, supcon_loss


def reference_supcon(features: torch.Tensor, labels: torch.Tensor, t: float) -> float:
    """Khosla et al.'s formula written as plain loops over anchors and positives."""
    if features.dim() == 2:
        features = features[:, None]
    batch, views, _ = features.shape
    z = [F.normalize(features[b, v].double(), dim=0) for b in range(batch) for v in range(views)]
    y = [int(labels[b]) for b in range(batch) for _ in range(views)]
    total, anchors = 0.0, 0
    for i in range(len(z)):
        positives = [p for p in range(len(z)) if p != i and y[p] == y[i]]
        if not positives:
            continue
        denominator = sum(math.exp(float(z[i] @ z[a]) / t) for a in range(len(z)) if a != i)
        terms = [-math.log(math.exp(float(z[i] @ z[p]) / t) / denominator) for p in positives]
        total += sum(terms) / len(terms)
        anchors += 1
    return total / anchors if anchors else 0.0


# Four unit vectors at 90 degrees: neighbours have a dot product of 0, the opposite pairs
# (z0, z2) and (z1, z3) have -1, and every vector has 1 with itself.
SQUARE = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])


def test_hand_computed_two_positive_pairs():
    # labels [0, 0, 1, 2], t = 1: anchors 2 and 3 have no positive and are left out.
    # anchor 0: others 1, 2, 3 have dots 0, -1, 0 -> denominator 2 + e^-1, positive 1 (dot 0):
    #   l0 = -log(e^0 / (2 + e^-1)) = log(2 + e^-1)
    # anchor 1: others 0, 2, 3 have dots 0, 0, -1 -> the same denominator, positive 0 (dot 0):
    #   l1 = log(2 + e^-1)
    # loss = (l0 + l1) / 2 = log(2 + 1/e) = log(2.367879...) = 0.861995...
    loss = supcon_loss(SQUARE, torch.tensor([0, 0, 1, 2]), temperature=1.0)
    assert loss.item() == pytest.approx(math.log(2 + math.exp(-1)), abs=1e-6)
    assert loss.item() == pytest.approx(0.8619948, abs=1e-6)


def test_hand_computed_three_positives_with_temperature():
    # labels [0, 0, 0, 1], t = 0.5 (dots divided by t: 0 -> 0, -1 -> -2); D = 2 + e^-2 for
    # every anchor (each has two orthogonal neighbours and one opposite vector).
    # anchor 0: positives 1 (0), 2 (-2): mean of log D - 0 and log D + 2 = log D + 1
    # anchor 1: positives 0 (0), 2 (0): log D
    # anchor 2: positives 0 (-2), 1 (0): log D + 1
    # anchor 3: no positive, excluded.
    # loss = log D + 2/3 = log(2.135335...) + 0.666667 = 0.758623 + 0.666667 = 1.425290
    loss = supcon_loss(SQUARE, torch.tensor([0, 0, 0, 1]), temperature=0.5)
    expected = math.log(2 + math.exp(-2)) + 2 / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert loss.item() == pytest.approx(1.425290, abs=1e-5)


def test_features_are_normalized_defensively():
    labels = torch.tensor([0, 0, 0, 1])
    scaled = SQUARE * torch.tensor([[3.0], [0.5], [7.0], [2.0]])
    assert supcon_loss(scaled, labels, 0.5).item() == pytest.approx(
        supcon_loss(SQUARE, labels, 0.5).item(), abs=1e-6
    )


@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5])
def test_matches_loop_reference_single_view(temperature):
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(10, 6, generator=generator)
    labels = torch.tensor([0, 1, 2, 0, 1, 0, 3, 2, 2, 1])  # label 3 is a singleton
    loss = supcon_loss(features, labels, temperature)
    assert loss.item() == pytest.approx(reference_supcon(features, labels, temperature), rel=1e-5)


def test_matches_loop_reference_multi_view():
    generator = torch.Generator().manual_seed(4)
    features = torch.randn(5, 3, 8, generator=generator)
    labels = torch.tensor([0, 1, 0, 2, 1])  # sample 3's views are each other's only positives
    loss = supcon_loss(features, labels, 0.1)
    assert loss.item() == pytest.approx(reference_supcon(features, labels, 0.1), rel=1e-5)


def test_all_singletons_give_zero_with_finite_gradients():
    features = torch.randn(4, 5, requires_grad=True)
    loss = supcon_loss(features, torch.arange(4), 0.05)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(features.grad).all() and features.grad.abs().max() == 0


def test_single_sample_gives_zero_with_gradient():
    features = torch.randn(1, 5, requires_grad=True)
    loss = supcon_loss(features, torch.tensor([0]), 0.1)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(features.grad).all()


def test_stable_at_low_temperature_with_large_inputs():
    generator = torch.Generator().manual_seed(5)
    features = (1e4 * torch.randn(12, 4, generator=generator)).requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2, 3, 4, 5])
    loss = supcon_loss(features, labels, 0.05)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(features.grad).all()
    assert loss.item() == pytest.approx(reference_supcon(features.detach(), labels, 0.05), rel=1e-4)


def test_half_precision_input_is_computed_in_float32():
    features = torch.randn(6, 4).half()
    loss = supcon_loss(features, torch.tensor([0, 0, 1, 1, 2, 2]), 0.05)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_multiscale_combines_with_normalized_weights():
    generator = torch.Generator().manual_seed(6)
    embeddings = {name: torch.randn(6, 4, generator=generator) for name in ("enc2", "dec1", "x")}
    domains = torch.tensor([0, 1, 0, 1, 2, 2])
    loss = multiscale_supcon_loss(embeddings, domains, {"enc2": 3.0, "dec1": 1.0, "x": 0.0}, 0.1)
    expected = 0.75 * supcon_loss(embeddings["enc2"], domains, 0.1) + 0.25 * supcon_loss(
        embeddings["dec1"], domains, 0.1
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_multiscale_missing_tap_is_named():
    with pytest.raises(KeyError, match="dec2"):
        multiscale_supcon_loss({"enc2": torch.randn(4, 3)}, torch.zeros(4), {"dec2": 1.0}, 0.1)


def test_multiscale_rejects_bad_weights():
    with pytest.raises(ValueError, match="sum to zero"):
        multiscale_supcon_loss({"a": torch.randn(4, 3)}, torch.zeros(4), {"a": 0.0}, 0.1)
    with pytest.raises(ValueError, match=">= 0"):
        multiscale_supcon_loss({"a": torch.randn(4, 3)}, torch.zeros(4), {"a": -1.0}, 0.1)


def _domain_images(domain: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """Domain 0: smooth texture, domain 1: fine-grained texture; each image then gets a random
    contrast and brightness, which dominate the features of an untrained encoder."""
    noise = torch.randn(n, 1, 24, 24, generator=generator)
    if domain == 0:
        noise = F.avg_pool2d(noise, 3, stride=1, padding=1)
    noise = noise - noise.mean(dim=(2, 3), keepdim=True)
    noise = noise / noise.std(dim=(2, 3), keepdim=True)
    contrast = 0.5 + 1.0 * torch.rand(n, 1, 1, 1, generator=generator)
    brightness = 2 * torch.rand(n, 1, 1, 1, generator=generator) - 1
    return contrast * noise + brightness


class TinyEncoder(nn.Module):
    """Two conv stages, each pooled and projected to an L2-normalized embedding."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.proj1 = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
        self.proj2 = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f1 = self.stage1(x)
        f2 = self.stage2(f1)
        return {
            "s1": F.normalize(self.proj1(f1.mean(dim=(2, 3))), dim=1),
            "s2": F.normalize(self.proj2(f2.mean(dim=(2, 3))), dim=1),
        }


def test_training_separates_domains():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = TinyEncoder()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    weights = {"s1": 1.0, "s2": 1.0}
    domains = torch.tensor([0] * 8 + [1] * 8)
    losses = []
    for _ in range(60):
        x = torch.cat([_domain_images(0, 8, generator), _domain_images(1, 8, generator)])
        loss = multiscale_supcon_loss(model(x), domains, weights, temperature=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:5]) / 5

    with torch.no_grad():
        reference = torch.cat([_domain_images(0, 20, generator), _domain_images(1, 20, generator)])
        held_out = torch.cat([_domain_images(0, 20, generator), _domain_images(1, 20, generator)])
        truth = torch.tensor([0] * 20 + [1] * 20)
        for tap in weights:
            ref = model(reference)[tap]
            centroids = torch.stack([ref[truth == d].mean(0) for d in (0, 1)])
            predicted = (model(held_out)[tap] @ centroids.T).argmax(1)
            accuracy = (predicted == truth).float().mean().item()
            assert accuracy >= 0.9, (tap, accuracy)
