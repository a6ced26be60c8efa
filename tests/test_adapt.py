"""``jointseg adapt``: a new domain added to a trained run (docs/adapt.md).

The trained run is the tiny two-domain model of tests/tiny_model.py, its scans written as a
study; the new domain ("elbow") has the knee scans' geometry with another contrast and its own
structure names.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from jointseg.config import load_config
from jointseg.data.cache import preprocess_study
from jointseg.data.io import write_image
from jointseg.data.manifest import DatasetManifest, load_manifest, write_manifest
from jointseg.models import build_model, load_model
from jointseg.models.network import Route
from jointseg.recognition.fitting import fit_recognition
from jointseg.runs import load_run_info, save_run_info
from jointseg.training.adaptation import (
    AdaptationError,
    adapted_parameters,
    branch_network,
    domain_batchnorms,
    extend_network,
    matching_rows,
    pooled_batchnorm,
)
from jointseg.workflows.adapt import adapt_run, check_new_dataset
from tests.tiny_model import DOMAINS, MODEL, make_scan, train_run

TRAIN_SEEDS = range(100, 106)
TEST_SEEDS = range(50, 52)
ELBOW = {"radius": 1, "ulna": 2}
NEW_TRAIN, NEW_TEST = range(200, 204), range(300, 302)
STEPS = 80


def elbow_scan(seed: int) -> tuple[sitk.Image, sitk.Image]:
    """The knee scan's bones, as mid-grey bones of two contrasts on a graded background."""
    image, label = make_scan("knee", seed)
    labels = sitk.GetArrayFromImage(label)
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, labels.shape[2], dtype=np.float32)
    array = 0.4 + 0.2 * x + 0.45 * (labels == 1) - 0.3 * (labels == 2)
    array = (400 * (array + rng.normal(0, 0.04, labels.shape))).astype(np.float32)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out, label


def write_domain(root: Path, folder: str, structures: dict[str, int], scans, train, test) -> Path:
    path = root / folder
    for split, seeds in (("Tr", train), ("Ts", test)):
        for seed in seeds:
            image, label = scans(seed)
            write_image(image, path / f"images{split}" / f"case_{seed:03d}_0000.nii.gz")
            write_image(label, path / f"labels{split}" / f"case_{seed:03d}.nii.gz")
    manifest = DatasetManifest(
        name=folder,
        channel_names={"0": "MR"},
        labels={"background": 0, **structures},
        numTraining=len(train),
        file_ending=".nii.gz",
    )
    write_manifest(path, manifest)
    return path


@pytest.fixture(scope="module")
def source_run(trained_run: Path, tmp_path_factory) -> Path:
    """The tiny trained run (copied), its study on disk and its recognition references."""
    import shutil

    study = tmp_path_factory.mktemp("study")
    for i, (domain, structures) in enumerate(DOMAINS.items()):
        scans = lambda seed, d=domain: make_scan(d, seed)  # noqa: E731
        write_domain(
            study, f"Dataset00{i + 1}_{domain}", structures, scans, TRAIN_SEEDS, TEST_SEEDS
        )
    write_domain(study, "Dataset004_Elbow", ELBOW, elbow_scan, NEW_TRAIN, NEW_TEST)
    run = tmp_path_factory.mktemp("run") / "run"
    shutil.copytree(trained_run, run)
    info = load_run_info(run)
    cases = {d: [f"case_{s:03d}" for s in TRAIN_SEEDS] for d in DOMAINS}
    save_run_info(run, info.model_copy(update={"data_dir": str(study), "training_cases": cases}))
    caches = preprocess_study(load_config(run / "config.yaml"), study)
    net, _ = load_model(run / "models" / "main")
    volumes = {
        d: ([c.images[slice(*c.case_slices[k])] for k in c.case_ids], []) for d, c in caches.items()
    }
    paths = {d: Route(net, i) for i, d in enumerate(DOMAINS)}
    fit_recognition(run, paths, volumes, progress=False)
    return run


