"""Multi-joint shape prior: union label space, auto-encoder, code distance, adversarial terms."""

from __future__ import annotations

import json
import math
from itertools import pairwise

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from jointseg.config import ShapePriorConfig
from jointseg.data.labels import DomainLabels, LabelSpace
from jointseg.losses import shape_prior_loss, union_onehot, union_probabilities
from jointseg.models.checkpoint import CheckpointError, load_module_weights
from jointseg.models.shape_autoencoder import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    LatentDiscriminator,
    ShapeAutoencoder,
    autoencoder_metadata,
    load_autoencoder,
    save_autoencoder,
)
from jointseg.training.shape_prior import (
    MAX_ROTATION,
    MAX_SCALE,
    MAX_SHIFT,
    _random_affine,
    adversarial_losses,
    obtain_shape_autoencoder,
    train_shape_autoencoder,
    union_training_masks,
)

# Bounds on a trained model: CI runs these tests under a second CPU-kernel setting too.
pytestmark = pytest.mark.trains

ANKLE = DomainLabels("ankle", {"calcaneus": 1, "talus": 2, "tibia": 3})
KNEE = DomainLabels("knee", {"femur": 1, "fibula": 2, "patella": 3, "tibia": 4})
# union: 0 background, 1 calcaneus, 2 talus, 3 tibia, 4 femur, 5 fibula, 6 patella
SPACE = LabelSpace([ANKLE, KNEE])


