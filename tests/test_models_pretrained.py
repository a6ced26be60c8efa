"""Pretrained encoder weights from torchvision-format state dicts (written by the tests)."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from jointseg.config import ModelConfig
from jointseg.models import (
    IMAGENET_URLS,
    PretrainedWeightsError,
    ResNetEncoder,
    build_model,
    load_encoder_weights,
)
from jointseg.models import pretrained as pretrained_module


def _torchvision_state(arch: str = "resnet18", seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with torchvision's ResNet names (RGB input, fc included), random values."""
    torch.manual_seed(seed)
    source = ResNetEncoder(arch, in_channels=3, width=1.0)
    with torch.no_grad():
        for name, value in source.state_dict().items():
            if name.endswith("running_var"):
                value.uniform_(0.5, 2.0)
            elif name.endswith("num_batches_tracked"):
                value.fill_(11)
            else:
                value.normal_(0, 0.05)
    state = dict(source.state_dict())
    state["fc.weight"] = torch.randn(1000, source.channels[-1])
    state["fc.bias"] = torch.randn(1000)
    return state


def _cfg(path: str, encoder: str = "resnet18", **kwargs) -> ModelConfig:
    kwargs.setdefault("decoder_channels", (16, 16, 8, 8, 8))
    kwargs.setdefault("feature_taps", ())
    return ModelConfig(encoder=encoder, width=1.0, encoder_weights=path, **kwargs)


@pytest.fixture(scope="module")
def state_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    state = _torchvision_state()
    path = tmp_path_factory.mktemp("weights") / "resnet18-test.pth"
    torch.save(state, path)
    return path, state


def test_torchvision_state_dict_loads_by_path(state_file) -> None:
    path, state = state_file
    net = build_model(_cfg(str(path)), [3, 4], domain_specific_bn=True)
    loaded = net.encoder.state_dict()
    torch.testing.assert_close(loaded["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))
    for name, value in state.items():
        if name.startswith("fc.") or name == "conv1.weight":
            continue
        if ".bn" in name or name.startswith("bn1.") or "downsample.1." in name:
            module, leaf = name.rsplit(".", 1)
            for d in range(2):  # every domain seeded with the file's BN
                assert torch.equal(loaded[f"{module}.bns.{d}.{leaf}"], value), name
        else:
            assert torch.equal(loaded[name], value), name


def test_grey_input_matches_rgb_replicated(state_file) -> None:
    """Summing conv1 over RGB equals feeding the grey image to all three channels."""
    path, state = state_file
    rgb = ResNetEncoder("resnet18", in_channels=3, width=1.0)
    rgb.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
    grey = ResNetEncoder("resnet18", in_channels=1, width=1.0)
    load_encoder_weights(grey, str(path))
    rgb.eval()
    grey.eval()
    x = torch.randn(2, 1, 64, 64)
    domains = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        expected = rgb(x.repeat(1, 3, 1, 1), domains)
        actual = grey(x, domains)
    for a, b in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k", [3, 5])
def test_context_slices_share_the_grey_weights(state_file, k: int) -> None:
    """k identical slices give the grey 2D encoder's response, even for k = 3 (not RGB)."""
    path, state = state_file
    encoder = ResNetEncoder("resnet18", in_channels=k, width=1.0)
    load_encoder_weights(encoder, str(path))
    grey_weights = state["conv1.weight"].sum(1, keepdim=True)
    torch.testing.assert_close(encoder.conv1.weight, (grey_weights / k).repeat(1, k, 1, 1))
    grey = ResNetEncoder("resnet18", in_channels=1, width=1.0)
    load_encoder_weights(grey, str(path))
    encoder.eval()
    grey.eval()
    x = torch.randn(2, 1, 64, 64)
    domains = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        expected = grey(x, domains)
        actual = encoder(x.repeat(1, k, 1, 1), domains)
        different = encoder(torch.cat([x, torch.randn(2, k - 1, 64, 64)], 1), domains)
    for a, b in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(different[0], expected[0], atol=1e-3)  # neighbours do count


def test_safetensors_and_wrapped_files_load(tmp_path: Path, state_file) -> None:
    _, state = state_file
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    flat = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(flat))
    for path in (wrapped, flat):
        encoder = ResNetEncoder("resnet18", in_channels=3, width=1.0)
        load_encoder_weights(encoder, str(path))
        assert torch.equal(encoder.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])


def test_width_other_than_one_is_refused(state_file) -> None:
    path, _ = state_file
    cfg = ModelConfig(width=0.5, encoder_weights=str(path))
    with pytest.raises(PretrainedWeightsError, match="width 1.0"):
        build_model(cfg, [2], False)


def test_wrong_architecture_names_the_layers(tmp_path: Path, state_file) -> None:
    path, _ = state_file
    with pytest.raises(PretrainedWeightsError) as info:
        build_model(_cfg(str(path), "resnet34"), [2], False)
    assert "layers missing from the source" in str(info.value)
    assert "layer1.2.conv1\n" in str(info.value)
    extra = tmp_path / "extra.pth"
    state = _torchvision_state()
    state["layer1.0.bn1.weight"] = torch.ones(32)
    state["layer9.weight"] = torch.ones(1)
    torch.save(state, extra)
    with pytest.raises(PretrainedWeightsError) as info:
        build_model(_cfg(str(extra)), [2], True)
    message = str(info.value)
    assert "layer1.0.bn1.weight: file (32,), encoder (64,)" in message
    assert "unexpected layers in the source (1 keys)" in message and "    layer9" in message


def test_missing_file_is_explained(tmp_path: Path) -> None:
    with pytest.raises(PretrainedWeightsError, match="not found"):
        build_model(_cfg(str(tmp_path / "nope.pth")), [2], False)


def test_imagenet_uses_torch_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    state = _torchvision_state()
    calls = []

    def fake_load(url, **kwargs):
        calls.append((url, kwargs))
        return state

    monkeypatch.setattr(pretrained_module.torch.hub, "load_state_dict_from_url", fake_load)
    net = build_model(_cfg("imagenet", context_slices=3), [2], False)
    assert calls[0][0] == IMAGENET_URLS["resnet18"]
    assert calls[0][1]["weights_only"] is True and calls[0][1]["check_hash"] is True
    expected = (state["conv1.weight"].sum(1, keepdim=True) / 3).repeat(1, 3, 1, 1)
    torch.testing.assert_close(net.encoder.conv1.weight, expected)


def test_imagenet_offline_says_what_to_download(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(pretrained_module.torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(PretrainedWeightsError) as info:
        build_model(_cfg("imagenet", "resnet34"), [2], False)
    message = str(info.value)
    assert IMAGENET_URLS["resnet34"] in message
    assert "resnet34-b627a593.pth" in message and "encoder_weights" in message
    assert "hub" in message


def test_none_is_a_no_op() -> None:
    torch.manual_seed(0)
    encoder = ResNetEncoder("resnet18", width=0.25)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    load_encoder_weights(encoder, "none")
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
