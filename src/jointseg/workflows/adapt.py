"""``jointseg adapt``: a trained multi-domain run plus one new dataset to a new, complete run.

The run may be the word ``pretrained``: the packaged model (read only; the new run goes to
``--out`` as always).

The new dataset (a new joint, or a new site of a known joint) becomes one more domain of the
run's network (:mod:`jointseg.training.adaptation`, docs/adapt.md): its BN starts from the
nearest existing domain's, by the run's recognition distances (or from the pool of all domains),
its head rows of structures that domain shares start from that domain's head. The new run folder
holds what ``predict``, ``evaluate`` and ``compare`` read: config.yaml and run.json with the new
domain appended, the adapted model, the old recognition references and anatomy statistics with
the new domain's added, the recognition calibration (on the BN running statistics when the run
has no references), the postprocessing decision (the new domain's decided on its validation
subjects, when it has some) and ``adaptation.json`` (what was done, from what, in how long). A
run that records no study (the packaged model) gives the new run the new dataset's parent
folder as its study.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from jointseg.config import DatasetConfig, ExperimentConfig
from jointseg.data.cache import SliceCache, build_slice_cache, preprocess_study
from jointseg.data.io import read_image
from jointseg.data.labels import DomainLabels, LabelSpace
from jointseg.data.manifest import domain_name_of, list_cases, load_manifest
from jointseg.evaluation.postprocessing import decide_steps, run_share
from jointseg.inference.packaged import resolve_run
from jointseg.inference.postprocess import Postprocessing
from jointseg.models import load_model
from jointseg.models.inferer import WholeViewInferer
from jointseg.models.network import Route
from jointseg.recognition.anatomy import load_anatomy
from jointseg.recognition.calibration import Calibration
from jointseg.recognition.decision import Candidate
from jointseg.recognition.extension import extend_recognition, nearest_domain
from jointseg.recognition.fitting import (
    fit_anatomy,
    fit_calibration,
    fit_recognition,
    segment_whole_view,
)
from jointseg.recognition.references import load_references
from jointseg.runs import DomainEntry, ModelEntry, RunError, RunFolder, RunInfo
from jointseg.training.adaptation import (
    ADAPT_MODES,
    ADAPTABLE_SCHEMES,
    BN_INITS,
    BN_STATISTICS,
    DEFAULT_BN_INIT,
    DEFAULT_STATISTICS,
    NEW_LAYERS_LR_FACTOR,
    AdaptationError,
    branch_network,
    extend_network,
    matching_rows,
    save_adapted,
    train_new_domain,
)
from jointseg.training.datamodule import DomainSplit
from jointseg.utils.atomic import atomic_write_json
from jointseg.utils.compute import AUTO_DEVICE, torch_device
from jointseg.utils.names import safe_name

logger = logging.getLogger(__name__)

DEFAULT_STEPS = 300
COPIED = (  # from the source run, as they are (recognition's are then extended)
    f"{RunFolder.MODELS}/{RunFolder.SHAPE_PRIOR}",
    RunFolder.POSTPROCESSING,
    RunFolder.DOMAIN_REFERENCE,
    RunFolder.CALIBRATION,
)


def _normalized(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).lower()


def check_new_dataset(info: RunInfo, dataset: Path, name: str, structures: dict[str, int]) -> None:
    """Refuse a dataset that is already one of the run's domains, or whose structure names
    clash with the run's label space (the same structure spelled differently: two channels
    for one bone in the union space).

    A run that records no study (a packed model: its training data is not on this disk) cannot
    hold the dataset, whatever its folder is called; only its domain ``name`` must be new.
    """
    where = f"{dataset}:"
    for entry in info.domains:
        if info.data_dir and (Path(info.data_dir) / entry.folder).resolve() == dataset.resolve():
            raise AdaptationError(
                f"{where} this dataset is already the run's domain {entry.name!r} "
                f"({entry.folder}); adapt adds a new dataset"
            )
    if name in [e.name for e in info.domains]:
        raise AdaptationError(
            f"{where} the run already has a domain named {name!r}; pass another --name"
        )
    space = LabelSpace([e.labels() for e in info.domains])
    by_key = {_normalized(n): n for n in space.structure_names}
    clashes = [
        f"{new!r} (the run has {by_key[_normalized(new)]!r})"
        for new in structures
        if _normalized(new) in by_key and by_key[_normalized(new)] != new
    ]
    if clashes:
        raise AdaptationError(
            f"{where} structure names clash with the run's label space: {', '.join(clashes)}; "
            "rename them in dataset.json to the run's names (the same structure) or to "
            "distinct names (another structure)"
        )
    if not structures:
        raise AdaptationError(f"{where} dataset.json labels no structure")


def study_of(info: RunInfo, dataset: Path) -> str:
    """The new run's study folder: the run's, else (the packaged model records none) the new
    dataset's parent folder."""
    return info.data_dir or str(dataset.resolve().parent)


