"""benchmarks/paper.py: statistics on hand-computed inputs, the plateau rule, nnU-Net's matched
plans, the page writer, the cap's step counts, and the smoke profile end to end (resumable)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import _paper_stats as stats  # noqa: E402
import paper  # noqa: E402


def _frame() -> pd.DataFrame:
    """Six subjects, two bones; full - individual differences known, mtmd+con equal to full on
    the first bone and 0.1 below it on the second."""
    rows = []
    up = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]  # all positive
    mixed = [0.1, -0.2, 0.3, 0.4, 0.5, 0.6]  # one negative, of rank 2
    for i in range(6):
        case = f"ankle_{i:03d}"
        for structure, diffs in (("talus", up), ("tibia", mixed)):
            base = 0.2 + 0.01 * i
            full = base + diffs[i]
            con = full if structure == "talus" else full - 0.1 - 0.01 * i
            for scheme, value in (("individual", base), ("mtmd+con", con), ("full", full)):
                rows.append(
                    {
                        "scheme": scheme,
                        "dataset": "ankle",
                        "case": case,
                        "structure": structure,
                        "dice": value,
                    }
                )
    return pd.DataFrame(rows)


def test_reference_tests_match_hand_computed_wilcoxon_and_holm() -> None:
    tests = stats.reference_tests(_frame(), ["individual", "mtmd+con", "full"])
    ind = tests[tests["against"] == "individual"].set_index("structure")
    # all six differences positive: exact two-sided p = 2 / 2^6
    assert ind.loc["talus", "p_value"] == pytest.approx(2 / 64)
    assert ind.loc["talus", "rank_biserial"] == pytest.approx(1.0)
    assert ind.loc["talus", "median_difference"] == pytest.approx(0.35)
    # one negative difference of rank 2: T = 2, P(T <= 2) = 3 / 64, two-sided 6 / 64
    assert ind.loc["tibia", "p_value"] == pytest.approx(6 / 64)
    assert ind.loc["tibia", "rank_biserial"] == pytest.approx((19 - 2) / 21)
    assert ind.loc["tibia", "median_difference"] == pytest.approx(0.35)
    con = tests[tests["against"] == "mtmd+con"].set_index("structure")
    assert con.loc["talus", "p_value"] == 1.0  # identical: every difference zero
    # differences 0.10..0.15 all positive: p = 2 / 64; four tests in the Holm family
    assert con.loc["tibia", "p_value"] == pytest.approx(2 / 64)
    p = sorted([2 / 64, 2 / 64, 6 / 64, 1.0])
    expected = [min(1, 4 * p[0]), min(1, max(4 * p[0], 3 * p[1])), max(0.125, 2 * p[2]), 1.0]
    assert sorted(tests["p_holm"]) == pytest.approx(expected)  # 0.125, 0.125, 0.1875, 1


def test_ranking_steps_and_verdicts() -> None:
    table = stats.ranking_tests(_frame())
    # only full - mtmd+con is a step with both schemes present
    assert set(zip(table["scheme"], table["against"], strict=True)) == {("full", "mtmd+con")}
    # two tests: Holm doubles the smaller p (2/64 -> 1/16); nothing below 0.05
    assert table.set_index("structure").loc["tibia", "p_holm"] == pytest.approx(1 / 16)
    assert set(table["verdict"]) == {"not shown"}
    assert stats.verdict(0.2, 0.01) == "holds"
    assert stats.verdict(-0.2, 0.01) == "reversed"
    assert stats.verdict(0.2, 0.01, higher_is_better=False) == "reversed"
    text = stats.tests_table(table, row_key="step")
    assert "| full vs mtmd+con |" in text and "p 0.031 (0.062)" in text


def test_ablation_compares_the_same_subjects_before_and_after(tmp_path: Path) -> None:
    import paper_ablation

    before = _frame()
    after = before[before["scheme"] == "mtmd+con"].copy()
    after.loc[after["structure"] == "tibia", "dice"] += 0.2  # now 0.1 + 0.01 i above full
    (tmp_path / "before").mkdir()
    (tmp_path / "after").mkdir()
    before.to_csv(tmp_path / "before" / "cv_metrics.csv", index=False)
    after.to_csv(tmp_path / "after" / "cv_metrics.csv", index=False)
    text = paper_ablation.main([str(tmp_path / "before"), str(tmp_path / "after"), "--label", "x"])
    assert (tmp_path / "after" / "ablation.md").read_text(encoding="utf-8") == text
    # talus unchanged (all differences 0: p 1), tibia +0.2 on all six: exact p 2/64, Holm
    # over the table's two bones 4/64
    assert "| mtmd+con (x) vs mtmd+con | +0.000, p 1 (1), r – | +0.200, p 0.031 (0.062)" in text
    # the ranking step full vs mtmd+con after the change: full − mtmd+con on the tibia is now
    # -0.1 + 0.01 i (i = 0..5), median -0.075, all negative
    assert "| full vs mtmd+con | +0.000, p 1 (1), r –, not shown | -0.075, p 0.031 (0.062)" in text
    moved = after.assign(case=after["case"] + "_other")
    moved.to_csv(tmp_path / "after" / "cv_metrics.csv", index=False)
    with pytest.raises(SystemExit, match="different subjects"):
        paper_ablation.main([str(tmp_path / "before"), str(tmp_path / "after")])


def test_repeats_measure_run_to_run_differences_and_average_the_runs(tmp_path: Path) -> None:
    import paper_repeats

    first = _frame()
    second = first.copy()
    moved = (second["scheme"] == "full") & (second["structure"] == "tibia")
    second.loc[moved, "dice"] -= 0.3  # full's tibia 0.3 lower in the second run
    first.to_csv(tmp_path / "a.csv", index=False)
    second.to_csv(tmp_path / "b.csv", index=False)
    runs = {"a": first, "b": second}
    spread = paper_repeats.run_to_run(runs, ["individual", "full"]).set_index("scheme")
    assert spread.loc["individual", "median_abs_difference"] == 0
    # full: 6 talus pairs equal, 6 tibia pairs 0.3 apart
    assert spread.loc["full", "median_abs_difference"] == pytest.approx(0.15)
    assert spread.loc["full", "share_above_0.1"] == pytest.approx(0.5)
    assert spread.loc["full", "pairs"] == 12
    assert spread.loc["full", "a"] - spread.loc["full", "b"] == pytest.approx(0.15)
    # the step mtmd+con -> full: talus 0, tibia 0.10..0.15 in run a; 0.3 less in run b
    steps = paper_repeats.step_means(runs).set_index("step")
    assert steps.loc["mtmd+con → full", "a"] == pytest.approx(0.75 / 12)
    assert steps.loc["mtmd+con → full", "b"] == pytest.approx((0.75 - 1.8) / 12)
    assert not steps.loc["mtmd+con → full", "same_sign"]
    mean = paper_repeats.averaged(runs, ["full"]).set_index(["case", "structure"])
    assert mean.loc[("ankle_000", "tibia"), "dice"] == pytest.approx(0.2 + 0.1 - 0.15)
    text = paper_repeats.main(
        [str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--out", str(tmp_path / "r.md")]
    )
    assert (tmp_path / "r.md").read_text(encoding="utf-8") == text
    # full in run a: base 0.225 + (talus 0.35 + tibia 1.7 / 6) / 2 = 0.5417; run b 0.15 less
    assert "| full | 0.542 | 0.392 | 0.150 | 50% | 12 |" in text
    assert "| mtmd+con → full | +0.06" in text and "| -0.08" in text and "| no |" in text
    second.assign(case=second["case"] + "_other").to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(SystemExit, match="different subjects"):
        paper_repeats.main([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")])


def test_plateau_stop_index() -> None:
    values = [0.5, 0.6, 0.605, 0.61, 0.7, 0.69, 0.695]
    assert paper.plateau_stop_index(values, 3, 0.0) is None
    assert paper.plateau_stop_index(values, 2, 0.0) == 6  # 0.69, 0.695 below the best 0.7
    assert paper.plateau_stop_index(values, 2, 0.01) == 3  # 0.605, 0.61: no gain above 0.01
    assert paper.plateau_stop_index(values, 1, 0.0) == 5
    assert paper.plateau_stop_index(values, 2, 0.01, min_epochs=4) == 3
    # not before the 5th value: 0.7 then counts as a gain, and 0.69, 0.695 run patience out
    assert paper.plateau_stop_index(values, 2, 0.01, min_epochs=5) == 6
    assert paper.plateau_stop_index(values, 2, 0.0, min_epochs=8) is None


@pytest.mark.parametrize("min_epochs", [0, 4, 5, 8])
def test_plateau_stop_index_is_the_training_rule(min_epochs: int) -> None:
    """The curve's simulated stop is where training's callback stops the same series."""
    from types import SimpleNamespace

    import torch

    from jointseg.training.runner import PlateauStop

    values = [0.5, 0.6, 0.605, 0.61, 0.7, 0.69, 0.695]
    rule = PlateauStop(
        min_epochs=min_epochs, monitor="val/dice", mode="max", patience=2, min_delta=0.01
    )
    trainer = SimpleNamespace(
        fast_dev_run=False,
        should_stop=False,
        strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all: decision),
    )
    stopped = None
    for epoch, value in enumerate(values):
        trainer.current_epoch = epoch
        trainer.callback_metrics = {"val/dice": torch.tensor(value)}
        rule._run_early_stopping_check(trainer)
        if trainer.should_stop:
            stopped = epoch
            break
    assert stopped == paper.plateau_stop_index(values, 2, 0.01, min_epochs)
    if stopped is None:  # a held-back stop leaves no stopping reason behind
        assert getattr(getattr(rule, "stopping_reason", None), "name", "NOT_STOPPED") == (
            "NOT_STOPPED"
        )


def test_plateau_per_dataset_waits_for_every_dataset() -> None:
    """With training.plateau_per_dataset the rule stops once no dataset has gained for
    ``patience`` validations; the training callback stops the same series at the same epoch,
    also when resumed from its saved state."""
    from types import SimpleNamespace

    import torch

    from jointseg.training.runner import PlateauStop

    # the knee keeps gaining (by 0.02) while the ankle falls as much: the mean stays at 0.6
    ankle = [0.5, 0.6, 0.58, 0.56, 0.54, 0.52, 0.50, 0.48]
    knee = [0.5, 0.6, 0.62, 0.64, 0.66, 0.68, 0.68, 0.68]
    series = [{"ankle": a, "knee": k} for a, k in zip(ankle, knee, strict=True)]
    means = [(a + k) / 2 for a, k in zip(ankle, knee, strict=True)]
    # the mean: 0.5, 0.6, 0.6, 0.6, ...: no gain above 0.01 after the 2nd value
    assert paper.plateau_stop_index(means, 2, 0.01) == 3
    # every dataset: the knee's last gain is the 6th value (0.68), then two without one
    assert paper.plateau_stop_index(series, 2, 0.01) == 7

    def run(rule, values, start=0):
        trainer = SimpleNamespace(
            fast_dev_run=False,
            should_stop=False,
            strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all: decision),
        )
        for epoch in range(start, len(values)):
            trainer.current_epoch = epoch
            trainer.callback_metrics = {
                "val/dice": torch.tensor(means[epoch]),
                **{f"val/dice_{k}": torch.tensor(v) for k, v in values[epoch].items()},
            }
            rule._run_early_stopping_check(trainer)
            if trainer.should_stop:
                return epoch
        return None

    def rule(datasets):
        return PlateauStop(
            datasets=datasets, monitor="val/dice", mode="max", patience=2, min_delta=0.01
        )

    assert run(rule(()), series) == 3
    assert run(rule(("ankle", "knee")), series) == 7
    first = rule(("ankle", "knee"))
    assert run(first, series[:5]) is None
    resumed = rule(("ankle", "knee"))
    resumed.load_state_dict(first.state_dict())
    assert resumed.dataset_best == pytest.approx({"ankle": 0.6, "knee": 0.66})
    assert run(resumed, series, start=5) == 7


def _caps() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two subjects x two bones of the knee at a short and a long cap: `full` gains 0.1, 0.2,
    0.05, 0.29 (distinct, all positive), `mtmd+con` loses 0.2 everywhere, `mtmd` is unchanged."""
    values = {
        "full": ([0.5, 0.6, 0.7, 0.7], [0.6, 0.8, 0.75, 0.99]),
        "mtmd+con": ([0.9] * 4, [0.7] * 4),
        "mtmd": ([0.8] * 4, [0.8] * 4),
    }
    keys = [(c, b) for c in ("knee_000", "knee_001") for b in ("femur", "tibia")]
    frames = []
    for index in (0, 1):
        rows = [
            {"scheme": s, "dataset": "knee", "case": c, "structure": b, "dice": v[index][i]}
            for s, v in values.items()
            for i, (c, b) in enumerate(keys)
        ]
        frames.append(pd.DataFrame(rows))
    return frames[0], frames[1]


