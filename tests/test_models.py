"""JointSegNet: every variant, routing by domain, taps, embeddings, input checks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from jointseg.config import ModelConfig
from jointseg.models import TAP_NAMES, DomainBatchNorm2d, JointSegNet, build_model

HEADS = [4, 5, 3]
SIZE = 64
SCHEMES = {  # scheme -> (head classes, domain-specific BN)
    "mtmd": (HEADS, True),
    "shared": ([7], False),
    "individual": ([4], False),
}


def _cfg(encoder: str = "resnet18", width: float = 0.125, **kwargs) -> ModelConfig:
    return ModelConfig(encoder=encoder, width=width, projector_hidden=16, projector_dim=8, **kwargs)


def _net(encoder: str = "resnet18", scheme: str = "mtmd", **kwargs) -> JointSegNet:
    torch.manual_seed(0)
    heads, dsbn = SCHEMES[scheme]
    return build_model(_cfg(encoder, **kwargs), heads, dsbn)


def _batch(domains: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(len(domains), 1, SIZE, SIZE, generator=generator)
    return x, torch.tensor(domains)


@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("encoder", ["resnet18", "resnet34", "resnet50"])
def test_every_variant_runs_forward_and_backward(encoder: str, scheme: str) -> None:
    net = _net(encoder, scheme).train()
    x, domains = _batch([2, 0, 1, 0])
    out = net(x, domains, return_embeddings=True)
    heads = net.head_classes
    samples = out.per_sample()
    assert len(samples) == 4
    for i, logits in enumerate(samples):
        expected = heads[domains[i]] if len(heads) > 1 else heads[0]
        assert logits.shape == (expected, SIZE, SIZE)
    loss = sum(v.square().mean() for v in out.logits.values())
    loss = loss + sum(e.sum() for e in out.embeddings.values())
    loss.backward()
    assert net.encoder.conv1.weight.grad is not None
    assert all(p.grad is not None for p in net.projectors.parameters())
    has_dsbn = any(isinstance(m, DomainBatchNorm2d) for m in net.modules())
    assert has_dsbn == (scheme == "mtmd")


def test_single_head_ignores_domain_ids() -> None:
    net = _net(scheme="shared").eval()
    x, _ = _batch([0, 0, 0])
    a = net(x, torch.tensor([0, 5, 9]))
    b = net(x)
    assert list(a.logits) == [0] and a.index[0].tolist() == [0, 1, 2]
    assert torch.equal(a.logits[0], b.logits[0])


def test_mtmd_converts_every_batchnorm() -> None:
    plain = _net(scheme="individual")
    mtmd = _net(scheme="mtmd")
    n_plain = sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    dsbns = [m for m in mtmd.modules() if isinstance(m, DomainBatchNorm2d)]
    assert len(dsbns) == n_plain and all(m.num_domains == 3 for m in dsbns)
    assert mtmd.num_domains == 3 and len(mtmd.heads) == 3


@pytest.mark.parametrize("training", [False, True])
def test_mixed_batch_equals_per_domain_sub_batches(training: bool) -> None:
    """Domain-specific BN makes every domain's samples independent of the other domains'."""
    net = _net()
    twin = copy.deepcopy(net)
    net.train(training)
    twin.train(training)
    x, domains = _batch([2, 0, 1, 0, 2, 1])
    mixed = net(x, domains, return_embeddings=True)
    for d in range(3):
        positions = (domains == d).nonzero().flatten()
        assert mixed.index[d].tolist() == positions.tolist()
        alone = twin(x[positions], domains[positions], return_embeddings=True)
        torch.testing.assert_close(mixed.logits[d], alone.logits[d], rtol=1e-4, atol=1e-5)
        for tap, vectors in mixed.embeddings.items():
            torch.testing.assert_close(
                vectors[positions], alone.embeddings[tap], rtol=1e-4, atol=1e-5
            )
    if training:  # the running statistics saw the same per-domain batches
        for (name, a), b in zip(net.state_dict().items(), twin.state_dict().values(), strict=True):
            if "running" in name:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gradients_reach_only_present_domains() -> None:
    net = _net().train()
    x, domains = _batch([2, 0, 2])
    out = net(x, domains)
    sum(v.mean() for v in out.logits.values()).backward()
    assert net.heads[1].weight.grad is None
    assert net.heads[0].weight.grad is not None and net.heads[2].weight.grad is not None
    for module in net.modules():
        if isinstance(module, DomainBatchNorm2d):
            assert module.bns[1].weight.grad is None
            assert module.bns[0].weight.grad is not None
            assert module.bns[2].weight.grad is not None


def test_embeddings_are_unit_vectors_in_batch_order() -> None:
    net = _net(feature_taps=("enc0", "enc4", "dec0", "dec4")).eval()
    x, domains = _batch([1, 0, 2, 0])
    out = net(x, domains, return_embeddings=True)
    assert list(out.embeddings) == ["enc0", "enc4", "dec0", "dec4"]
    for vectors in out.embeddings.values():
        assert vectors.shape == (4, 8)
        torch.testing.assert_close(vectors.norm(dim=1), torch.ones(4))
    single = net(x[2:3], domains[2:3], return_embeddings=True)
    torch.testing.assert_close(out.embeddings["dec0"][2:3], single.embeddings["dec0"])
    assert net(x, domains).embeddings == {}


def test_tap_shapes_and_channels() -> None:
    net = _net(width=0.25).eval()
    assert net.encoder.channels == (16, 16, 32, 64, 128)
    assert net.decoder.channels == (64, 32, 16, 8, 4)
    x, domains = _batch([0, 1])
    with torch.no_grad():
        features = net.encoder(x, domains)
        decoded = net.decoder(features, domains)
    strides = (2, 4, 8, 16, 32, 16, 8, 4, 2, 1)
    for name, stride, tensor in zip(TAP_NAMES, strides, [*features, *decoded], strict=True):
        assert tensor.shape == (2, net.tap_channels[name], SIZE // stride, SIZE // stride)
    wide = build_model(_cfg("resnet50", width=0.25), [2], False)
    assert wide.encoder.channels == (16, 64, 128, 256, 512)


def test_input_checks() -> None:
    net = _net().eval()
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.randn(1, 1, 48, 64), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        net(torch.randn(1, 3, 64, 64), torch.tensor([0]))
    with pytest.raises(ValueError, match="pass the domain ids"):
        net(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="out of range"):
        net(torch.randn(2, 1, 64, 64), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="shape"):
        net(torch.randn(2, 1, 64, 64), torch.tensor([0]))
    with pytest.raises(ValueError, match="unknown feature taps"):
        build_model(_cfg(feature_taps=("enc5",)), [2], False)
    with pytest.raises(ValueError, match="5 decoder stages"):
        build_model(_cfg(decoder_channels=(64, 32)), [2], False)


def test_forward_is_deterministic() -> None:
    a = _net().eval()
    b = _net().eval()
    x, domains = _batch([1, 2, 0])
    assert torch.equal(a(x, domains).logits[1], b(x, domains).logits[1])
