"""``pip install jointseg``: what the wheel holds, what each extra adds, and that predicting with
the shipped model needs neither the checkout nor the generator's packages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ("mujoco", "myo_sim", "musculoskeletal")  # the synth extra's import names


def _project() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _names(requirements: list[str]) -> set[str]:
    import re

    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_generator_packages_are_an_extra_and_dev_installs_every_extra():
    from jointseg.synth.anatomy import GENERATOR_PACKAGES

    project = _project()
    extras = project["optional-dependencies"]
    generator = set(GENERATOR_PACKAGES.values())
    assert not generator & _names(project["dependencies"])
    assert _names(extras["synth"]) == generator
    assert "jointseg[synth,onnx]" in extras["dev"] and "jointseg[synth,onnx]" in extras["all"]


def _blocking(code: str) -> str:
    """``code`` run with the generator's packages made unimportable."""
    block = "".join(f"sys.modules[{name!r}] = None\n" for name in GENERATOR)
    return f"import sys\n{block}{code}"


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "JOINTSEG_PRETRAINED"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_without_the_generator_synth_says_what_to_install_and_predict_works(tmp_path):
    from jointseg.inference.packaged import packaged_run_dir

    scan = tmp_path / "knee.nii.gz"
    shutil.copy(packaged_run_dir() / "reference_scan.nii.gz", scan)
    synth = _python(
        _blocking(
            "from jointseg.cli import app\n"
            "app(['synth', '--out', 'study', '--subjects', '2', '--test-subjects', '0'])\n"
        ),
        tmp_path,
    )
    assert synth.returncode == 2, synth.stderr
    message = synth.stderr.strip().splitlines()[-1]
    assert "mujoco, myo-sim, musculoskeletal-models" in message
    assert "pip install 'jointseg[synth]'" in message
    assert not (tmp_path / "study").exists()
    predict = _python(
        _blocking(
            "from jointseg.cli import app\n"
            "try:\n"
            "    app(['predict', 'pretrained', 'knee.nii.gz', '--out', 'pred', '--domain', 'knee',"
            " '--no-meshes'])\n"
            "except SystemExit as end:\n"
            "    assert not end.code, end.code\n"
            "assert not any(m in sys.modules and sys.modules[m] is not None for m in "
            f"{GENERATOR!r})\n"
        ),
        tmp_path,
    )
    assert predict.returncode == 0, predict.stderr
    assert (tmp_path / "pred" / "knee_seg.nii.gz").is_file()


@pytest.mark.slow
def test_the_wheel_installs_and_predicts_with_the_shipped_model_outside_the_checkout(tmp_path):
    """Build the wheel, install it (no dependencies: they come from this environment) into a
    fresh virtual environment, and predict the shipped reference knee from another folder."""
    source = tmp_path / "source"  # a copy: building writes build/ and egg-info into the tree
    shutil.copytree(
        ROOT / "src", source / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "model.packing", "model.old"),
    )  # fmt: skip
    for name in ("pyproject.toml", "README.md", "LICENSE", "LICENSES.md"):
        shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(source)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (wheel,) = wheels.glob("jointseg-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        requires = [
            line.split(":", 1)[1].strip()
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]
    for packaged in (
        "jointseg/pretrained/model/models/main/model.safetensors",
        "jointseg/pretrained/model/run.json",
        "jointseg/pretrained/model/reference_scan.nii.gz",
        "jointseg/configs/demo.yaml",
        "jointseg/py.typed",
    ):
        assert packaged in names, packaged
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    mujoco = next(r for r in requires if r.lower().startswith("mujoco"))
    assert 'extra == "synth"' in mujoco
    assert any(r.lower().startswith("torch") and "extra" not in r for r in requires)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # this environment's packages, without its editable jointseg (a .pth in it is not processed)
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
         str(wheel)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run(
        [str(python), "-c", "import jointseg; print(jointseg.__file__)"],
        cwd=work, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert where.startswith(site), where
    scan = work / "knee.nii.gz"
    shutil.copy(Path(site, "jointseg/pretrained/model/reference_scan.nii.gz"), scan)
    env = {k: v for k, v in os.environ.items() if k != "JOINTSEG_PRETRAINED"}
    done = subprocess.run(
        [str(venv / "bin" / "jointseg"), "predict", "pretrained", "knee.nii.gz", "--out", "pred",
         "--domain", "knee", "--no-meshes"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (work / "pred" / "knee_seg.nii.gz").is_file()
