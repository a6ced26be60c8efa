"""DomainBatchNorm2d against K separate BatchNorm2d layers, routing, and conversion."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from jointseg.models import DomainBatchNorm2d, DomainRouting, convert_to_domain_bn

C = 3
K = 4


def _random_dsbn(seed: int = 0) -> DomainBatchNorm2d:
    """A layer whose domains all differ (affine and running statistics)."""
    generator = torch.Generator().manual_seed(seed)
    layer = DomainBatchNorm2d(C, K, momentum=0.3)
    with torch.no_grad():
        for bn in layer.bns:
            bn.weight.copy_(torch.rand(C, generator=generator) + 0.5)
            bn.bias.copy_(torch.randn(C, generator=generator))
            bn.running_mean.copy_(torch.randn(C, generator=generator))
            bn.running_var.copy_(torch.rand(C, generator=generator) + 0.5)
    return layer


def _references(layer: DomainBatchNorm2d) -> list[nn.BatchNorm2d]:
    return [copy.deepcopy(bn) for bn in layer.bns]


def _reference_forward(refs: list[nn.BatchNorm2d], x: torch.Tensor, domains: torch.Tensor):
    out = torch.empty_like(x)
    for d in domains.unique().tolist():
        mask = domains == d
        out[mask] = refs[d](x[mask])
    return out


def _assert_same_state(layer: DomainBatchNorm2d, refs: list[nn.BatchNorm2d]) -> None:
    for bn, ref in zip(layer.bns, refs, strict=True):
        for name, value in ref.state_dict().items():
            torch.testing.assert_close(bn.state_dict()[name], value, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "domain_list",
    [[2, 0, 1, 0, 2, 1, 0], [0, 0, 1, 1, 1, 2], [1, 1, 1, 1], [3, 0]],
    ids=["mixed-unsorted", "mixed-grouped", "single", "two"],
)
@pytest.mark.parametrize("training", [True, False])
def test_matches_separate_batchnorms(domain_list: list[int], training: bool) -> None:
    layer = _random_dsbn()
    refs = _references(layer)
    layer.train(training)
    for ref in refs:
        ref.train(training)
    domains = torch.tensor(domain_list)
    generator = torch.Generator().manual_seed(1)
    for step in range(2):  # two steps: running statistics compound
        x = torch.randn(len(domain_list), C, 5, 4, generator=generator) * (step + 1) + step
        out = layer(x, domains)
        expected = _reference_forward(refs, x, domains)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    _assert_same_state(layer, refs)


def test_only_present_domains_update_running_stats() -> None:
    layer = _random_dsbn()
    before = copy.deepcopy(layer.state_dict())
    layer.train()
    layer(torch.randn(5, C, 4, 4), torch.tensor([2, 0, 2, 0, 2]))
    after = layer.state_dict()
    for d in range(K):
        changed = not torch.equal(before[f"bns.{d}.running_mean"], after[f"bns.{d}.running_mean"])
        assert changed == (d in (0, 2))
        assert int(after[f"bns.{d}.num_batches_tracked"]) == (1 if d in (0, 2) else 0)


def test_gradients_reach_only_present_domains() -> None:
    layer = _random_dsbn()
    refs = _references(layer)
    domains = torch.tensor([1, 3, 1, 3, 3])
    x = torch.randn(5, C, 4, 4, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    weights = torch.randn(5, C, 4, 4)
    (layer(x, domains) * weights).sum().backward()
    (_reference_forward(refs, x_ref, domains) * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    for d in range(K):
        if d in (1, 3):
            torch.testing.assert_close(layer.bns[d].weight.grad, refs[d].weight.grad)
            torch.testing.assert_close(layer.bns[d].bias.grad, refs[d].bias.grad)
        else:
            assert layer.bns[d].weight.grad is None and layer.bns[d].bias.grad is None


def test_eval_sample_uses_own_domain_statistics() -> None:
    layer = _random_dsbn().eval()
    x = torch.randn(1, C, 3, 3)
    for d in range(K):
        bn = layer.bns[d]
        expected = (x - bn.running_mean[None, :, None, None]) / torch.sqrt(
            bn.running_var[None, :, None, None] + bn.eps
        ) * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
        torch.testing.assert_close(layer(x, torch.tensor([d])), expected)


def test_routing_object_equals_tensor_ids() -> None:
    layer = _random_dsbn().train()
    twin = copy.deepcopy(layer)
    domains = torch.tensor([3, 1, 1, 0, 3])
    x = torch.randn(5, C, 4, 4)
    routing = DomainRouting.from_domains(domains, K)
    torch.testing.assert_close(layer(x, domains), twin(x, routing), rtol=0, atol=0)


def test_routing_fields() -> None:
    routing = DomainRouting.from_domains(torch.tensor([2, 0, 2, 1]), 3)
    assert routing.domains == (0, 1, 2) and routing.counts == (1, 1, 2)
    assert routing.order.tolist() == [1, 3, 0, 2]
    assert routing.order[routing.inverse].tolist() == [0, 1, 2, 3]
    assert {d: p.tolist() for d, p in routing.positions().items()} == {0: [1], 1: [3], 2: [0, 2]}
    grouped = DomainRouting.from_domains([0, 0, 2], 3)
    assert grouped.grouped and grouped.positions()[2].tolist() == [2]
    assert DomainRouting.single(4).positions()[0].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("bad", [[0, 4], [-1, 0]])
def test_out_of_range_domain_is_an_error(bad: list[int]) -> None:
    with pytest.raises(ValueError, match="out of range"):
        _random_dsbn()(torch.randn(2, C, 2, 2), torch.tensor(bad))


def test_batch_size_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="covers 2 samples"):
        _random_dsbn()(torch.randn(3, C, 2, 2), DomainRouting.from_domains([0, 1], K))


def test_convert_seeds_every_domain_with_the_original() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, C, 3), nn.BatchNorm2d(C), nn.ReLU(), nn.Sequential(nn.BatchNorm2d(C))
    )
    with torch.no_grad():
        for bn in (net[1], net[3][0]):
            bn.weight.uniform_(0.5, 2)
            bn.bias.normal_()
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2)
            bn.num_batches_tracked.fill_(7)
    originals = [copy.deepcopy(net[1]), copy.deepcopy(net[3][0])]
    net.eval()
    converted = convert_to_domain_bn(net, 3)
    assert converted is net
    assert isinstance(net[1], DomainBatchNorm2d) and isinstance(net[3][0], DomainBatchNorm2d)
    assert not any(type(m) is nn.BatchNorm2d and m not in _inner(net) for m in net.modules())
    for layer, original in zip((net[1], net[3][0]), originals, strict=True):
        assert not layer.training
        for bn in layer.bns:
            for name, value in original.state_dict().items():
                assert torch.equal(bn.state_dict()[name], value)
    # a second conversion leaves domain-specific layers alone
    assert convert_to_domain_bn(net, 5)[1].num_domains == 3
    bare = convert_to_domain_bn(nn.BatchNorm2d(C), 2)
    assert isinstance(bare, DomainBatchNorm2d) and bare.num_domains == 2


def _inner(net: nn.Module) -> set[nn.Module]:
    return {bn for m in net.modules() if isinstance(m, DomainBatchNorm2d) for bn in m.bns}


# ------------------------------------------------------------------- test-time adaptation
def _tiny_net(domain_specific_bn: bool) -> nn.Module:
    """The prediction tests' tiny architecture, random, every BN layer with its own statistics."""
    from jointseg.models import build_model
    from tests.tiny_model import MODEL

    torch.manual_seed(0)
    net = build_model(MODEL, [3, 3] if domain_specific_bn else [3], domain_specific_bn)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2)
                module.num_batches_tracked.fill_(11)
    return net.eval()