def _relative_folder(dataset: Path, data_dir: str | None) -> str:
    """The dataset folder as run.json stores it: relative to the run's study when inside it."""
    if data_dir:
        try:
            return str(dataset.resolve().relative_to(Path(data_dir).resolve()))
        except ValueError:
            pass
    return str(dataset.resolve())


def _volumes(cache: SliceCache, cases: list[str]) -> list[np.ndarray]:
    return [cache.images[slice(*cache.case_slices[c])] for c in cases]


def _old_training_volumes(cfg: ExperimentConfig, info: RunInfo) -> dict[str, list[np.ndarray]]:
    """The old domains' training scans (preprocessed), or {} when their study is not at hand."""
    if not info.data_dir or not all(
        (Path(info.data_dir) / e.folder / "dataset.json").is_file() for e in info.domains
    ):
        logger.warning("the run's study (%s) is not at hand: the new domain's recognition is "
                       "measured on its own scans only",
                       info.data_dir or "none recorded")  # fmt: skip
        return {}
    caches = preprocess_study(cfg, Path(info.data_dir))
    return {
        name: _volumes(caches[name], info.training_cases.get(name, caches[name].case_ids))
        for name in caches
    }


@dataclass(frozen=True)
class NewDomain:
    """The dataset being added: name, folder (as stored), labels, cache and subject split."""

    name: str
    folder: str
    labels: DomainLabels
    cache: SliceCache
    training: list[str]
    validation: list[str]


def _prepare(
    cfg: ExperimentConfig,
    info: RunInfo,
    dataset: Path,
    name: str | None,
    subjects: int | None,
    validation: int,
) -> NewDomain:
    manifest = load_manifest(dataset)
    name = name or domain_name_of(dataset)
    structures = manifest.structures
    check_new_dataset(info, dataset, name, structures)
    cases = list_cases(dataset, "train")
    labelled = [c for c in cases if c.label is not None]
    if len(labelled) < 1 + validation:
        raise AdaptationError(
            f"{dataset}: {len(labelled)} labelled training case(s) in imagesTr/labelsTr; "
            f"need at least {1 + validation} (1 to train + {validation} to validate)"
        )
    ids = [c.case_id for c in labelled]
    held = ids[len(ids) - validation :] if validation else []
    train = [c for c in ids if c not in held]
    if subjects is not None:
        if subjects < 1:
            raise AdaptationError(f"--subjects must be at least 1, got {subjects}")
        train = train[:subjects]
    labels = DomainLabels(name, structures)
    used = [c for c in labelled if c.case_id in set(train) | set(held)]
    cache = build_slice_cache(dataset, used, labels, cfg.preprocessing, progress=False)
    folder = _relative_folder(dataset, study_of(info, dataset))
    return NewDomain(name, folder, labels, cache, train, held)


def _nearest(
    run: Path, net, old_domains: list[str], new: NewDomain
) -> tuple[str, dict[str, float]]:
    """The run's domain nearest to the new training scans, and every domain's distance."""
    references = load_references(run)
    complete = all(d in references for d in old_domains)
    candidates = [
        Candidate(d, Route(net, i), references[d] if complete else None)
        for i, d in enumerate(old_domains)
    ]
    return nearest_domain(candidates, _volumes(new.cache, new.training))


