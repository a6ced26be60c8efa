"""ONNX export and the ONNX Runtime backend: checked graphs, the same probabilities and labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tests.tiny_model import DOMAINS, MODEL, OBLIQUE, make_scan


def test_domain_graph_equals_the_networks_head():
    """The exported module computes what prediction computes: softmax of the domain's head,
    for a two-head domain-specific-BN network and for a one-head union network's channels."""
    from jointseg.models import build_model
    from jointseg.models.network import head_logits
    from jointseg.models.onnx_export import DomainGraph

    torch.manual_seed(0)
    x = torch.randn(3, 1, 64, 96)
    two = build_model(MODEL, [3, 4], domain_specific_bn=True).eval()
    for module in two.modules():  # distinct statistics per domain, so the BN choice matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
    union = build_model(MODEL, [5], domain_specific_bn=False).eval()
    with torch.no_grad():
        for net, index, select in ((two, 0, None), (two, 1, None), (union, 0, (0, 3, 4))):
            expected = head_logits(net, x, index)
            if select is not None:
                expected = expected[:, list(select)]
            got = DomainGraph(net, index, select)(x)
            torch.testing.assert_close(got, torch.softmax(expected, 1), rtol=0, atol=1e-6)
        assert DomainGraph(two, 1)(x).shape == (3, 4, 64, 96)


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory) -> Path:
    from jointseg.inference.export import export_run

    return export_run(trained_run, tmp_path_factory.mktemp("export") / "onnx").parent


def test_export_writes_one_checked_graph_per_domain(exported: Path):
    import onnx

    manifest = json.loads((exported / "onnx.json").read_text(encoding="utf-8"))
    assert set(manifest["domains"]) == set(DOMAINS)
    for domain, item in manifest["domains"].items():
        assert item["structures"] == DOMAINS[domain] and item["classes"] == 3
        model = onnx.load(str(exported / item["file"]))
        onnx.checker.check_model(model, full_check=True)
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["domain"] == domain and json.loads(meta["structures"]) == DOMAINS[domain]
        (inp,), (out,) = model.graph.input, model.graph.output
        assert (inp.name, out.name) == ("slices", "probabilities")
        dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
        assert dims == ["batch", 1, "height", "width"]


def _backends(run: Path, folder: Path, windows: bool = False):
    from jointseg.inference.backends import OnnxRuntimeBackend
    from jointseg.inference.predictor import Predictor
    from jointseg.models.inferer import WholeViewInferer

    torch_predictor = Predictor.from_run(run, batch_size=8)
    onnx_predictor = Predictor.from_run(run, batch_size=8)
    onnx_predictor.backend = OnnxRuntimeBackend.load(
        folder, run, onnx_predictor.info, onnx_predictor.routes, threads=1
    )
    if windows:  # 64 x 64 slices by 32 x 32 gaussian windows: other shapes through the graph
        for predictor in (torch_predictor, onnx_predictor):
            predictor.inferer = WholeViewInferer(max_in_plane=32)
    return torch_predictor, onnx_predictor


@pytest.mark.parametrize(
    ("domain", "seed", "windows", "tta"),
    [("knee", 7, False, False), ("shoulder", 9, True, True)],
)
def test_onnxruntime_matches_pytorch(trained_run, exported, domain, seed, windows, tta):
    """The network's float32 probabilities on every slice within 1e-4; through the whole
    pipeline (probabilities kept as float16, restored onto the scan's grid) identical labels."""
    from jointseg.data.context import context_stack
    from jointseg.models.inferer import flip_averaged

    torch_predictor, onnx_predictor = _backends(trained_run, exported, windows)
    torch_predictor.tta = onnx_predictor.tta = tta
    scan, _ = make_scan(domain, seed, direction=OBLIQUE)
    volume = torch_predictor.recognition_volume(scan)
    x = torch.from_numpy(context_stack(volume, np.arange(len(volume)), 1))
    flips = torch_predictor.tta_flips() if tta else [()]

    def probabilities(predictor):  # the network call with its flips, as predict makes it
        route = predictor.routes[domain]
        return lambda t: flip_averaged(lambda u: predictor.backend(u, route), t, flips)

    with torch.no_grad():
        expected = torch_predictor.inferer(x, probabilities(torch_predictor))
        got = onnx_predictor.inferer(x, probabilities(onnx_predictor))
    assert got.shape == expected.shape == (len(volume), 3, *volume.shape[1:])
    assert (got - expected).abs().max() < 1e-4

    a = torch_predictor.predict(scan, domain, return_probabilities=True)
    calls: list[int] = []  # the ONNX predictor's own PyTorch network must stay idle
    onnx_predictor.routes[domain].net.register_forward_pre_hook(lambda *_: calls.append(1))
    b = onnx_predictor.predict(scan, domain, return_probabilities=True)
    assert calls == []
    assert a.details["sliding_window"] is windows and b.details["sliding_window"] is windows
    pa = sitk.GetArrayFromImage(a.probabilities)
    pb = sitk.GetArrayFromImage(b.probabilities)
    assert pa.shape == pb.shape and pa.shape[-1] == 3
    assert np.abs(pa - pb).max() < 1e-3  # float16 storage: one rounding step apart at most
    labels = sitk.GetArrayFromImage(a.label_map)
    np.testing.assert_array_equal(labels, sitk.GetArrayFromImage(b.label_map))
    assert set(np.unique(labels)) == {0, *DOMAINS[domain].values()}