@pytest.fixture(scope="module")
def adapted(source_run: Path, tmp_path_factory) -> dict[str, Path]:
    """The run adapted to the elbow with each frozen mode (few steps)."""
    data = Path(load_run_info(source_run).data_dir) / "Dataset004_Elbow"
    runs = {}
    for mode in ("head", "norm+head", "all", "branch"):
        out = tmp_path_factory.mktemp(mode.replace("+", "_")) / "run"
        statistics = "reestimated" if mode == "head" else "fixed"
        adapt_run(source_run, data, out, mode=mode, steps=STEPS, validation=1, lr=5e-3,
                  progress=False, statistics=statistics)  # fmt: skip
        runs[mode] = out
    return runs


@pytest.fixture(scope="module")
def packed_source(source_run: Path, tmp_path_factory) -> Path:
    """The source run with anatomy statistics and a postprocessing decision, packed as the
    package's model is (no study, no case lists): what ``pretrained`` names in the tests."""
    import shutil

    from jointseg.inference.postprocess import Postprocessing, StructureSteps
    from jointseg.workflows.anatomy import fit_run_anatomy_from_study
    from jointseg.workflows.pretrained import pack_run

    root = tmp_path_factory.mktemp("packed")
    run = shutil.copytree(source_run, root / "run")
    fit_run_anatomy_from_study(run)
    steps = {d: {n: StructureSteps("largest", True) for n in s} for d, s in DOMAINS.items()}
    Postprocessing(steps).save(run)
    training = {"config": "tiny", "command": "python -m pytest", "steps": 0, "data_seed": 0}
    return pack_run(run, root / "pkg" / "model", training, make_scan("knee", 3)[0])


# ------------------------------------------------------------------------------ fast unit tests
def test_pooled_batchnorm_is_the_mixture_of_the_domains() -> None:
    a, b, target = (torch.nn.BatchNorm2d(2) for _ in range(3))
    a.running_mean.copy_(torch.tensor([0.0, 1.0]))
    b.running_mean.copy_(torch.tensor([2.0, 1.0]))
    a.running_var.copy_(torch.tensor([1.0, 4.0]))
    b.running_var.copy_(torch.tensor([1.0, 2.0]))
    with torch.no_grad():
        a.weight.fill_(1.0)
        b.weight.fill_(3.0)
    pooled_batchnorm([a, b], target)
    # mixture of N(0,1) and N(2,1): mean 1, variance 1 + 1 = 2; second channel: 3
    assert torch.equal(target.running_mean, torch.tensor([1.0, 1.0]))
    assert torch.allclose(target.running_var, torch.tensor([2.0, 3.0]))
    assert torch.equal(target.weight, torch.tensor([2.0, 2.0]))


def test_extend_network_copies_the_source_domain_and_head_rows() -> None:
    torch.manual_seed(0)
    net = build_model(MODEL, [3, 3], domain_specific_bn=True, pretrained=False)
    for layer in domain_batchnorms(net):  # make the two domains' BN differ
        layer.bns[1].running_mean.add_(1.0)
    rows = matching_rows(["tibia", "patella"], ["femur", "tibia"])
    assert rows == {0: 0, 1: 2}
    extended = extend_network(net, 3, source=1, head_source=0, head_rows=rows)
    assert extended.num_heads == 3
    for old, new in zip(domain_batchnorms(net), domain_batchnorms(extended), strict=True):
        assert torch.equal(new.bns[2].running_mean, old.bns[1].running_mean)
        assert torch.equal(new.bns[0].running_mean, old.bns[0].running_mean)
    assert torch.equal(extended.heads[2].weight[1], net.heads[0].weight[2])
    assert torch.equal(extended.heads[2].bias[0], net.heads[0].bias[0])
    pooled = extend_network(net, 3, source=None)
    for old, new in zip(domain_batchnorms(net), domain_batchnorms(pooled), strict=True):
        expected = (old.bns[0].running_mean + old.bns[1].running_mean) / 2
        assert torch.allclose(new.bns[2].running_mean, expected)


