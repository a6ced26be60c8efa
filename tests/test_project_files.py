"""The checkout's citation and licence files agree with pyproject.toml and the package."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _project() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def test_citation_cff_parses_and_names_the_version_and_licence():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    project = _project()
    assert citation["cff-version"] == "1.2.0"
    assert citation["title"] == project["name"] == "jointseg"
    assert str(citation["version"]) == project["version"]
    assert citation["license"] == project["license"]
    paper = citation["preferred-citation"]
    assert paper["doi"] == "10.1016/j.media.2022.102556"
    assert [a["family-names"] for a in paper["authors"]][0] == "Boutillon"


def test_package_version_and_licence_text_match_pyproject():
    from jointseg import __version__

    assert __version__ == _project()["version"]
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert _project()["license"] == "Apache-2.0"
