"""Experiment config: validation errors name the key and the file; round trip through YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jointseg.config import ConfigError, dump_config, load_config, save_config

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


BASE = {"datasets": [{"name": "knee", "folder": "Dataset002_Knee"}]}


def test_unknown_key_names_path_and_file(tmp_path: Path) -> None:
    path = _write(tmp_path, {**BASE, "training": {"epocks": 3}})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "training.epocks: unknown key" in str(info.value)


def test_ill_typed_key_names_path(tmp_path: Path) -> None:
    path = _write(tmp_path, {**BASE, "model": {"width": "wide"}})
    with pytest.raises(ConfigError, match=r"model\.width"):
        load_config(path)
    path = _write(tmp_path, {**BASE, "preprocessing": {"patch_size": [100, 128]}})
    with pytest.raises(ConfigError, match=r"preprocessing\.patch_size.*multiple of 32"):
        load_config(path)
    path = _write(tmp_path, {**BASE, "scheme": "magic"})
    with pytest.raises(ConfigError, match="scheme"):
        load_config(path)


def test_duplicate_domains_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, {"datasets": [BASE["datasets"][0], BASE["datasets"][0]]})
    with pytest.raises(ConfigError, match="unique"):
        load_config(path)


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, BASE), overrides={"training.epochs": 7})
    assert config.training.epochs == 7
    out = tmp_path / "run" / "config.yaml"
    save_config(config, out)
    text = out.read_text(encoding="utf-8")
    assert "iterations_per_epoch" in text  # every default written out
    assert load_config(out) == config
    assert dump_config(load_config(out)) == text


@pytest.mark.parametrize("name", ["demo.yaml", "paper.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    config = load_config(ROOT / "configs" / name)
    assert len(config.datasets) == 3