def nearest_domain_of(
    run: str | Path, dataset: str | Path, name: str | None = None
) -> tuple[str, dict[str, float]]:
    """The domain of ``run`` nearest to the training scans of ``dataset`` (what
    :func:`adapt_run` starts the new BN from) and every domain's mean distance."""
    run = resolve_run(run)
    folder = RunFolder(run)
    info = folder.info()
    new = _prepare(folder.config(), info, Path(dataset), name, None, 0)
    net, _ = load_model(run / info.models[0].path)
    return _nearest(run, net, list(info.models[0].domains), new)


def adapt_run(
    run: str | Path,
    dataset: str | Path,
    out: str | Path,
    mode: str = "norm+head",
    steps: int = DEFAULT_STEPS,
    init: str = DEFAULT_BN_INIT,
    name: str | None = None,
    subjects: int | None = None,
    validation: int = 0,
    lr: float | None = None,
    progress: bool = True,
    statistics: str = DEFAULT_STATISTICS,
    device: str = AUTO_DEVICE,
) -> RunInfo:
    """Add ``dataset`` (one dataset folder) as a new domain of the run ``run`` (a folder, or the
    word ``pretrained``: the packaged model); write the run ``out``.

    ``mode``: ``head``, ``norm+head`` or ``all`` (docs/adapt.md); ``steps``: optimizer steps;
    ``init``: the new BN from the ``nearest`` domain or ``pooled`` over all; ``name``: the new
    domain's (default from the folder name); ``subjects``: train on the first N labelled
    training cases only; ``validation``: hold out the last N labelled training cases to choose
    the best weights and decide the new domain's postprocessing; ``lr``: the base learning
    rate (default: the run's; the new head and BN train at ``NEW_LAYERS_LR_FACTOR`` x it);
    ``statistics``: the new BN's running statistics ``fixed`` (as started) or ``reestimated``
    on the new scans; ``device``: where it trains and predicts (``auto``: CUDA when available).
    Returns the new run's index.
    """
    began = time.perf_counter()
    run, dataset, out = resolve_run(run), Path(dataset), Path(out)
    if mode not in ADAPT_MODES:
        raise AdaptationError(f"unknown --mode {mode!r}; choose one of {', '.join(ADAPT_MODES)}")
    if init not in BN_INITS:
        raise AdaptationError(f"unknown --init {init!r}; choose one of {', '.join(BN_INITS)}")
    if statistics not in BN_STATISTICS:
        raise AdaptationError(
            f"unknown --statistics {statistics!r}; choose one of {', '.join(BN_STATISTICS)}"
        )
    torch_device(device)  # an unusable device: refused before any work
    source_run = RunFolder(run)
    info = source_run.info()
    cfg = source_run.config()
    train_cfg = cfg
    if lr is not None:
        train_cfg = cfg.model_copy(deep=True)
        train_cfg.training.optimizer.lr = lr
    if info.scheme not in ADAPTABLE_SCHEMES or len(info.models) != 1:
        raise AdaptationError(
            f"{run}: a {info.scheme!r} run; adapt extends the one multi-domain network of an "
            f"{', '.join(ADAPTABLE_SCHEMES)} run"
        )
    if out.exists() and any(out.iterdir()):
        raise RunError(f"{out} already holds files; give adapt an empty or new --out")
    new = _prepare(cfg, info, dataset, name, subjects, validation)
    old_model = info.models[0]
    net, _ = load_model(run / old_model.path)
    old_domains = list(old_model.domains)

    nearest, distances = _nearest(run, net, old_domains, new)
    logger.info("[adapt] nearest domain of %s: %s (mean distances %s)", new.name, nearest,
                {k: round(v, 4) for k, v in distances.items()})  # fmt: skip
    source = old_domains.index(nearest)
    source_structures = info.domain(nearest).structures
    branch = mode == "branch"
    started = (branch_network if branch else extend_network)(
        net,
        new.labels.num_classes,
        source if init == "nearest" else None,
        head_source=source,
        head_rows=matching_rows(list(new.labels.structures), list(source_structures)),
        seed=cfg.training.seed,
    )

    labels = [e.labels() for e in info.domains] + [new.labels]
    label_space = LabelSpace(labels)
    out.mkdir(parents=True, exist_ok=True)
    target = RunFolder(out)
    split = DomainSplit(new.name, new.cache, new.training, new.validation)
    trained = train_new_domain(
        train_cfg,
        started,
        [new.name] if branch else [*old_domains, new.name],
        LabelSpace([new.labels]) if branch else label_space,
        split,
        mode,
        steps,
        target.checkpoint_dir("adapt"),
        progress,
        statistics,
        device,
    )

    new_cfg = cfg.model_copy(
        update={"datasets": [*cfg.datasets, DatasetConfig(name=new.name, folder=new.folder)]}
    )
    target.save_config(new_cfg)
    for item in COPIED:
        source_path = run / item
        if source_path.is_dir():
            shutil.copytree(source_path, out / item)
        elif source_path.is_file():
            shutil.copy2(source_path, out / item)
    provenance = {"adapted_from": str(run.resolve()), "adapt_mode": mode,
                  "best_validation_dice": trained.best_validation_dice}  # fmt: skip
    if branch:
        shutil.copytree(run / old_model.path, out / old_model.path)  # the old domains, as they were
        folder = f"{RunFolder.MODELS}/{safe_name(new.name, 'domain')}"
        entry = ModelEntry(name=new.name, path=folder, domains=[new.name], label_space="local")
        save_adapted(trained.net, out / entry.path, LabelSpace([new.labels]),
                     {**provenance, "plan": entry.name})  # fmt: skip
        models = [old_model, entry]
        routes = {d: Route(net, i) for i, d in enumerate(old_domains)}
        routes[new.name] = Route(trained.net, 0)
    else:
        save_adapted(trained.net, out / old_model.path, label_space, provenance)
        models = [
            ModelEntry(
                name=old_model.name,
                path=old_model.path,
                domains=[*old_domains, new.name],
                label_space="local",
            )
        ]
        routes = {d: Route(trained.net, i) for i, d in enumerate([*old_domains, new.name])}
    new_info = info.model_copy(
        update={
            "domains": [
                *info.domains,
                DomainEntry(name=new.name, folder=new.folder, structures=new.labels.structures),
            ],
            "models": models,
            "training_cases": {**info.training_cases, new.name: new.training},
            "validation_cases": {**info.validation_cases, new.name: new.validation},
            "data_dir": study_of(info, dataset),
        },
        deep=True,
    )
    target.save_info(new_info)
    _recognition(out, cfg, info, new, routes, mode, old_domains, progress)
    _anatomy(out, run, cfg, new, routes[new.name], old_domains)
    _postprocessing(out, new, progress, device)
    seconds = time.perf_counter() - began
    atomic_write_json(
        target.adaptation_file,
        {
            "source_run": str(run.resolve()),
            "domain": new.name,
            "dataset": str(dataset.resolve()),
            "mode": mode,
            "bn_init": init,
            "bn_statistics": statistics,
            "nearest_domain": nearest,
            "distances": distances,
            "steps": trained.steps,
            "lr": train_cfg.training.optimizer.lr,
            "new_layers_lr": train_cfg.training.optimizer.lr * NEW_LAYERS_LR_FACTOR,
            "training_cases": new.training,
            "validation_cases": new.validation,
            "best_validation_dice": trained.best_validation_dice,
            "seconds": round(seconds, 2),
        },
    )
    logger.info("[adapt] %s added to %s (%s, %d steps) in %.1f s: %s",
                new.name, run, mode, trained.steps, seconds, out)  # fmt: skip
    return new_info


