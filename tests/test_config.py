"""Experiment config: validation errors name the key and the file; round trip through YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jointseg.config import (
    SHIPPED_CONFIGS,
    ConfigError,
    dump_config,
    load_config,
    save_config,
    shipped_config_text,
)

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


@pytest.mark.parametrize("name", ["demo.yaml", "paper.yaml", "robust.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    config = load_config(ROOT / "configs" / name)
    assert len(config.datasets) == 3


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_shipped_configs_load_by_name_from_any_folder(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # outside the checkout: no configs/ folder here
    assert load_config(name) == load_config(ROOT / "configs" / f"{name}.yaml")
    assert shipped_config_text(name) == (ROOT / "configs" / f"{name}.yaml").read_text("utf-8")


def test_a_file_named_like_a_shipped_config_wins_and_unknown_names_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").write_text(yaml.safe_dump(BASE), encoding="utf-8")
    assert load_config("demo") == load_config(_write(tmp_path, BASE))
    with pytest.raises(ConfigError, match="not found"):
        load_config("no-such-config")
    with pytest.raises(ConfigError, match="shipped"):
        shipped_config_text("no-such-config")
