"""The package's import graph: no cycles."""

from __future__ import annotations

from jointseg.utils.imports import cycles, import_graph


def test_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "jointseg.recognition.decision" in graph["jointseg.inference.predictor"]
    assert "jointseg.inference.predictor" in graph["jointseg"]  # the lazy ``Predictor``


def test_no_import_cycles():
    assert cycles(import_graph()) == []