def test_cap_comparison_ranks_and_paired_changes() -> None:
    short, long = _caps()
    labels = ("200", "600")
    table = stats.cap_comparison(short, long, ["full", "mtmd+con", "mtmd"], labels).set_index(
        "scheme"
    )
    assert table.loc["full", "200"] == pytest.approx(0.625)
    assert table.loc["full", "600"] == pytest.approx(0.785)
    assert table.loc["full", "median_difference"] == pytest.approx(0.15)
    assert table.loc["full", "p_value"] == pytest.approx(2 / 16)  # exact: 4 positive ranks
    assert table.loc["full", "rank_biserial"] == pytest.approx(1.0)
    assert table.loc["mtmd", "p_value"] == 1.0  # no change at all
    # short: mtmd+con .9, mtmd .8, full .625; long: mtmd .8, full .785, mtmd+con .7
    assert table["rank 200"].tolist() == [3, 1, 2]
    assert table["rank 600"].tolist() == [2, 3, 1]
    text = stats.cap_comparison_table(table.reset_index(), labels)
    assert "| full | 0.625 (3) | 0.785 (2) | +0.150, p 0.12, r +1.00 (4 pairs) |" in text
    assert "Kendall's tau between the two orders: -0.33" in text
    shift = stats.ranking_shift_table(short, long, labels)
    assert "| mtmd → mtmd+con | +0.100 | -0.100 |" in shift
    assert "| mtmd+con → full | -0.275 | +0.085 |" in shift
    assert "individual" not in shift  # steps with a missing scheme are left out