def shapes(n: int, seed: int, size: int = 32) -> np.ndarray:
    """Masks with an ellipse (1), a rectangle (2) and, half of the time, a disc (3)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((n, size, size), np.uint8)
    for mask in out:
        cy, cx = rng.uniform(8, size - 8, 2)
        ry, rx = rng.uniform(4, 9, 2)
        mask[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
        h, w = rng.integers(5, 12, 2)
        y0, x0 = rng.integers(0, size - h), rng.integers(0, size - w)
        mask[y0 : y0 + h, x0 : x0 + w] = 2
        if rng.random() < 0.5:
            cy, cx = rng.uniform(5, size - 5, 2)
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(3, 5) ** 2] = 3
    return out


def onehot(masks: np.ndarray, k: int = 4) -> torch.Tensor:
    return F.one_hot(torch.from_numpy(masks).long(), k).permute(0, 3, 1, 2).float()


@pytest.fixture(scope="module")
def trained():
    """32x32 masks with depth 2 give an 8x8 code: the code grid of 128x128 patches at depth 4.

    320 steps: at 160, seed 1 ended at validation Dice 0.852 (smallest class 0.68), under the
    bounds; at 320 seeds 0-3 reach 0.952-0.972 (smallest class >= 0.938) under native and
    SSE4.1 kernels (benchmarks/fixture_margins.py --fixtures prior).
    """
    cfg = ShapePriorConfig(
        steps=320, batch_size=16, lr=5e-3, base_channels=8, code_channels=16, depth=2, pool=1
    )
    ae, report = train_shape_autoencoder(
        shapes(320, seed=0),
        4,
        cfg,
        seed=0,
        validation_masks=shapes(64, seed=1),
        progress=False,
    )
    return ae, report


# --- union label space ----------------------------------------------------------------------


def _head_to_union() -> dict[int, torch.Tensor]:
    return {d: torch.from_numpy(SPACE.local_to_union(d)) for d in range(2)}


def test_union_probabilities_puts_channels_where_the_label_space_says():
    generator = torch.Generator().manual_seed(0)
    logits = {
        0: torch.randn(1, 4, 4, 4, generator=generator, requires_grad=True),
        1: torch.randn(2, 5, 4, 4, generator=generator, requires_grad=True),
    }
    index = {0: torch.tensor([1]), 1: torch.tensor([0, 2])}
    union = union_probabilities(logits, index, _head_to_union(), SPACE.num_classes, 3)
    assert union.shape == (3, 7, 4, 4)
    ankle = torch.softmax(logits[0], 1)[0]
    knee = torch.softmax(logits[1], 1)
    # ankle sample (batch position 1): local 0..3 -> union 0, 1, 2, 3; knee channels are 0
    torch.testing.assert_close(union[1, :4], ankle)
    assert union[1, 4:].abs().max() == 0
    # knee samples (positions 0, 2): local femur 1, fibula 2, patella 3, tibia 4 -> 4, 5, 6, 3
    for row, position in enumerate((0, 2)):
        torch.testing.assert_close(union[position, [0, 4, 5, 6, 3]], knee[row])
        assert union[position, [1, 2]].abs().max() == 0
    torch.testing.assert_close(union.sum(1), torch.ones(3, 4, 4))
    union[:, 3].sum().backward()  # tibia of both joints: gradients reach both heads
    assert logits[0].grad.abs().sum() > 0 and logits[1].grad.abs().sum() > 0


def test_union_onehot_maps_local_classes():
    target = torch.tensor([[[0, 4], [1, 3]], [[0, 3], [1, 2]]])  # knee sample, then ankle
    out = union_onehot(target, torch.tensor([1, 0]), _head_to_union(), SPACE.num_classes)
    assert out.shape == (2, 7, 2, 2)
    expected_knee = torch.tensor([[0, 3], [4, 6]])  # bg, tibia | femur, patella
    expected_ankle = torch.tensor([[0, 3], [1, 2]])  # bg, tibia | calcaneus, talus
    assert torch.equal(out[0].argmax(0), expected_knee)
    assert torch.equal(out[1].argmax(0), expected_ankle)
    assert torch.equal(out.sum(1), torch.ones(2, 2, 2))


def test_union_onehot_identity_head_and_errors():
    target = torch.tensor([[[0, 6], [2, 5]]])
    identity = {0: torch.arange(7)}
    assert torch.equal(union_onehot(target, torch.zeros(1), identity, 7)[0].argmax(0), target[0])
    with pytest.raises(ValueError, match="outside its head"):
        union_onehot(torch.tensor([[[4]]]), torch.tensor([0]), _head_to_union(), 7)
    with pytest.raises(KeyError, match="heads \\[5\\]"):
        union_onehot(torch.tensor([[[0]]]), torch.tensor([5]), _head_to_union(), 7)


def test_union_training_masks_stacks_domains():
    ankle = np.array([[[0, 3]]])
    knee = np.array([[[4, 2]], [[1, 3]]])
    union = union_training_masks([ankle, knee], SPACE)
    assert union.tolist() == [[[0, 3]], [[3, 5]], [[4, 6]]]


# --- the auto-encoder -----------------------------------------------------------------------


def test_autoencoder_shapes_and_size_check():
    ae = ShapeAutoencoder(num_classes=5, base_channels=4, code_channels=6, depth=3)
    x = torch.rand(2, 5, 16, 24)
    code = ae.encode(x)
    assert code.shape == (2, 6, 2, 3)
    assert ae.decode(code).shape == (2, 5, 16, 24) and ae(x).shape == (2, 5, 16, 24)
    with pytest.raises(ValueError, match="multiples of 8"):
        ae.encode(torch.rand(1, 5, 12, 16))
    with pytest.raises(ValueError, match="5"):
        ae.encode(torch.rand(1, 4, 16, 16))


def test_autoencoder_does_not_depend_on_train_or_eval_mode():
    torch.manual_seed(0)
    ae = ShapeAutoencoder(num_classes=3, base_channels=4, code_channels=4, depth=2)
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(ae.train().encode(x), ae.eval().encode(x))


def test_latent_discriminator_gives_one_logit_per_sample():
    assert LatentDiscriminator(code_channels=6).forward(torch.rand(3, 6, 2, 3)).shape == (3,)


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(1)
    ae = ShapeAutoencoder(num_classes=4, base_channels=4, code_channels=3, depth=2, pool=2)
    save_autoencoder(ae, tmp_path / "prior", metadata={"train_dice": 0.9})
    assert sorted(p.name for p in (tmp_path / "prior").iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    loaded = load_autoencoder(tmp_path / "prior")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = torch.rand(2, 4, 16, 16)
    torch.testing.assert_close(loaded(x), ae(x), rtol=0, atol=0)
    assert load_autoencoder(tmp_path / "prior" / WEIGHTS_FILE).architecture() == ae.architecture()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE):
        load_autoencoder(tmp_path / "nowhere")


def test_saved_in_the_common_model_folder_format(tmp_path):
    ae = ShapeAutoencoder(num_classes=4, base_channels=4, code_channels=3, depth=2)
    save_autoencoder(ae, tmp_path, metadata={"train_dice": 0.5})
    index = json.loads((tmp_path / CONFIG_FILE).read_text(encoding="utf-8"))
    assert index == {
        "format": "jointseg-shape-autoencoder", "version": 1, "architecture": ae.architecture(),
        "metadata": {"train_dice": 0.5},
    }  # fmt: skip
    bigger = ShapeAutoencoder(num_classes=4, base_channels=8, code_channels=3, depth=2)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_module_weights(bigger, tmp_path, WEIGHTS_FILE)


def test_a_folder_of_the_earlier_flat_format_still_loads(tmp_path):
    """Runs written before the common format hold a flat index and untagged weights."""
    torch.manual_seed(2)
    ae = ShapeAutoencoder(num_classes=3, base_channels=4, code_channels=2, depth=1, pool=2)
    save_file({k: v.contiguous() for k, v in ae.state_dict().items()}, tmp_path / WEIGHTS_FILE)
    flat = {"format_version": 1, **ae.architecture(), "metadata": {"validation_dice": 0.7}}
    (tmp_path / CONFIG_FILE).write_text(json.dumps(flat), encoding="utf-8")
    loaded = load_autoencoder(tmp_path)
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(loaded(x), ae(x), rtol=0, atol=0)
    assert autoencoder_metadata(tmp_path) == {"validation_dice": 0.7}


def test_training_reconstructs_held_out_masks(trained):
    ae, report = trained
    assert report["validation_dice"] >= 0.85, report
    assert report["train_dice"] >= 0.85
    assert all(d is not None and d >= 0.7 for d in report["validation_dice_per_class"])
    assert report["loss_per_pass"][-1] < 0.5 * report["loss_per_pass"][0]
    assert not ae.training and not any(p.requires_grad for p in ae.parameters())


def test_training_is_deterministic_and_leaves_global_rng_alone():
    cfg = ShapePriorConfig(
        steps=3, batch_size=8, lr=1e-3, base_channels=4, code_channels=4, depth=2, pool=2
    )
    masks = shapes(16, seed=2)
    torch.manual_seed(123)
    ae1, report1 = train_shape_autoencoder(masks, 4, cfg, seed=7, progress=False)
    after = torch.rand(1)
    torch.manual_seed(123)
    ae2, report2 = train_shape_autoencoder(masks, 4, cfg, seed=7, progress=False)
    assert torch.equal(after, torch.rand(1))
    assert report1["loss_per_pass"] == report2["loss_per_pass"]
    assert len(report1["loss_per_pass"]) == 2  # 3 batches of 8 from 16 masks: two passes
    for (name, a), b in zip(ae1.state_dict().items(), ae2.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_training_rejects_bad_masks():
    cfg = ShapePriorConfig(steps=1, depth=2, pool=1)
    with pytest.raises(ValueError, match="0..3"):
        train_shape_autoencoder(np.full((2, 16, 16), 4), 4, cfg, progress=False)
    with pytest.raises(ValueError, match="multiples of 4"):
        train_shape_autoencoder(np.zeros((2, 10, 16), int), 4, cfg, progress=False)
    with pytest.raises(ValueError, match="multiples of 8"):  # pool 2 x 2^2
        train_shape_autoencoder(np.zeros((2, 12, 16), int), 4, cfg.model_copy(update={"pool": 2}))


def test_random_affine_keeps_one_hot_and_roughly_the_area():
    masks = shapes(8, seed=4)
    x = onehot(masks)
    generator = torch.Generator().manual_seed(0)
    moved = _random_affine(x, generator)
    assert moved.shape == x.shape and torch.equal(moved.sum(1), torch.ones_like(moved[:, 0]))
    area, moved_area = x[:, 1:].sum(), moved[:, 1:].sum()
    # scale within 0.85-1.15 per axis, shift may push a little outside the patch
    assert 0.6 * area < moved_area < 1.4 * area
    assert not torch.equal(moved, x)


def test_random_affine_is_the_argmax_of_the_moved_one_hot_channels():
    # the plain formulation: every channel moved with background fill, then the argmax
    x = onehot(shapes(6, seed=5))
    theta_generator = torch.Generator().manual_seed(3)
    n = x.shape[0]
    angle = (2 * torch.rand(n, generator=theta_generator) - 1) * MAX_ROTATION
    scale = 1 + (2 * torch.rand(n, generator=theta_generator) - 1) * MAX_SCALE
    shift = (2 * torch.rand(n, 2, generator=theta_generator) - 1) * MAX_SHIFT
    cos, sin = scale * torch.cos(angle), scale * torch.sin(angle)
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    background = torch.zeros_like(x)
    background[:, 0] = 1
    expected = (F.grid_sample(x - background, grid, align_corners=False) + background).argmax(1)
    moved = _random_affine(x, torch.Generator().manual_seed(3))
    assert torch.equal(moved.argmax(1), expected)


def test_pooled_autoencoder_geometry():
    ae = ShapeAutoencoder(num_classes=3, base_channels=4, code_channels=5, depth=2, pool=2)
    x = torch.softmax(torch.randn(2, 3, 32, 32), 1)
    assert ae.factor == 8
    assert ae.encode(x).shape == (2, 5, 4, 4) and ae(x).shape == (2, 3, 32, 32)
    # the encoder sees 2x2 block means: maps with equal block means get equal codes
    blocky = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
    assert torch.allclose(ae.encode(blocky), ae.encode(x), atol=1e-5)


def test_obtain_reuses_a_saved_prior(tmp_path):
    ae = ShapeAutoencoder(num_classes=4, base_channels=4, code_channels=3, depth=2)
    save_autoencoder(ae, tmp_path, metadata={"validation_dice": 0.93})
    cfg = ShapePriorConfig(autoencoder=str(tmp_path))
    loaded, report = obtain_shape_autoencoder(cfg, masks=np.zeros((0, 8, 8), int), num_classes=4)
    assert report == {"validation_dice": 0.93} and loaded.architecture() == ae.architecture()
    with pytest.raises(ValueError, match="has 4 classes, this label space has 7"):
        obtain_shape_autoencoder(cfg, masks=np.zeros((0, 8, 8), int), num_classes=7)


def test_obtain_loads_the_runs_own_prior_before_training(tmp_path):
    """A resumed run finds its prior in its folder: the masks are never gathered."""
    ae = ShapeAutoencoder(num_classes=4, base_channels=4, code_channels=3, depth=2)
    save_autoencoder(ae, tmp_path, metadata={"train_dice": 0.8})

    def masks():
        raise AssertionError("masks gathered although a saved prior exists")

    loaded, report = obtain_shape_autoencoder(ShapePriorConfig(), masks, 4, directory=tmp_path)
    assert report == {"train_dice": 0.8} and loaded.architecture() == ae.architecture()
    with pytest.raises(ValueError, match="has 4 classes, this label space has 5"):
        obtain_shape_autoencoder(ShapePriorConfig(), masks, 5, directory=tmp_path)


def test_obtain_trains_from_a_mask_function_and_saves(tmp_path):
    cfg = ShapePriorConfig(steps=2, batch_size=2, base_channels=4, code_channels=2, depth=1)
    calls = []

    def masks():
        calls.append(1)
        return shapes(4, seed=5, size=16), None

    ae, report = obtain_shape_autoencoder(cfg, masks, 4, directory=tmp_path / "p", progress=False)
    assert calls == [1] and report["steps"] == 2 and report["validation_dice"] is None
    assert autoencoder_metadata(tmp_path / "p")["num_masks"] == 4
    _, again = obtain_shape_autoencoder(cfg, masks, 4, directory=tmp_path / "p")
    assert calls == [1] and again["num_masks"] == 4
    obtain_shape_autoencoder(cfg, masks, 4, directory=tmp_path / "q", progress=False, save=False)
    assert not (tmp_path / "q").exists()


# --- the shape-prior loss -------------------------------------------------------------------


def test_shape_prior_is_zero_for_a_perfect_prediction(trained):
    ae, _ = trained
    gt = onehot(shapes(6, seed=3))
    assert shape_prior_loss(ae, gt.clone(), gt).item() == 0.0


def test_shape_prior_equals_squared_code_distance(trained):
    ae, _ = trained
    gt = onehot(shapes(3, seed=4))
    pred = torch.softmax(
        3 * gt + torch.randn(gt.shape, generator=torch.Generator().manual_seed(0)), 1
    )
    with torch.no_grad():
        code = ae.encode(gt)
        per_sample = ((ae.encode(pred) - code) ** 2).sum(dim=(1, 2, 3)) / code[0].numel()
    assert shape_prior_loss(ae, pred, gt).item() == pytest.approx(
        per_sample.mean().item(), rel=1e-5
    )


def test_shape_prior_grows_with_pixel_corruption(trained):
    ae, _ = trained
    masks = shapes(16, seed=5)
    rng = np.random.default_rng(0)
    order = rng.permutation(masks[0].size)  # nested corruption: a prefix of one fixed order
    shift = rng.integers(1, 4, size=masks[0].size)
    gt = onehot(masks)
    losses = []
    for fraction in (0.0, 0.05, 0.1, 0.2, 0.4, 0.8):
        corrupted = masks.reshape(len(masks), -1).copy()
        flipped = order[: int(fraction * order.size)]
        corrupted[:, flipped] = (corrupted[:, flipped] + shift[flipped]) % 4  # another class
        losses.append(shape_prior_loss(ae, onehot(corrupted.reshape(masks.shape)), gt).item())
    assert losses[0] == 0.0
    assert all(b > a for a, b in pairwise(losses)), losses


def test_shape_prior_grows_with_soft_corruption(trained):
    ae, _ = trained
    gt = onehot(shapes(16, seed=6))
    uniform = torch.full_like(gt, 0.25)
    losses = [
        shape_prior_loss(ae, (1 - a) * gt + a * uniform, gt).item() for a in (0, 0.25, 0.5, 0.75, 1)
    ]
    assert losses[0] == 0.0
    assert all(b > a for a, b in pairwise(losses)), losses


def test_shape_prior_gradients_reach_the_prediction_only():
    torch.manual_seed(0)
    ae = ShapeAutoencoder(num_classes=3, base_channels=4, code_channels=4, depth=2)  # not frozen
    gt = onehot(np.random.default_rng(0).integers(0, 3, (2, 8, 8)), 3)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    shape_prior_loss(ae, torch.softmax(logits, 1), gt).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert all(p.grad is None for p in ae.parameters())


# --- adversarial terms ----------------------------------------------------------------------


class MeanLogit(nn.Module):
    """D(code) = w * mean(code): logits that are easy to compute by hand."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0))

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.w * code.mean(dim=(1, 2, 3))