def test_modes_train_only_their_parameters() -> None:
    net = extend_network(build_model(MODEL, [3, 3], True, pretrained=False), 3, source=0)
    counts = {}
    for mode in ("head", "norm+head", "all"):
        groups = adapted_parameters(net, mode, 2, lr=1e-3)
        trainable = {id(p) for p in net.parameters() if p.requires_grad}
        assert trainable == {id(p) for g in groups for p in g["params"]}
        counts[mode] = len(trainable)
        for layer in domain_batchnorms(net):  # never an old domain's BN
            assert not any(p.requires_grad for i in (0, 1) for p in layer.bns[i].parameters())
        assert not any(p.requires_grad for i in (0, 1) for p in net.heads[i].parameters())
    assert counts["head"] == 2  # the new head's weight and bias
    assert counts["head"] < counts["norm+head"] < counts["all"]
    assert [g["lr"] for g in adapted_parameters(net, "all", 2, lr=1e-3)] == pytest.approx(
        [3e-3, 3e-3, 1e-4]
    )


def test_a_branch_is_the_source_domain_as_a_one_domain_network() -> None:
    """Before training, the branch computes what the extended network computes for its new
    domain (the source domain's BN, the copied head rows): the same shared weights, plain BN."""
    torch.manual_seed(1)
    net = build_model(MODEL, [3, 3], domain_specific_bn=True, pretrained=False).eval()
    for layer in domain_batchnorms(net):
        layer.bns[1].running_mean.add_(0.5)
        layer.bns[1].running_var.mul_(2.0)
    rows = {0: 0, 1: 1, 2: 2}
    branch = branch_network(net, 3, source=1, head_source=1, head_rows=rows).eval()
    assert branch.num_heads == 1 and not branch.domain_specific_bn and not domain_batchnorms(branch)
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = net(x, torch.full((2,), 1)).logits[1]
        got = branch(x).logits[0]
    assert torch.allclose(got, want, atol=1e-5)
    groups = adapted_parameters(branch, "branch", 0, lr=1e-3)
    trainable = {id(p) for p in branch.parameters() if p.requires_grad}
    assert trainable == {id(p) for g in groups for p in g["params"]}
    assert not any(p.requires_grad for p in branch.projectors.parameters())
    assert [g["lr"] for g in groups] == pytest.approx([3e-3, 1e-3])
    with pytest.raises(AdaptationError, match="mode 'branch' trains a one-domain copy"):
        adapted_parameters(net, "branch", 1, lr=1e-3)


def test_unknown_statistics_are_refused_before_reading(tmp_path: Path) -> None:
    with pytest.raises(AdaptationError, match="unknown --statistics 'moving'; choose one of "
                                              "fixed, reestimated"):  # fmt: skip
        adapt_run(tmp_path / "run", tmp_path / "data", tmp_path / "out", statistics="moving")


def test_extend_refuses_a_single_domain_network() -> None:
    net = build_model(MODEL, [3], domain_specific_bn=False, pretrained=False)
    with pytest.raises(AdaptationError, match="domain-specific BN"):
        extend_network(net, 3, source=None)


# ------------------------------------------------------------------------------ refusals
def test_refuses_a_folder_that_is_already_a_domain(trained_run_with_study, tmp_path) -> None:
    run, study = trained_run_with_study
    with pytest.raises(AdaptationError, match="already the run's domain 'knee'"):
        adapt_run(run, study / "Dataset001_knee", tmp_path / "out", steps=1, progress=False)


def test_a_run_without_a_study_takes_a_folder_named_like_its_own(
    trained_run_with_study, tmp_path
) -> None:
    """A packed model keeps no study: a user's Dataset002_shoulder is new data, refused only
    for its default domain name, which the run has."""
    run, study = trained_run_with_study
    save_run_info(run, load_run_info(run).model_copy(update={"data_dir": None}))
    mine = tmp_path / "mine"
    shutil.copytree(study / "Dataset002_shoulder", mine / "Dataset002_shoulder")
    with pytest.raises(AdaptationError, match="already has a domain named 'shoulder'; pass "):
        adapt_run(run, mine / "Dataset002_shoulder", tmp_path / "out", steps=1, progress=False)
    info = load_run_info(run)
    structures = load_manifest(mine / "Dataset002_shoulder").structures
    check_new_dataset(info, mine / "Dataset002_shoulder", "shoulder_site", structures)