def test_curve_config_scales_the_cap_and_transfer_pretraining() -> None:
    from jointseg.config import load_config

    profile = paper.PROFILES["cpu"]
    cfg = load_config(profile.config, profile.overrides)
    long = paper.curve_config(cfg, 72)
    assert (long.training.epochs, long.training.transfer_pretrain_epochs) == (72, 36)
    assert long.training.plateau_patience is None and long.training.validation_every == 1
    assert cfg.training.epochs == 24 and cfg.training.plateau_patience == 3  # left alone
    assert paper.curve_config(cfg, 24).training.transfer_pretrain_epochs == 12
    assert paper.curve_config(cfg, 8).training.transfer_pretrain_epochs == 4
    assert (paper.curve_folder(cfg, 24), paper.curve_folder(cfg, 72)) == ("curve", "curve_72ep")
    assert paper.steps_per_dataset(cfg, 24) == 600.0
    assert paper.parse_schemes("all") == list(paper.SCHEMES)
    assert paper.parse_schemes(" full, mtmd+con ,") == ["full", "mtmd+con"]


def test_cell_records_the_shape_priors_reconstruction_dice(tmp_path: Path) -> None:
    from jointseg.models.shape_autoencoder import ShapeAutoencoder, save_autoencoder

    ae = ShapeAutoencoder(3, base_channels=2, code_channels=2, depth=1)
    run = tmp_path / "full"
    assert paper.shape_prior_dice(run) is None  # no prior: a scheme without it
    save_autoencoder(
        ae, run / "models" / "shape_prior", {"train_dice": 0.5, "validation_dice": None}
    )
    assert paper.shape_prior_dice(run) == 0.5  # no validation masks: the training masks' Dice
    save_autoencoder(
        ae, run / "models" / "shape_prior", {"train_dice": 0.5, "validation_dice": 0.34}
    )
    assert paper.shape_prior_dice(run) == 0.34