def test_adversarial_losses_by_hand():
    # D(pred) = 0 for both samples, D(gt) = 2 and -1.
    # generator = mean softplus(-0) = log 2
    # discriminator = (mean(softplus(-2), softplus(1)) + mean softplus(0)) / 2
    code_pred = torch.zeros(2, 1, 1, 1, requires_grad=True)
    code_gt = torch.tensor([2.0, -1.0]).reshape(2, 1, 1, 1)
    generator, discriminator = adversarial_losses(MeanLogit(), code_pred, code_gt)
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    assert generator.item() == pytest.approx(math.log(2), abs=1e-6)
    expected = ((softplus(-2) + softplus(1)) / 2 + softplus(0)) / 2
    assert discriminator.item() == pytest.approx(expected, abs=1e-6)


def test_adversarial_gradients_are_routed():
    disc = MeanLogit()
    code_pred = torch.rand(2, 1, 2, 2, requires_grad=True)
    generator, discriminator = adversarial_losses(disc, code_pred, torch.rand(2, 1, 2, 2))
    generator.backward(retain_graph=True)
    assert disc.w.grad is None and code_pred.grad.abs().sum() > 0  # trains the segmenter only
    code_pred.grad = None
    discriminator.backward()
    assert disc.w.grad is not None and code_pred.grad is None  # trains the discriminator only