def _recognition(
    out: Path,
    cfg: ExperimentConfig,
    info: RunInfo,
    new: NewDomain,
    paths: dict[str, Route],
    mode: str,
    old_domains: list[str],
    progress: bool,
) -> None:
    """The old references kept and the new domain's added (``head``, ``norm+head``,
    ``branch``); every reference measured again with ``all`` (the old domains' paths changed).
    A run left without references is calibrated on the BN running statistics: every adapted
    run has a calibration. ``paths``: every domain's route through the adapted networks."""
    folder = RunFolder(out)
    training, held_out = _volumes(new.cache, new.training), _volumes(new.cache, new.validation)
    old: dict[str, list[np.ndarray]] | None = None
    if folder.domain_reference_file.is_file():
        old = _old_training_volumes(cfg, info)
        if mode == "all":
            for stale in (folder.domain_reference_file, folder.calibration_file):
                stale.unlink(missing_ok=True)
            if old:
                volumes = {d: (v, []) for d, v in old.items()}
                volumes[new.name] = (training, held_out)
                fit_recognition(out, paths, volumes, progress=progress)
        else:
            extend_recognition(out, new.name, paths[new.name], training, held_out, old)
    if folder.domain_reference_file.is_file():
        return
    # BN running statistics: the old domains' distances stay valid unless ``all`` changed them
    before = {} if mode == "all" else Calibration.load(out).in_domain
    kept = {d: before[d] for d in old_domains if d in before}
    if old is None and any(d not in kept for d in old_domains):
        old = _old_training_volumes(cfg, info)
    scans = {d: v for d, v in (old or {}).items() if d not in kept}
    scans[new.name] = held_out or training
    calibration = fit_calibration(out, paths, scans, kept)
    unmeasured = [d for d in old_domains if d not in calibration.in_domain]
    logger.info(
        "[adapt] recognition calibrated on the BN running statistics: refusal threshold %.3g "
        "(%s)%s", calibration.threshold, folder.calibration_file,
        f"; no distances of {', '.join(unmeasured)}" if unmeasured else "",
    )  # fmt: skip