def test_matched_plans_cut_stages_to_the_patch() -> None:
    import _paper_nnunet as pn

    plans = {
        "plans_name": "nnUNetPlans",
        "configurations": {
            "2d": {
                "patch_size": [256, 256],
                "batch_size": 30,
                "spacing": [0.4, 0.4],
                "data_identifier": "nnUNetPlans_2d",
                "architecture": {
                    "arch_kwargs": {
                        "n_stages": 7,
                        "features_per_stage": [32, 64, 128, 256, 512, 512, 512],
                        "kernel_sizes": [[3, 3]] * 7,
                        "strides": [[1, 1]] + [[2, 2]] * 6,
                        "n_conv_per_stage": [2] * 7,
                        "n_conv_per_stage_decoder": [2] * 6,
                    }
                },
            }
        },
    }
    edited = pn.matched_plans(plans, (96, 96), 8, 1.2, "nnUNetPlansMatched")
    config = edited["configurations"]["2d"]
    assert config["patch_size"] == [96, 96] and config["batch_size"] == 8
    assert config["spacing"] == [1.2, 1.2]
    assert config["data_identifier"] == "nnUNetPlansMatched_2d"
    arch = config["architecture"]["arch_kwargs"]
    # 96 / 2^4 = 6 >= 4, 96 / 2^5 = 3 < 4: five stages
    assert arch["n_stages"] == 5 and arch["features_per_stage"] == [32, 64, 128, 256, 512]
    assert len(arch["strides"]) == 5 and len(arch["n_conv_per_stage_decoder"]) == 4
    assert plans["configurations"]["2d"]["patch_size"] == [256, 256]  # the input untouched


