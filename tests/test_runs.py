"""RunFolder: the one owner of a run folder's layout, its typed config and index."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import jointseg
from jointseg.config import ExperimentConfig
from jointseg.runs import DomainEntry, ModelEntry, RunError, RunFolder, RunInfo

FILE_NAMES = (
    RunFolder.CONFIG,
    RunFolder.INDEX,
    RunFolder.CURVES,
    RunFolder.DOMAIN_REFERENCE,
    RunFolder.CALIBRATION,
    RunFolder.ANATOMY_REFERENCE,
    RunFolder.POSTPROCESSING,
    RunFolder.ADAPTATION,
)


def test_locations(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    assert run.config_file == tmp_path / "config.yaml"
    assert run.index_file == tmp_path / "run.json"
    assert RunFolder.model_path("main") == "models/main"
    assert run.model_dir("main") == tmp_path / "models" / "main"
    assert run.shape_prior_dir == tmp_path / "models" / "shape_prior"
    assert run.checkpoint_dir("main") == tmp_path / "checkpoints" / "main"
    assert run.logs_dir == tmp_path / "logs" and run.curves_file == tmp_path / "curves.png"
    assert run.domain_reference_file == tmp_path / "domain_reference.json"
    assert run.calibration_file == tmp_path / "domain_calibration.json"
    assert run.anatomy_reference_file == tmp_path / "anatomy_reference.json"
    assert run.postprocessing_file == tmp_path / "postprocessing.json"
    assert run.evaluation_dir == tmp_path / "evaluation" and run.onnx_dir == tmp_path / "onnx"
    assert RunFolder(str(tmp_path)) == run  # type: ignore[arg-type]


def test_typed_config_and_index(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    assert not run.is_run()
    with pytest.raises(RunError, match="not a run folder"):
        run.info()
    with pytest.raises(RunError, match="no config.yaml; not a complete run folder"):
        run.config()
    config = ExperimentConfig(datasets=[{"name": "knee", "folder": "Dataset001_Knee"}])
    run.save_config(config)
    assert run.config() == config
    info = RunInfo(
        scheme="mtmd",
        domains=[DomainEntry(name="knee", folder="Dataset001_Knee", structures={"femur": 1})],
        models=[ModelEntry(name="main", path=RunFolder.model_path("main"), domains=["knee"])],
    )
    run.save_info(info)
    assert run.is_run() and run.info() == info


def test_no_other_module_spells_a_run_folder_file_name() -> None:
    package = Path(jointseg.__file__).parent
    spelled = [
        f"{path.relative_to(package)}:{node.lineno} {node.value}"
        for path in sorted(package.rglob("*.py"))
        if path.name != "runs.py" or path.parent != package
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and node.value in FILE_NAMES
    ]
    assert spelled == []