def test_refuses_clashing_structure_names(trained_run_with_study, tmp_path) -> None:
    run, _ = trained_run_with_study
    scans = lambda seed: make_scan("knee", seed)  # noqa: E731
    data = write_domain(tmp_path, "Dataset009_Other", {"Femur": 1, "tibia": 2}, scans, [1], [])
    with pytest.raises(AdaptationError, match=r"clash.*'Femur' \(the run has 'femur'\)"):
        adapt_run(run, data, tmp_path / "out", steps=1, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.fixture
def trained_run_with_study(tmp_path: Path) -> tuple[Path, Path]:
    """An (untrained) tiny run folder pointing at a study with its two dataset folders: the
    refusals come before any training."""
    run = tmp_path / "run"
    run.mkdir()
    train_run(run, max_steps=0)
    study = tmp_path / "study"
    for i, (domain, structures) in enumerate(DOMAINS.items()):
        scans = lambda seed, d=domain: make_scan(d, seed)  # noqa: E731
        write_domain(study, f"Dataset00{i + 1}_{domain}", structures, scans, [1], [])
    info = load_run_info(run)
    save_run_info(run, info.model_copy(update={"data_dir": str(study)}))
    return run, study


# ------------------------------------------------------------------------------ trained
def _old_logits(run: Path, x: torch.Tensor) -> dict[int, torch.Tensor]:
    net, _ = load_model(run / "models" / "main")
    with torch.no_grad():
        return {d: net(x, torch.full((len(x),), d)).logits[d] for d in range(len(DOMAINS))}


@pytest.mark.slow
@pytest.mark.trains
def test_frozen_modes_keep_old_domains_bit_identical(source_run, adapted) -> None:
    x = torch.randn(4, 1, 64, 64, generator=torch.Generator().manual_seed(3)) * 300
    before = _old_logits(source_run, x)
    old_state, _ = load_model(source_run / "models" / "main")
    for mode, run in adapted.items():
        if mode in ("all", "branch"):
            continue
        after = _old_logits(run, x)
        for d in before:
            assert torch.equal(before[d], after[d]), (mode, d)
        new_state = load_model(run / "models" / "main")[0].state_dict()
        for key, value in old_state.state_dict().items():
            assert torch.equal(value, new_state[key]), (mode, key)
        old_refs = json.loads((source_run / "domain_reference.json").read_text(encoding="utf-8"))
        new_refs = json.loads((run / "domain_reference.json").read_text(encoding="utf-8"))
        assert set(new_refs["domains"]) == {*DOMAINS, "elbow"}
        for d in DOMAINS:
            assert new_refs["domains"][d] == old_refs["domains"][d]


@pytest.mark.slow
@pytest.mark.trains
def test_new_statistics_move_only_when_reestimated(source_run, adapted) -> None:
    """``head`` with re-estimated statistics (AdaBN): the new BN's running statistics move to
    the new scans, its affine parameters stay the nearest domain's. ``norm+head`` with fixed
    statistics: the other way round."""
    old, _ = load_model(source_run / "models" / "main")
    for mode, statistics_move in (("head", True), ("norm+head", False)):
        record = json.loads((adapted[mode] / "adaptation.json").read_text(encoding="utf-8"))
        assert record["bn_statistics"] == ("reestimated" if statistics_move else "fixed")
        source = list(DOMAINS).index(record["nearest_domain"])
        new, _ = load_model(adapted[mode] / "models" / "main")
        moved = affine_moved = 0
        for before, after in zip(domain_batchnorms(old), domain_batchnorms(new), strict=True):
            start, adapted_bn = before.bns[source], after.bns[len(DOMAINS)]
            moved += not torch.allclose(start.running_mean, adapted_bn.running_mean)
            moved += not torch.allclose(start.running_var, adapted_bn.running_var)
            affine_moved += not torch.equal(start.weight, adapted_bn.weight)
        layers = len(domain_batchnorms(new))
        assert moved == (2 * layers if statistics_move else 0), mode
        assert affine_moved == (0 if statistics_move else layers), mode


@pytest.mark.slow
@pytest.mark.trains
def test_adaptation_is_deterministic_whatever_ran_before(source_run, adapted, tmp_path) -> None:
    """The same adaptation again, after other draws in this process, gives the same weights
    (the new head's random rows are drawn from the run's seed)."""
    torch.rand(1000)  # draws that must not matter
    data = Path(load_run_info(source_run).data_dir) / "Dataset004_Elbow"
    again = tmp_path / "again"
    adapt_run(source_run, data, again, mode="norm+head", steps=STEPS, validation=1, lr=5e-3,
              progress=False)  # fmt: skip
    first = load_model(adapted["norm+head"] / "models" / "main")[0].state_dict()
    second = load_model(again / "models" / "main")[0].state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def _recognized_elbow_dices(predictor) -> list[float]:
    """Dice of each elbow bone of each held-out elbow, predicted with ``--domain auto`` (which
    must recognize the elbow)."""
    dices = []
    for seed in NEW_TEST:
        image, label = elbow_scan(seed)
        prediction = predictor.predict(image, "auto")
        assert prediction.domain == "elbow"
        got, want = (sitk.GetArrayFromImage(i) for i in (prediction.label_map, label))
        for value in ELBOW.values():
            overlap = 2 * ((got == value) & (want == value)).sum()
            dices.append(overlap / ((got == value).sum() + (want == value).sum()))
    return dices


@pytest.mark.slow
@pytest.mark.trains
def test_adapted_run_learns_the_new_domain_and_round_trips(source_run, adapted) -> None:
    from jointseg.evaluation.evaluate import evaluate_run
    from jointseg.inference.predictor import Predictor

    run = adapted["norm+head"]
    info = load_run_info(run)
    assert [d.name for d in info.domains] == [*DOMAINS, "elbow"]
    record = json.loads((run / "adaptation.json").read_text(encoding="utf-8"))
    assert record["nearest_domain"] in DOMAINS and record["steps"] == STEPS
    predictor = Predictor.from_run(run, batch_size=8)
    dices = _recognized_elbow_dices(predictor)
    assert min(dices) > 0.7, dices
    for seed in TEST_SEEDS:  # the old domains are still recognized
        assert predictor.predict(make_scan("shoulder", seed)[0], "auto").domain == "shoulder"
    report = evaluate_run(run, progress=False)
    assert report.is_file()
    summary = (run / "evaluation").iterdir()
    assert any(p.name.startswith("metrics") for p in summary)


@pytest.mark.slow
@pytest.mark.trains
def test_a_branch_keeps_the_old_network_byte_for_byte_and_learns_the_new_domain(
    source_run, adapted
) -> None:
    from jointseg.inference.predictor import Predictor

    run = adapted["branch"]
    old_files = sorted(
        p.relative_to(source_run) for p in (source_run / "models" / "main").iterdir()
    )
    for rel in old_files:
        assert (run / rel).read_bytes() == (source_run / rel).read_bytes(), rel
    info = load_run_info(run)
    assert [(m.name, m.path, m.domains) for m in info.models] == [
        ("main", "models/main", list(DOMAINS)), ("elbow", "models/elbow", ["elbow"])
    ]  # fmt: skip
    branch, metadata = load_model(run / "models" / "elbow")
    assert branch.num_heads == 1 and metadata["adapt_mode"] == "branch"
    old_refs = json.loads((source_run / "domain_reference.json").read_text(encoding="utf-8"))
    new_refs = json.loads((run / "domain_reference.json").read_text(encoding="utf-8"))
    for d in DOMAINS:
        assert new_refs["domains"][d] == old_refs["domains"][d]
    predictor = Predictor.from_run(run, batch_size=8)
    dices = _recognized_elbow_dices(predictor)
    assert min(dices) > 0.7, dices
    for seed in TEST_SEEDS:
        assert predictor.predict(make_scan("knee", seed)[0], "auto").domain == "knee"


@pytest.mark.slow
@pytest.mark.trains
def test_mode_all_tunes_the_shared_layers_and_remeasures_recognition(source_run, adapted) -> None:
    run = adapted["all"]
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(4)) * 300
    before, after = _old_logits(source_run, x), _old_logits(run, x)
    assert not torch.equal(before[0], after[0])  # the shared convolutions moved
    old_net = load_model(source_run / "models" / "main")[0].state_dict()
    new_net = load_model(run / "models" / "main")[0].state_dict()
    for key in old_net:  # the old domains' own BN and heads did not
        if ".bns.0." in key or ".bns.1." in key or key.startswith(("heads.0.", "heads.1.")):
            assert torch.equal(old_net[key], new_net[key]), key
    old_refs = json.loads((source_run / "domain_reference.json").read_text(encoding="utf-8"))
    new_refs = json.loads((run / "domain_reference.json").read_text(encoding="utf-8"))
    assert set(new_refs["domains"]) == {*DOMAINS, "elbow"}
    assert new_refs["domains"]["knee"] != old_refs["domains"]["knee"]  # measured again