def test_update_page_replaces_only_the_marked_section(tmp_path: Path) -> None:
    page = tmp_path / "B.md"
    page.write_text(f"# B\n{paper.PAGE_BEGIN}\nold\n{paper.PAGE_END}\ntail\n", encoding="utf-8")
    paper.update_page(page, "new table")
    assert page.read_text(encoding="utf-8") == (
        f"# B\n{paper.PAGE_BEGIN}\nnew table\n{paper.PAGE_END}\ntail\n"
    )
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.png").write_bytes(b"png")
    figures = tmp_path / "results" / "paper"
    text = paper.page_text("see ![x](a.png)", tmp_path / "out", figures, root=tmp_path)
    assert text == "see ![x](results/paper/a.png)"
    assert (figures / "a.png").read_bytes() == b"png"
    page.write_text("no markers", encoding="utf-8")
    with pytest.raises(ValueError, match="no '<!-- paper:begin -->'"):
        paper.update_page(page, "x")


def test_cpu_profile_step_counts_at_the_cap() -> None:
    from jointseg.config import load_config

    profile = paper.PROFILES["cpu"]
    cfg = load_config(profile.config, profile.overrides)
    counts = paper.step_counts(profile, cfg, list(paper.SCHEMES))
    # individual 3 x 24 x 25; transfer 3 x 12 x 50 pre-training + 3 x 24 x 25; four 3-joint
    # networks of 24 x 75; full's prior 600
    assert counts == {"single": 3600.0, "multi": 1800.0 + 4 * 1800.0, "prior": 600.0}


