"""The network call of prediction, behind one contract: ``backend(x, route) -> probabilities``.

``x``: a batch of slices [B, k, H, W] (float32; H, W multiples of 32), ``route``: the domain's
:class:`~jointseg.models.network.Route`; the result: class probabilities
[B, C, H, W] (float32, on ``x``'s device; background first, then the domain's structures).
:class:`TorchBackend` runs the PyTorch network; :class:`OnnxRuntimeBackend` runs the domain's
graph exported by ``jointseg export`` (:mod:`jointseg.inference.export`). Test-time flips,
padding and sliding windows stay with the caller, so both backends feed the same pipeline.

``auto`` (:func:`choose_backend`) takes ONNX Runtime on the CPU where it is installed and the
run has a current export, unless a torch-only feature is asked for; else torch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from jointseg.inference.onnx_manifest import check_manifest, default_export_folder, read_manifest
from jointseg.models.network import Route
from jointseg.models.onnx_export import INPUT_NAME, OUTPUT_NAME
from jointseg.runs import RunError, RunInfo
from jointseg.utils.compute import as_memory_format, computing_in, torch_device

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime")


class Backend(Protocol):
    """Class probabilities of a batch of slices for one domain (see the module docstring)."""

    name: str

    def __call__(self, x: Tensor, route: Route) -> Tensor: ...


class TorchBackend:
    """The PyTorch network: softmax of the domain's head (its union channels, if any).

    ``precision``: a resolved precision ("32", "bf16" or "16", :mod:`jointseg.utils.compute`)
    the network computes in on ``device``; the softmax is always float32. ``channels_last``:
    batches enter in that memory format (the network's weights are converted by the caller).
    """

    name = "torch"

    def __init__(
        self, precision: str = "32", device: str | torch.device = "cpu", channels_last: bool = False
    ) -> None:
        self.precision = precision
        self.device = device
        self.channels_last = channels_last

    def __call__(self, x: Tensor, route: Route) -> Tensor:
        with computing_in(self.precision, self.device):
            logits = route.logits(as_memory_format(x, self.channels_last))
        return torch.softmax(logits.float(), dim=1)


class OnnxRuntimeBackend:
    """ONNX Runtime sessions of the exported domain graphs, one per route, each created when its
    domain is first run (a scan of one joint loads one graph)."""

    name = "onnxruntime"

    def __init__(self, sessions: dict[Route, object], folder: Path | None = None, loader=None):
        self.sessions = sessions
        self.folder = folder
        self._loader = loader  # route -> session, for the routes not yet in ``sessions``

    @classmethod
    def load(
        cls,
        folder: str | Path,
        run_dir: str | Path,
        info: RunInfo,
        routes: dict[str, Route],
        threads: int | None = None,
        device: str = "cpu",
    ) -> OnnxRuntimeBackend:
        """The backend for every domain of ``routes`` from an export folder of this run's
        weights; each graph loads on first use.

        Raises :class:`RunError` naming the folder when it is missing, incomplete, or exported
        from other weights (and, on first use, naming a graph ONNX Runtime cannot load).
        """
        try:
            import onnxruntime as ort
        except ImportError:
            raise RunError(
                "--backend onnxruntime needs ONNX Runtime: pip install 'jointseg[onnx]'"
            ) from None
        folder = Path(folder)
        manifest = read_manifest(folder)
        check_manifest(manifest, folder, run_dir, info)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        files = {route: folder / manifest["domains"][d]["file"] for d, route in routes.items()}

        def session(route: Route):
            path = files[route]
            try:
                return ort.InferenceSession(str(path), sess_options=options, providers=providers)
            except Exception as error:  # onnxruntime raises its own exception types
                raise RunError(f"{path}: ONNX Runtime cannot load the graph: {error}") from None

        logger.info("ONNX Runtime backend: %s (%s)", folder, ", ".join(providers))
        return cls({}, folder, lambda route: session(route) if route in files else None)

    def __call__(self, x: Tensor, route: Route) -> Tensor:
        session = self.sessions.get(route)
        if session is None and self._loader is not None:
            session = self.sessions[route] = self._loader(route)
        if session is None:
            raise RunError(f"{self.folder}: no exported graph for this domain")
        batch = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (probabilities,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})  # type: ignore[attr-defined]
        return torch.from_numpy(probabilities).to(x.device)


class RoutedRun(Protocol):
    """What a backend is built for: a run's folder, index and domain routes (a Predictor)."""

    run_dir: Path
    info: RunInfo
    routes: dict[str, Route]
    precision: str
    channels_last: bool


def choose_backend(
    run: RoutedRun,
    folder: str | Path | None = None,
    device: str = "cpu",
    torch_only: str | None = None,
) -> tuple[str, str]:
    """What ``auto`` runs for ``run`` on ``device``, and why: ``onnxruntime`` on the CPU where
    ONNX Runtime is installed and ``folder`` (default RUN/onnx) holds an export of this run's
    weights, else ``torch``. ``torch_only``: a torch-only setting asked for (its name), which
    keeps torch."""
    import importlib.util

    folder = Path(folder) if folder is not None else default_export_folder(run.run_dir)
    if torch_only:
        return "torch", f"{torch_only} needs the torch backend"
    if torch_device(device).type != "cpu":
        return "torch", f"the device is {device}"
    if importlib.util.find_spec("onnxruntime") is None:
        return "torch", "ONNX Runtime is not installed (pip install 'jointseg[onnx]')"
    try:
        check_manifest(read_manifest(folder), folder, run.run_dir, run.info)
    except RunError as error:
        return "torch", f"no current ONNX export ({str(error).split(';')[0]})"
    return "onnxruntime", f"the ONNX export in {folder}"


def load_backend(
    name: str,
    run: RoutedRun,
    folder: str | Path | None = None,
    threads: int | None = None,
    device: str = "cpu",
    torch_only: str | None = None,
) -> Backend:
    """The backend called ``name`` for ``run`` on ``device`` (``auto``: CUDA when available);
    ``folder``: the ONNX export (default RUN/onnx). ``auto``: :func:`choose_backend`."""
    where = torch_device(device)
    if name == "auto":
        name, why = choose_backend(run, folder, device, torch_only)
        logger.info("backend auto -> %s (%s)", name, why)
    if name == "torch":
        return TorchBackend(run.precision, where, run.channels_last)
    if name == "onnxruntime":
        folder = Path(folder) if folder is not None else default_export_folder(run.run_dir)
        return OnnxRuntimeBackend.load(
            folder, run.run_dir, run.info, run.routes, threads, str(where)
        )
    raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")


__all__ = [
    "BACKENDS",
    "Backend",
    "OnnxRuntimeBackend",
    "RoutedRun",
    "TorchBackend",
    "choose_backend",
    "load_backend",
]