@pytest.mark.slow
@pytest.mark.trains
def test_a_run_without_references_is_calibrated_on_the_bn_statistics(source_run, tmp_path) -> None:
    import shutil

    from jointseg.inference.predictor import Predictor
    from jointseg.runs import RunFolder

    run = RunFolder(shutil.copytree(source_run, tmp_path / "source"))
    run.domain_reference_file.unlink()
    run.calibration_file.unlink()
    data = Path(run.info().data_dir) / "Dataset004_Elbow"
    out = RunFolder(tmp_path / "adapted")
    adapt_run(run.path, data, out.path, mode="head", steps=5, validation=1, progress=False)
    stored = json.loads(out.calibration_file.read_text(encoding="utf-8"))
    # the old domains on their training scans, the new one on its validation scan
    assert {k: len(v) for k, v in stored["in_domain"].items()} == {
        **{d: len(TRAIN_SEEDS) for d in DOMAINS}, "elbow": 1,
    }  # fmt: skip
    assert not run.calibration_file.exists()  # the source run is read, never written
    predictor = Predictor.from_run(out.path, batch_size=8)
    assert not predictor.references and predictor.calibration.source == "file"


def test_cli_reports_a_refusal(trained_run_with_study, tmp_path) -> None:
    from typer.testing import CliRunner

    from jointseg.cli import app

    run, study = trained_run_with_study
    args = ["adapt", str(run), "--dataset", str(study / "Dataset002_shoulder"), "--out"]
    result = CliRunner().invoke(app, [*args, str(tmp_path / "out"), "--mode", "norm+head"])
    assert result.exit_code == 2
    assert "already the run's domain 'shoulder'" in result.output
    assert "deprecated" not in result.output
    result = CliRunner().invoke(app, [*args, str(tmp_path / "out"), "--mode", "everything"])
    assert result.exit_code == 2 and "unknown --mode 'everything'" in result.output
    result = CliRunner().invoke(app, [*args, str(tmp_path / "out"), "--device", "cuda:x"])
    assert result.exit_code == 2 and "device 'cuda:x'" in result.output