@pytest.mark.slow
def test_smoke_profile_end_to_end_and_resumable(tmp_path: Path) -> None:
    args = [
        "--profile",
        "smoke",
        "--schemes",
        "mtmd+con,full",  # the last step of the ranking; two schemes keep the test short
        "--out",
        str(tmp_path),
        "--no-nnunet",
    ]
    first = paper.main(args)
    cells = 2 * 2 + 2 * 2 + 1  # folds x schemes, scarce settings x schemes, the curve
    assert len(first["trained"]) == cells
    cv = pd.read_csv(tmp_path / "cv_metrics.csv")
    # every subject tested exactly once by every scheme (4 subjects per joint, 2 folds)
    per_scheme = cv.groupby(["scheme", "dataset"])["case"].nunique()
    assert set(per_scheme) == {4}
    assert len(cv) == 2 * 4 * 9  # schemes x subjects per joint x bones
    assert {"dice", "sensitivity", "specificity", "mssd", "ravd", "hd95"} <= set(cv.columns)
    scarce = pd.read_csv(tmp_path / "scarce_metrics.csv")
    assert sorted(scarce["subjects"].unique()) == [2, 3]
    text = (tmp_path / "paper.md").read_text(encoding="utf-8")
    assert "Say what holds" in text and "| full vs mtmd+con |" in text
    assert "**nnU-Net was not run**: --no-nnunet given" in text
    for png in ("cv_dice_boxes.png", "scarce_dice.png", "steps_curve.png"):
        assert (tmp_path / png).stat().st_size > 1000
    record = json.loads((tmp_path / "cv" / "fold_0" / "full" / "cell.json").read_text())
    assert record["networks"]["main"]["cap_epochs"] == 2
    assert 0.0 <= record["shape_prior_dice"] <= 1.0  # the prior's quality is on record
    other = json.loads((tmp_path / "cv" / "fold_0" / "mtmd_con" / "cell.json").read_text())
    assert other["shape_prior_dice"] is None
    assert "; shape prior: reconstruction Dice " in text
    stamp = (tmp_path / "cv" / "fold_0" / "full" / "cell.json").stat().st_mtime_ns
    second = paper.main(args)
    assert second["trained"] == []  # every cell finished: nothing trains again
    assert (tmp_path / "cv" / "fold_0" / "full" / "cell.json").stat().st_mtime_ns == stamp
    assert (tmp_path / "paper.md").read_text(encoding="utf-8") == text
    # the plateau check: the curve to a longer cap, against fold 0's cv cells
    longer = paper.main(
        [*args, "--only", "curve", "--curve-epochs", "3", "--curve-schemes", "full"]
    )
    assert longer["trained"] == [str(tmp_path / "curve_3ep" / "full")]
    record = json.loads((tmp_path / "curve_3ep" / "full" / "cell.json").read_text())
    assert record["networks"]["main"]["epochs"] == 3
    check = (tmp_path / "plateau_curve_3ep.md").read_text(encoding="utf-8")
    assert "### Plateau check: fold 0 at 1 and at 2 steps per dataset" in check
    assert "| full | " in check and "(18 pairs) |" in check  # 2 subjects per joint x 9 bones
    assert "| mtmd+con → full |" in check
    for png in ("steps_curve_3ep.png", "dice_boxes_curve_3ep.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_a_finished_cell_trained_with_another_config_is_not_reused_silently(
    tmp_path: Path,
) -> None:
    from jointseg.config import load_config, save_config

    profile = paper.PROFILES["cpu"]
    cfg = load_config(profile.config, profile.overrides)
    saved = cfg.model_copy(deep=True)
    saved.training.plateau_min_epochs = 0
    saved.regularization.shape_prior.steps = 150
    mtmd = saved.model_copy(update={"scheme": "mtmd"})
    full = saved.model_copy(update={"scheme": "full"})
    # mtmd trains no prior: its settings are not a change there
    assert paper.config_changes(mtmd, cfg.model_copy(update={"scheme": "mtmd"})) == {
        "training.plateau_min_epochs": (0, 12)
    }
    assert paper.config_changes(full, cfg.model_copy(update={"scheme": "full"})) == {
        "regularization.shape_prior.steps": (150, 600),
        "training.plateau_min_epochs": (0, 12),
    }
    # one dataset per network: the per-dataset plateau rule watches the same Dice
    flipped = saved.model_copy(deep=True)
    flipped.training.plateau_per_dataset = not cfg.training.plateau_per_dataset
    for scheme, changed in (("individual", False), ("transfer", True), ("mtmd", True)):
        changes = paper.config_changes(
            flipped.model_copy(update={"scheme": scheme}), cfg.model_copy(update={"scheme": scheme})
        )
        assert ("training.plateau_per_dataset" in changes) is changed, scheme
    ruleless = cfg.model_copy(update={"scheme": "mtmd"}, deep=True)
    ruleless.training.plateau_patience = None
    unruled = flipped.model_copy(update={"scheme": "mtmd"}, deep=True)
    unruled.training.plateau_patience = None
    assert "training.plateau_per_dataset" not in paper.config_changes(unruled, ruleless)
    run = tmp_path / "full"
    run.mkdir()
    save_config(full, run / "config.yaml")
    (run / paper.CELL_FILE).write_text(json.dumps({"scheme": "full", "networks": {}}))
    with pytest.raises(SystemExit, match="training.plateau_min_epochs 0 -> 12"):
        paper.run_cell(cfg, "full", tmp_path, run, [])
    record = paper.run_cell(cfg, "full", tmp_path, run, [], keep_changed=True)
    assert record["config_changes"]["regularization.shape_prior.steps"] == (150, 600)
    save_config(cfg.model_copy(update={"scheme": "full"}), run / "config.yaml")
    assert "config_changes" not in paper.run_cell(cfg, "full", tmp_path, run, [])


