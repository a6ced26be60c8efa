"""``jointseg export``: a run's networks as ONNX graphs, one per domain, with a manifest.

::

    OUT/<domain>.onnx    slices [B, k, H, W] -> probabilities [B, C, H, W] (see
                         :mod:`jointseg.models.onnx_export` for the contract and why per domain)
    OUT/onnx.json        written last: run, jointseg version, opset, the SHA-256 of each model's
                         weights, and per domain its file, classes, structures, context slices

``OUT`` defaults to ``RUN/onnx``, where ``jointseg predict --backend onnxruntime`` looks (for the
packaged model, the word ``pretrained``, it is required, and predict takes it as ``--onnx``). The
weights' digests tie the graphs to the run: a retrained run refuses a stale export.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from jointseg._version import __version__
from jointseg.inference.onnx_manifest import (
    FORMAT,
    MANIFEST_FILE,
    VERSION,
    weights_digests,
)
from jointseg.inference.packaged import output_folder, resolve_run
from jointseg.inference.predictor import Predictor
from jointseg.models.network import context_slices
from jointseg.models.onnx_export import (
    INPUT_NAME,
    OPSET,
    OUTPUT_NAME,
    DomainGraph,
    export_domain_graph,
)
from jointseg.runs import RunFolder
from jointseg.utils.atomic import atomic_write_json
from jointseg.utils.names import safe_name

logger = logging.getLogger(__name__)


def export_run(run: str | Path, out: str | Path | None = None) -> Path:
    """Export every domain of ``run`` to ``out`` (default ``RUN/onnx``; required for the word
    ``pretrained``, the packaged model); returns the manifest's path. Each graph is checked with
    ``onnx.checker``."""
    out = output_folder(run, out, RunFolder.ONNX, "ONNX export")
    run = resolve_run(run)
    predictor = Predictor.from_run(run)
    info = predictor.info
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # the export is incomplete until rewritten
    digests = weights_digests(run, info)
    domains = {}
    for domain, route in predictor.routes.items():
        file = f"{safe_name(domain, 'domain')}.onnx"
        metadata = {
            "jointseg_version": __version__,
            "run": run.resolve().name,
            "domain": domain,
            "structures": json.dumps(predictor.structures(domain)),
            "weights_sha256": digests[info.model_for(domain).name],
        }
        export_domain_graph(DomainGraph(route.net, route.index, route.select), out / file, metadata)
        domains[domain] = {
            "file": file,
            "model": info.model_for(domain).name,
            "head": route.index,
            "select": None if route.select is None else list(route.select),
            "classes": len(predictor.structures(domain)) + 1,
            "context_slices": context_slices(route.net),
            "structures": predictor.structures(domain),
        }
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "jointseg": __version__,
        "run": run.resolve().name,
        "opset": OPSET,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "weights_sha256": digests,
        "domains": domains,
    }
    atomic_write_json(out / MANIFEST_FILE, manifest)
    logger.info("%s: %d domain graphs exported to %s", run, len(domains), out)
    return out / MANIFEST_FILE


__all__ = ["export_run"]