def _batch_statistics(features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and unbiased variance of each batch, averaged over the batches."""
    means = torch.stack([f.mean(dim=(0, 2, 3)) for f in features])
    variances = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in features])
    return means.mean(0), variances.mean(0)


def _assert_same_net_state(net: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = net.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_adapted_statistics_are_the_batches_and_only_the_domains() -> None:
    from jointseg.models.dsbn import adapted_domain_statistics, domain_batchnorm_layers

    net = _tiny_net(domain_specific_bn=True)
    before = copy.deepcopy(net.state_dict())
    generator = torch.Generator().manual_seed(3)
    batches = [torch.randn(6, 1, 64, 64, generator=generator) * s + s for s in (1.0, 2.5)]
    probe = torch.randn(2, 1, 64, 64, generator=generator)
    with torch.no_grad():
        plain = [net(probe, torch.full((2,), d)).logits[d] for d in (0, 1)]

    def estimate() -> None:
        for x in batches:
            net(x, torch.full((len(x),), 1))

    with adapted_domain_statistics(net, 1, estimate) as layers:
        assert layers == domain_batchnorm_layers(net, 1)
        assert len(layers) == sum(isinstance(m, DomainBatchNorm2d) for m in net.modules())
        stem = net.encoder.bn1.bns[1]
        assert stem is layers[0]
        with torch.no_grad():
            mean, var = _batch_statistics([net.encoder.conv1(x) for x in batches])
        torch.testing.assert_close(stem.running_mean, mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stem.running_var, var, rtol=1e-5, atol=1e-5)
        state = net.state_dict()
        for key, value in before.items():
            moved = not torch.equal(state[key], value)
            assert moved == (".bns.1." in key and not key.endswith(("weight", "bias"))), key
        assert not any(m.training for m in net.modules())  # the new statistics normalize
        assert all(bn.momentum is None for bn in layers)
        with torch.no_grad():
            inside = [net(probe, torch.full((2,), d)).logits[d] for d in (0, 1)]
        assert torch.equal(inside[0], plain[0])  # the other domain: as trained
        assert not torch.allclose(inside[1], plain[1])
    _assert_same_net_state(net, before)
    assert all(bn.momentum == 0.1 for bn in layers)
    with torch.no_grad():
        assert torch.equal(net(probe, torch.full((2,), 1)).logits[1], plain[1])


def test_adaptation_of_a_network_with_plain_batchnorm() -> None:
    from jointseg.models.dsbn import adapted_domain_statistics

    net = _tiny_net(domain_specific_bn=False)
    before = copy.deepcopy(net.state_dict())
    x = torch.randn(5, 1, 64, 64) * 3 - 1
    with adapted_domain_statistics(net, 0, lambda: net(x)) as layers:
        assert layers == [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        with torch.no_grad():
            mean, var = _batch_statistics([net.encoder.conv1(x)])
        torch.testing.assert_close(net.encoder.bn1.running_mean, mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(net.encoder.bn1.running_var, var, rtol=1e-5, atol=1e-5)
    _assert_same_net_state(net, before)


def test_statistics_are_restored_after_an_error() -> None:
    from jointseg.models.dsbn import adapted_domain_statistics

    net = _tiny_net(domain_specific_bn=True).train()  # a network in training mode stays so
    before = copy.deepcopy(net.state_dict())
    x = torch.randn(4, 1, 64, 64)

    def failing() -> None:
        net(x, torch.zeros(4, dtype=torch.long))
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        with adapted_domain_statistics(net, 0, failing):
            pass
    with pytest.raises(KeyError):
        with adapted_domain_statistics(net, 0, lambda: net(x, torch.zeros(4, dtype=torch.long))):
            raise KeyError("inside")
    _assert_same_net_state(net, before)
    assert all(m.training for m in net.modules())
    with pytest.raises(ValueError, match="out of range"):
        with adapted_domain_statistics(net, 2, lambda: None):
            pass
    with pytest.raises(ValueError, match="no BatchNorm2d"):
        with adapted_domain_statistics(nn.Conv2d(1, 1, 1), 0, lambda: None):
            pass