def test_records_keep_finished_cells_for_a_rerun_elsewhere(tmp_path: Path) -> None:
    import _paper_records as records

    from jointseg.config import load_config, save_config

    cfg = load_config(paper.PROFILES["cpu"].config, paper.PROFILES["cpu"].overrides)
    out, kept, elsewhere = tmp_path / "out", tmp_path / "records", tmp_path / "elsewhere"
    run = out / "cv" / "fold_0" / "full"
    (run / "evaluation").mkdir(parents=True)
    (run / "logs" / "main").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    save_config(cfg.model_copy(update={"scheme": "full"}), run / "config.yaml")
    (run / "run.json").write_text(json.dumps({"data_dir": str(out.resolve() / "cv" / "data")}))
    (run / "evaluation" / "metrics.csv").write_text("subset,structure,dice\ntest,talus,0.5\n")
    (run / "logs" / "main" / "metrics.csv").write_text("epoch,val/dice\n0,0.4\n")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"\0" * 64)
    unfinished = out / "cv" / "fold_0" / "mtmd"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("scheme: mtmd\n")
    assert not records.save_cell(out, unfinished, kept)  # no cell.json: not finished
    cell = {"scheme": "full", "view": str(out.resolve() / "cv" / "fold_0" / "data")}
    (run / paper.CELL_FILE).write_text(json.dumps(cell))
    assert records.save_all(out, kept) == 1
    saved = sorted(p.relative_to(kept).as_posix() for p in kept.rglob("*") if p.is_file())
    assert saved == [
        "cv/fold_0/full/cell.json",
        "cv/fold_0/full/config.yaml",
        "cv/fold_0/full/evaluation/metrics.csv",
        "cv/fold_0/full/logs/main/metrics.csv",
        "cv/fold_0/full/run.json",
    ]  # no checkpoint, no unfinished cell
    assert json.loads((kept / "cv/fold_0/full/cell.json").read_text())["view"] == (
        "${OUT}/cv/fold_0/data"
    )
    assert str(tmp_path) not in (kept / "cv/fold_0/full/run.json").read_text()
    assert records.restore(kept, elsewhere) == [elsewhere / "cv" / "fold_0" / "full"]
    moved = elsewhere / "cv" / "fold_0" / "full"
    assert json.loads((moved / "cell.json").read_text())["view"] == (
        f"{elsewhere.resolve()}/cv/fold_0/data"
    )
    assert paper.held_out_rows(moved, "full")["dice"].tolist() == [0.5]
    trained: list[str] = []
    assert paper.run_cell(cfg, "full", elsewhere, moved, trained)["scheme"] == "full"
    assert trained == []  # finished: reported, not trained again
    (moved / paper.CELL_FILE).write_text(json.dumps({"scheme": "full", "view": "here"}))
    assert records.restore(kept, elsewhere) == []  # a finished cell is never overwritten
    assert json.loads((moved / "cell.json").read_text())["view"] == "here"


def test_the_cpu_profiles_committed_records_test_every_subject_once(tmp_path: Path) -> None:
    """The records kept in git (benchmarks/results/paper/cells/cpu) restore into an empty
    output folder, carry no path of the machine that ran them, and hold for every scheme of
    every fold its held-out scores: each cross-validated subject tested once per scheme."""
    import _paper_records as records

    kept = paper.PAGE_FIGURES / "cells" / "cpu"
    profile = paper.PROFILES["cpu"]
    for path in kept.rglob("*"):
        if path.is_file():
            assert str(paper.ROOT) not in path.read_text(encoding="utf-8"), path
    for cell in kept.rglob(paper.CELL_FILE):  # paths of the output folder are stored as ${OUT}
        assert json.loads(cell.read_text())["view"].startswith(records.OUT_TOKEN + "/"), cell
        data_dir = json.loads((cell.parent / "run.json").read_text())["data_dir"]
        assert data_dir.startswith(records.OUT_TOKEN + "/"), cell
    restored = records.restore(kept, tmp_path)
    runs = [r for r in restored if r.parent.parent.name == "cv"]
    assert len(runs) == profile.folds * len(paper.SCHEMES)
    rows = pd.concat(
        [
            paper.held_out_rows(run, json.loads((run / "cell.json").read_text())["scheme"])
            for run in runs
        ]  # fmt: skip
    )
    per_scheme = rows.groupby(["scheme", "dataset"])["case"].nunique()
    assert set(per_scheme) == {profile.subjects}
    assert not rows.duplicated(["scheme", "case", "structure"]).any()
