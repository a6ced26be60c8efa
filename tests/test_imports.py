"""The package's import graph: no cycles, and every room imports only the rooms below it."""

from __future__ import annotations

from jointseg.utils.imports import cycles, import_graph, package_of

# data -> models/losses -> training | recognition -> inference -> evaluation -> workflows -> cli.
# Training and recognition are siblings: the training workflow calls the recognition fitting.
LAYERS = {
    "_version": 0,
    "utils": 1,
    "config": 2,
    "data": 3,
    "runs": 4,
    "synth": 4,
    "models": 5,
    "losses": 6,
    "training": 7,
    "recognition": 7,
    "inference": 8,
    "evaluation": 9,
    "workflows": 10,
    "cli": 11,
    "cli_reference": 12,  # docs/cli.md generated from the typer app: above the command line
    "jointseg": 11,  # the package facade (its lazy ``Predictor``)
}


def test_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "jointseg.recognition.decision" in graph["jointseg.inference.predictor"]
    assert "jointseg.inference.predictor" in graph["jointseg"]  # the lazy ``Predictor``


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_every_room_imports_only_rooms_below_it():
    graph = import_graph()
    assert {package_of(m) for m in graph} <= set(LAYERS)
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if package_of(target) != package_of(module)
        and LAYERS[package_of(target)] >= LAYERS[package_of(module)]
    )
    assert upward == []


def test_prediction_loads_no_training_framework():
    """`jointseg predict` imports what it uses: no MONAI (its sliding windows load it only for
    views wider than inference.max_in_plane), no Lightning, pandas, TensorBoard or the
    generator's physics engine."""
    import subprocess
    import sys

    heavy = ("monai", "lightning", "pandas", "tensorboard", "mujoco", "scipy.stats")
    code = (
        "import sys, jointseg.inference.predict; "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