def test_cli_keeps_the_old_option_names_as_deprecated_aliases(
    trained_run_with_study, tmp_path
) -> None:
    """``--data`` (now ``--dataset``) and ``--train`` (now ``--mode``) still work, with a
    warning; the old and the new name together, or no dataset at all, are refused."""
    from typer.testing import CliRunner

    from jointseg.cli import app

    run, study = trained_run_with_study
    dataset = str(study / "Dataset002_shoulder")
    out = ["--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, ["adapt", str(run), "--data", dataset, *out])
    assert result.exit_code == 2, result.output
    assert "adapt --data is deprecated; use --dataset" in result.output
    assert "already the run's domain 'shoulder'" in result.output  # the alias reached adapt
    args = ["adapt", str(run), "--dataset", dataset, *out, "--train", "everything"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "adapt --train is deprecated; use --mode" in result.output
    assert "unknown --mode 'everything'" in result.output  # the alias's value reached adapt
    result = CliRunner().invoke(app, [*args, "--mode", "all"])
    assert result.exit_code == 2 and "give the mode once, as --mode" in result.output
    result = CliRunner().invoke(app, ["adapt", str(run), "--data", dataset, "--dataset", dataset])
    assert result.exit_code == 2, result.output
    result = CliRunner().invoke(app, ["adapt", str(run), *out])
    assert result.exit_code == 2 and "missing option '--dataset'" in result.output
    assert not (tmp_path / "out").exists()
    help_text = CliRunner().invoke(app, ["adapt", "--help"]).output
    assert "--dataset" in help_text and "--mode" in help_text
    assert "--train" not in help_text and "--data " not in help_text


@pytest.mark.slow
@pytest.mark.trains
def test_adapt_pretrained_makes_a_complete_run(
    packed_source: Path, source_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``jointseg adapt pretrained``: the packaged model is read, never written; the new run
    recognizes every domain (references and anatomy statistics of the old domains kept, the new
    one's added) and every command takes it, with the packaged model's datasets not at hand."""
    import shutil

    from typer.testing import CliRunner

    from jointseg.cli import app
    from jointseg.inference.packaged import PRETRAINED_ENV
    from jointseg.inference.postprocess import Postprocessing
    from jointseg.inference.predictor import Predictor
    from jointseg.runs import RunFolder

    monkeypatch.setenv(PRETRAINED_ENV, str(packed_source))
    monkeypatch.chdir(tmp_path)
    before = sorted((str(p), p.stat().st_mtime_ns) for p in packed_source.rglob("*"))
    study = tmp_path / "new_study"  # the new dataset alone
    source = Path(load_run_info(source_run).data_dir) / "Dataset004_Elbow"
    elbow = shutil.copytree(source, study / "Dataset004_Elbow")
    out = tmp_path / "mine"
    args = ["adapt", "pretrained", "--dataset", str(elbow), "--out", str(out), "--mode",
            "norm+head", "--steps", str(STEPS), "--validation", "1", "--lr", "5e-3",
            "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted((str(p), p.stat().st_mtime_ns) for p in packed_source.rglob("*")) == before

    info = load_run_info(out)
    assert [d.name for d in info.domains] == [*DOMAINS, "elbow"]
    assert info.data_dir == str(study.resolve())
    assert info.domain("elbow").folder == "Dataset004_Elbow"
    record = json.loads((out / "adaptation.json").read_text(encoding="utf-8"))
    assert record["source_run"] == str(packed_source.resolve()) and record["mode"] == "norm+head"
    for name in (RunFolder.DOMAIN_REFERENCE, RunFolder.ANATOMY_REFERENCE):
        old = json.loads((packed_source / name).read_text(encoding="utf-8"))["domains"]
        new = json.loads((out / name).read_text(encoding="utf-8"))["domains"]
        assert set(new) == {*DOMAINS, "elbow"}, name
        assert all(new[d] == old[d] for d in DOMAINS), name
    decision = Postprocessing.load(out)
    assert decision is not None and set(decision.steps) == {*DOMAINS, "elbow"}

    predictor = Predictor.from_run(out, batch_size=8)
    assert predictor.recognizer.uses_anatomy  # statistics for every domain
    # the right joint, or a refusal near the appearance threshold (other CPU kernels): never
    # a wrong joint, and most scans recognized
    from jointseg.recognition.decision import DomainRecognitionError

    right = 0
    scans = [(elbow_scan(s)[0], "elbow") for s in NEW_TEST]
    scans += [(make_scan("shoulder", s)[0], "shoulder") for s in TEST_SEEDS]
    for scan, joint in scans:
        try:
            assert predictor.predict(scan, "auto").domain == joint
            right += 1
        except DomainRecognitionError:
            pass
    assert right >= len(scans) - 1

    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "domain 'knee' not evaluated" in result.output
    summary = json.loads((out / "evaluation" / "summary.json").read_text(encoding="utf-8"))
    assert {d for subset in summary["summary"].values() for d in subset} == {"elbow"}
    result = runner.invoke(app, ["postprocess", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    kept = Postprocessing.load(out)
    assert kept is not None and set(kept.steps) == {*DOMAINS, "elbow"}
    assert kept.steps["knee"] == decision.steps["knee"]
    result = runner.invoke(app, ["export", str(out)])
    assert result.exit_code == 0, result.output
    image = tmp_path / "elbow.nii.gz"
    sitk.WriteImage(elbow_scan(NEW_TEST[0])[0], str(image))
    result = runner.invoke(app, ["predict", str(out), str(image), "--out", "pred", "--no-meshes"])
    assert result.exit_code == 0, result.output
    outputs = json.loads((tmp_path / "pred" / "elbow_outputs.json").read_text(encoding="utf-8"))
    assert outputs["domain"] == "elbow"
