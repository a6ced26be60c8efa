"""``jointseg init``: a valid, commented config for the datasets of a study folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from jointseg.cli import app
from jointseg.config import load_config
from jointseg.data.manifest import domain_name_of
from jointseg.workflows.init_config import find_datasets, write_init_config
from tests.conftest import write_dataset


@pytest.mark.parametrize(
    ("folder", "name"),
    [
        ("Dataset002_Knee", "knee"),
        ("Dataset120_KneeT1", "knee_t1"),
        ("/x/Dataset004_Elbow", "elbow"),
        ("Dataset7_Hip Left", "hip_left"),
        ("my-ankles", "my_ankles"),
        ("Dataset003_", "dataset003"),
    ],
)
def test_domain_names_come_from_the_folder_names(folder, name):
    assert domain_name_of(folder) == name


def _study(root: Path, folders: list[str]) -> Path:
    study = root / "study"
    for index, folder in enumerate(folders):
        write_dataset(study, name=folder, cases=2 + index, test_cases=index,
                      structures={"femur": 1, "tibia": 2})  # fmt: skip
    return study


def test_several_datasets_get_full_and_a_config_train_reads(tmp_path):
    study = _study(tmp_path, ["Dataset002_Knee", "Dataset001_Ankle", "Dataset009_Knee"])
    path, found, scheme = write_init_config(study, base="demo")
    assert path == study / "jointseg.yaml" and scheme == "full"
    assert [(f.name, f.folder, f.training, f.held_out) for f in found] == [
        ("ankle", "Dataset001_Ankle", 3, 1),
        ("knee", "Dataset002_Knee", 2, 0),
        ("knee_2", "Dataset009_Knee", 4, 2),
    ]
    config = load_config(path)
    demo = load_config("demo")
    assert [(d.name, d.folder) for d in config.datasets] == [
        ("ankle", "Dataset001_Ankle"), ("knee", "Dataset002_Knee"), ("knee_2", "Dataset009_Knee")
    ]  # fmt: skip
    assert config.scheme == "full" and config.name == "study"
    assert config.model == demo.model and config.training == demo.training
    text = path.read_text()
    assert "#   knee_2: Dataset009_Knee, 4 training and 2 held-out cases; femur, tibia" in text
    assert f"jointseg train --config {path} --data {study} --out runs/full" in text


def test_one_dataset_gets_individual_and_the_adapt_command(tmp_path):
    study = _study(tmp_path, ["Dataset002_Knee"])
    path, _, scheme = write_init_config(study, tmp_path / "knee.yaml", base="paper")
    assert scheme == "individual" and path == tmp_path / "knee.yaml"
    config = load_config(path)
    assert config.scheme == "individual"
    assert config.model == load_config("paper").model
    text = path.read_text()
    dataset = study / "Dataset002_Knee"
    assert f"jointseg adapt pretrained --dataset {dataset} --name knee_site" in text
    assert "which knows the knee" in text


def test_an_existing_config_is_kept_without_force(tmp_path):
    study = _study(tmp_path, ["Dataset002_Knee", "Dataset001_Ankle"])
    path = study / "jointseg.yaml"
    path.write_text("# mine\n")
    with pytest.raises(FileExistsError, match="jointseg.yaml: exists; --force"):
        write_init_config(study)
    assert path.read_text() == "# mine\n"
    write_init_config(study, force=True)
    assert load_config(path).scheme == "full"


def test_bad_calls_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="--base 'huge': choose one of demo"):
        write_init_config(_study(tmp_path, ["Dataset002_Knee"]), base="huge")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty: no dataset.json here nor in any sub-folder"):
        find_datasets(empty)


def test_the_command_writes_and_then_refuses_to_overwrite(tmp_path):
    study = _study(tmp_path, ["Dataset002_Knee", "Dataset001_Ankle"])
    runner = CliRunner()
    first = runner.invoke(app, ["init", str(study)])
    assert first.exit_code == 0, first.output
    assert "ankle: Dataset001_Ankle, 3 training and 1 held-out cases" in first.output
    assert f"wrote {study / 'jointseg.yaml'} (scheme full)" in first.output
    again = runner.invoke(app, ["init", str(study)])
    assert again.exit_code == 2
    assert "exists; --force replaces it" in again.output
