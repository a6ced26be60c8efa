"""Model folders: safetensors + json round trip, and clear errors on mismatched shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jointseg.config import ModelConfig
from jointseg.models import (
    CheckpointError,
    JointSegNet,
    build_model,
    load_model,
    load_weights,
    save_model,
)


def _cfg(encoder: str = "resnet18") -> ModelConfig:
    return ModelConfig(
        encoder=encoder, width=0.125, projector_hidden=16, projector_dim=8, feature_taps=("enc3",)
    )


def _trained_net(heads=(4, 5, 3), dsbn: bool = True) -> JointSegNet:
    """A network whose weights and running statistics moved away from their initial values."""
    torch.manual_seed(0)
    net = build_model(_cfg(), list(heads), dsbn).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    for step in range(2):
        x = torch.randn(4, 1, 64, 64)
        out = net(x, torch.tensor([step % 3, 0, 1, 2][:4]), return_embeddings=True)
        loss = sum(v.mean() for v in out.logits.values()) + out.embeddings["enc3"].sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


def test_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    net = _trained_net()
    save_model(net, tmp_path / "model", metadata={"domains": ["ankle", "knee", "shoulder"]})
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "model.json",
        "model.safetensors",
    ]
    index = json.loads((tmp_path / "model" / "model.json").read_text(encoding="utf-8"))
    assert index["architecture"]["head_classes"] == [4, 5, 3]
    assert index["architecture"]["domain_specific_bn"] is True
    assert index["architecture"]["model"]["encoder"] == "resnet18"
    loaded, metadata = load_model(tmp_path / "model")
    assert metadata == {"domains": ["ankle", "knee", "shoulder"]}
    assert not loaded.training and loaded.head_classes == [4, 5, 3]
    x = torch.randn(3, 1, 64, 64)
    domains = torch.tensor([2, 0, 1])
    with torch.no_grad():
        a = net(x, domains, return_embeddings=True)
        b = loaded(x, domains, return_embeddings=True)
    for d in range(3):
        assert torch.equal(a.logits[d], b.logits[d])
    assert torch.equal(a.embeddings["enc3"], b.embeddings["enc3"])
    for key, value in net.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_saving_again_replaces_the_files(tmp_path: Path) -> None:
    net = _trained_net(heads=(3,), dsbn=False)
    save_model(net, tmp_path)
    save_model(net, tmp_path, metadata={"epoch": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]
    assert load_model(tmp_path)[1] == {"epoch": 2}


def test_mismatched_heads_name_the_layers(tmp_path: Path) -> None:
    save_model(_trained_net(), tmp_path)
    other = build_model(_cfg(), [4, 3, 3], True)
    with pytest.raises(CheckpointError) as info:
        load_weights(other, tmp_path)
    message = str(info.value)
    assert "mismatched shapes" in message and "heads [4, 5, 3]" in message
    assert "heads.1.weight: checkpoint (5, 2, 1, 1), model (3, 2, 1, 1)" in message
    assert "heads.0.weight" not in message


def test_other_encoder_lists_missing_and_unexpected_keys(tmp_path: Path) -> None:
    save_model(_trained_net(), tmp_path)
    with pytest.raises(CheckpointError) as info:
        load_weights(build_model(_cfg("resnet34"), [4, 5, 3], True), tmp_path)
    message = str(info.value)
    assert "layers missing from the source" in message and "encoder.layer1.2.conv1\n" in message
    with pytest.raises(CheckpointError) as info:
        load_weights(build_model(_cfg(), [4, 5, 3], False), tmp_path)
    message = str(info.value)
    assert "unexpected layers in the source" in message and "encoder.bn1.bns.*\n" in message
    assert "layers missing from the source" in message and "encoder.bn1\n" in message
    assert "domain-specific batch normalization" in message


def test_exclude_skips_the_heads(tmp_path: Path) -> None:
    source = _trained_net()
    save_model(source, tmp_path)
    target = build_model(_cfg(), [2, 2, 2], True)
    load_weights(target, tmp_path, exclude=("heads.",))
    assert torch.equal(target.encoder.conv1.weight, source.encoder.conv1.weight)
    assert target.heads[0].weight.shape == (2, 2, 1, 1)


def test_not_a_model_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="model.json"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"format": "other", "version": 1}))
    with pytest.raises(CheckpointError, match="unsupported format"):
        load_model(tmp_path)


def test_the_same_weights_give_the_same_bytes_in_every_process(tmp_path: Path) -> None:
    """The weights file carries one metadata entry: several come out in a per-process order."""
    import subprocess
    import sys

    script = (
        "import sys, torch; from pathlib import Path;"
        "from jointseg.models.checkpoint import save_module;"
        "torch.manual_seed(0); m = torch.nn.Linear(3, 2);"
        "save_module(m, Path(sys.argv[1]), {'in': 3, 'out': 2}, {'note': 1})"
    )
    files = []
    for i in range(6):  # with two entries, 6 processes agree by chance 1 time in 32
        folder = tmp_path / str(i)
        subprocess.run([sys.executable, "-c", script, str(folder)], check=True)
        files.append((folder / "model.safetensors").read_bytes())
    assert all(f == files[0] for f in files)