def _anatomy(
    out: Path,
    source: Path,
    cfg: ExperimentConfig,
    new: NewDomain,
    route: Route,
    old_domains: list[str],
) -> None:
    """The old domains' anatomy statistics kept, the new domain's measured on its training
    label maps and calibrated on its validation predictions (as training does); none when the
    source run lacks an old domain's (recognition then decides by appearance alone)."""
    old = load_anatomy(source)
    if not old or any(d not in old for d in old_domains):
        return
    cache = new.cache
    rows = {case: slice(*cache.case_slices[case]) for case in cache.case_slices}
    inferer = WholeViewInferer.from_config(cfg.inference)
    label_maps = [(cache.labels[rows[c]], cache.inverse[c].slice_spacing) for c in new.training]
    with torch.no_grad():
        predictions = [
            (segment_whole_view(inferer, cache.images[rows[c]], route),
             cache.inverse[c].slice_spacing)
            for c in new.validation
        ]  # fmt: skip
    structures = {new.name: list(new.labels.structures)}
    kept = {d: old[d] for d in old_domains}
    if fit_anatomy(out, structures, {new.name: label_maps}, {new.name: predictions}, kept):
        logger.info("[adapt] anatomy statistics of %s added: %s", new.name,
                    RunFolder(out).anatomy_reference_file)  # fmt: skip
    else:
        logger.info("[adapt] anatomy statistics: no training label map of %s has every "
                    "structure; --domain auto decides by appearance alone", new.name)  # fmt: skip


def _postprocessing(out: Path, new: NewDomain, progress: bool, device: str) -> None:
    """Decide the new domain's postprocessing on its validation subjects; the old domains'
    decisions are kept (with ``all`` they were measured on the network before adaptation)."""
    if not new.validation:
        return
    from jointseg.inference.predictor import Predictor

    predictor = Predictor.from_run(out, device)
    dataset = Path(predictor.info.data_dir or "") / new.folder
    cases = {c.case_id: c for c in list_cases(dataset, "train")}
    pairs = []
    for case_id in new.validation:
        case = cases[case_id]
        predicted = predictor.predict(read_image(case.image), new.name).label_map
        reference = read_image(case.label)
        pairs.append((sitk.GetArrayFromImage(predicted), sitk.GetArrayFromImage(reference)))
    decision = decide_steps({new.name: pairs}, {new.name: new.labels.structures}, run_share(out))
    old = Postprocessing.load(out) if RunFolder(out).postprocessing_file.is_file() else None
    if old is not None:
        decision.steps = {**old.steps, **decision.steps}
        decision.measured = {**old.measured, **decision.measured}
        decision.cases = {**old.cases, new.name: list(new.validation)}
        decision.share = old.share
    else:
        decision.cases = {new.name: list(new.validation)}
    decision.save(out)
