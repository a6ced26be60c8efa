"""WholeViewInferer: padding to multiples of 32, one pass or gaussian sliding windows."""

from __future__ import annotations

import torch
from torch import nn

from jointseg.models import build_model
from jointseg.models.inferer import WholeViewInferer, pad_to_multiple
from jointseg.models.network import head_logits
from tests.tiny_model import MODEL


def test_padding_takes_each_slices_minimum_and_is_cropped_back() -> None:
    x = torch.randn(2, 1, 40, 70)
    padded = pad_to_multiple(x)
    assert padded.shape == (2, 1, 64, 96)
    assert torch.equal(padded[..., :40, :70], x)
    for b in range(2):
        assert torch.all(padded[b, :, 40:] == x[b].min())
    assert pad_to_multiple(torch.zeros(1, 1, 32, 64)).shape == (1, 1, 32, 64)

    seen = []
    out = WholeViewInferer()(x, lambda t: seen.append(t.shape) or t.repeat(1, 3, 1, 1))
    assert seen == [(2, 1, 64, 96)] and out.shape == (2, 3, 40, 70)


def test_sliding_windows_only_beyond_the_maximum() -> None:
    inferer = WholeViewInferer(max_in_plane=128)
    assert not inferer.windowed(128, 100) and inferer.windowed(129, 100)
    assert inferer.grid(129, 100) == (160, 128)
    calls = []
    inferer(torch.zeros(1, 1, 300, 90), lambda t: calls.append(t.shape) or t)
    assert all(shape[-2:] == (128, 96) for shape in calls) and len(calls) > 1


def test_sliding_windows_equal_one_pass_for_a_local_network() -> None:
    # A pointwise network gives every voxel the same value whatever window holds it: stitching,
    # gaussian weights, padding and cropping must give back the single pass exactly.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 1), nn.Tanh(), nn.Conv2d(4, 3, 1)).eval()
    x = torch.randn(3, 1, 150, 410)
    with torch.no_grad():
        whole = WholeViewInferer(max_in_plane=1024)(x, net)
        windows = WholeViewInferer(max_in_plane=96, overlap=0.5)(x, net)
    assert whole.shape == windows.shape == (3, 3, 150, 410)
    torch.testing.assert_close(windows, whole, rtol=1e-4, atol=1e-5)


def test_a_view_within_the_maximum_is_one_pass_of_the_network() -> None:
    torch.manual_seed(0)
    net = build_model(MODEL, [3], domain_specific_bn=False).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        direct = head_logits(net, x, 0)
        inferred = WholeViewInferer(max_in_plane=64)(x, lambda t: head_logits(net, t, 0))
    torch.testing.assert_close(inferred, direct)
