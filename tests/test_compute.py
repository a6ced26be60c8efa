"""The precision and memory format a network computes in: the automatic choice on CPUs with
and without native bfloat16, the spellings, and channels-last weights saved as plain ones."""

from __future__ import annotations

import logging

import pytest
import torch

from jointseg.utils import compute
from jointseg.utils.compute import (
    LIGHTNING_PRECISION,
    as_memory_format,
    autocast_dtype,
    canonical,
    computing_in,
    cpu_computes_bf16,
    describe,
    resolve_precision,
    to_memory_format,
)


def fake_cpu(monkeypatch, *, bf16: bool, amx: bool = False, kernels: str = "AVX512") -> None:
    """Pretend to run on a CPU with these features (torch's own probes answer)."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: kernels)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)


@pytest.mark.parametrize(
    ("bf16", "amx", "kernels", "native"),
    [
        (True, False, "AVX512", True),  # AVX512-BF16 (Cooper Lake, Zen 4 and later)
        (False, True, "AVX512", True),  # AMX (Sapphire Rapids and later)
        (False, False, "AVX512", False),  # AVX-512 without bfloat16 (Skylake-X)
        (False, False, "AVX2", False),  # AVX2 only
        (True, False, "AVX2", False),  # bfloat16 hardware, kernels capped at AVX2
        (True, True, "DEFAULT", False),  # ATEN_CPU_CAPABILITY=default
    ],
)
def test_automatic_precision_follows_the_cpu(monkeypatch, bf16, amx, kernels, native) -> None:
    fake_cpu(monkeypatch, bf16=bf16, amx=amx, kernels=kernels)
    assert cpu_computes_bf16() is native
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "32")
    resolved = resolve_precision("auto", "cpu")
    assert describe("auto", resolved, "cpu").startswith("bf16" if native else "32")


def test_onednn_capped_below_bf16_is_not_native(monkeypatch) -> None:
    fake_cpu(monkeypatch, bf16=True)
    for isa, native in (("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", True),
                        ("AVX512_CORE_AMX", True), ("ALL", True)):  # fmt: skip
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
        assert cpu_computes_bf16() is native, isa


def test_explicit_choices_on_a_cpu(monkeypatch, caplog) -> None:
    fake_cpu(monkeypatch, bf16=False, kernels="AVX2")
    assert resolve_precision("32", "cpu") == "32"
    assert resolve_precision("16-mixed", "cpu") == "32"  # no faster float16 path on a CPU
    with caplog.at_level(logging.WARNING, logger=compute.__name__):
        assert resolve_precision("bf16-mixed", "cpu") == "bf16"  # kept, with a warning
    assert "emulated" in caplog.text
    fake_cpu(monkeypatch, bf16=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=compute.__name__):
        assert resolve_precision("bf16", "cpu") == "bf16"
    assert caplog.text == ""


def test_automatic_precision_on_cuda(monkeypatch) -> None:
    for supported, expected in ((True, "bf16"), (False, "16")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda s=supported: s)
        assert resolve_precision("auto", "cuda:0") == expected
    assert resolve_precision("16-mixed", "cuda") == "16"


def test_spellings_and_their_lightning_names() -> None:
    assert [canonical(p) for p in ("32-true", "bf16-mixed", "16-mixed", "auto", " BF16 ")] == [
        "32", "bf16", "16", "auto", "bf16",
    ]  # fmt: skip
    assert LIGHTNING_PRECISION == {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}
    assert autocast_dtype("32") is None and autocast_dtype("bf16-mixed") is torch.bfloat16
    with pytest.raises(ValueError, match="auto, 32, bf16"):
        canonical("int8")


def test_autocast_computes_in_the_chosen_dtype_only() -> None:
    conv = torch.nn.Conv2d(2, 3, 3)
    x = torch.randn(1, 2, 8, 8)
    with computing_in("32", "cpu"):
        assert conv(x).dtype == torch.float32
    with computing_in("bf16", "cpu"):
        assert conv(x).dtype == torch.bfloat16
    assert conv.weight.dtype == torch.float32  # the weights stay float32


def test_channels_last_weights_compute_the_same_and_save_plain(tmp_path) -> None:
    from jointseg.config import ModelConfig
    from jointseg.models import build_model, load_model, save_model

    torch.manual_seed(0)
    cfg = ModelConfig(encoder="resnet18", width=0.125, decoder_channels=(32, 16, 16, 8, 8))
    net = build_model(cfg, [3, 4], domain_specific_bn=True).eval()
    x = torch.randn(2, 1, 64, 64)
    domains = torch.tensor([0, 1])
    weight = net.decoder.blocks[0].conv1.weight
    assert not weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        plain = net(x, domains).per_sample()
        to_memory_format(net, True)
        assert net.decoder.blocks[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
        nhwc = net(as_memory_format(x, True), domains).per_sample()
    for a, b in zip(plain, nhwc, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)  # same sums, another order
    save_model(net, tmp_path / "m")
    loaded, _ = load_model(tmp_path / "m")
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert as_memory_format(torch.zeros(3, 4), True).shape == (3, 4)  # not 4D: unchanged
