"""A run folder's networks and every domain's route through them: the one loading of a run's
models, for prediction (:class:`~jointseg.inference.predictor.Predictor`) and for the steps after
training (:mod:`jointseg.workflows.train`)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from jointseg.models.checkpoint import INDEX_FILE, WEIGHTS_FILE, load_model
from jointseg.models.network import Route
from jointseg.runs import RunError, RunFolder, RunInfo


def load_run_networks(
    run: RunFolder, info: RunInfo, map_location: str | torch.device = "cpu"
) -> dict[str, nn.Module]:
    """Every model ``info`` lists (model name -> network in eval mode on ``map_location``);
    :class:`~jointseg.runs.RunError` naming the files a model folder lacks."""
    if not info.models:
        raise RunError(f"{run.path}: the run lists no model; train one with `jointseg train`")
    networks: dict[str, nn.Module] = {}
    for entry in info.models:
        folder = run.path / entry.path
        missing = [f for f in (INDEX_FILE, WEIGHTS_FILE) if not (folder / f).is_file()]
        if missing:
            raise RunError(
                f"{run.path}: model {entry.name!r} is missing {', '.join(missing)} in {folder}; "
                "the run is incomplete (still training, or copied without models/)"
            )
        net, _ = load_model(folder, map_location=map_location)
        networks[entry.name] = net.eval()
    return networks


def domain_routes(info: RunInfo, networks: Mapping[str, nn.Module]) -> dict[str, Route]:
    """Every domain's route (domain -> route): its model's network, its head/BN index there
    and, for a union model, the union channels of its classes."""
    space = info.label_space()
    routes = {}
    for domain in info.domains:
        entry = info.model_for(domain.name)
        union = entry.label_space == "union"
        channels = space.union_channels(domain.name) if union else None
        routes[domain.name] = Route.for_domain(
            networks[entry.name], entry.domains, domain.name, channels
        )
    return routes