def test_stale_or_missing_export_is_refused(trained_run: Path, exported: Path, tmp_path: Path):
    import shutil

    from jointseg.inference.backends import OnnxRuntimeBackend
    from jointseg.inference.predictor import Predictor
    from jointseg.runs import RunError

    predictor = Predictor.from_run(trained_run)
    load = lambda folder: OnnxRuntimeBackend.load(  # noqa: E731
        folder, trained_run, predictor.info, predictor.routes
    )
    with pytest.raises(RunError, match=r"nowhere: no ONNX export here .*jointseg export RUN"):
        load(tmp_path / "nowhere")
    stale = tmp_path / "stale"
    shutil.copytree(exported, stale)
    manifest = json.loads((stale / "onnx.json").read_text(encoding="utf-8"))
    manifest["weights_sha256"]["main"] = "0" * 64
    (stale / "onnx.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(RunError, match=r"stale: exported from other weights"):
        load(stale)


def test_auto_takes_a_current_export_and_torch_otherwise(
    trained_run: Path, exported: Path, tmp_path: Path, monkeypatch
):
    import importlib.util
    import shutil

    from jointseg.inference.backends import choose_backend, load_backend
    from jointseg.inference.predictor import Predictor

    predictor = Predictor.from_run(trained_run)
    assert choose_backend(predictor, exported) == (
        "onnxruntime", f"the ONNX export in {exported}"
    )  # fmt: skip
    assert load_backend("auto", predictor, exported, threads=1).name == "onnxruntime"
    name, why = choose_backend(predictor, tmp_path / "nowhere")
    assert name == "torch" and why.startswith("no current ONNX export (") and "nowhere" in why
    stale = tmp_path / "stale"
    shutil.copytree(exported, stale)
    manifest = json.loads((stale / "onnx.json").read_text(encoding="utf-8"))
    manifest["weights_sha256"]["main"] = "0" * 64
    (stale / "onnx.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert choose_backend(predictor, stale)[0] == "torch"
    assert choose_backend(predictor, exported, torch_only="--adapt-bn") == (
        "torch", "--adapt-bn needs the torch backend"
    )  # fmt: skip
    assert load_backend("auto", predictor, exported, torch_only="--precision").name == "torch"
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name)
    )
    assert choose_backend(predictor, exported) == (
        "torch", "ONNX Runtime is not installed (pip install 'jointseg[onnx]')"
    )  # fmt: skip


def test_predict_records_what_auto_chose(trained_run: Path, exported: Path, tmp_path: Path):
    from jointseg.data.io import write_image
    from jointseg.inference.predict import predict_path

    scan = tmp_path / "knee.nii.gz"
    write_image(make_scan("knee", 3)[0], scan)
    for onnx, chosen in ((exported, "onnxruntime"), (tmp_path / "none", "torch")):
        out = tmp_path / chosen
        predict_path(trained_run, scan, out, domain="knee", meshes=False, onnx=onnx)
        record = json.loads((out / "knee_outputs.json").read_text(encoding="utf-8"))
        assert record["settings"]["backend"] == chosen
