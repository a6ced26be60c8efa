"""How long a profile of ``benchmarks/paper.py`` trains at its cap, from measured step times.

On a small study at the profile's scale (2 training subjects per joint, same generator), with
the profile's config (network, patch, batch), it times optimizer steps (``StepTimer``,
after warm-up steps) of a one-dataset network (``individual``), a three-dataset one
(``mtmd+con``) and ``full``, and the shape prior's pre-training (the wall clock of ``full``
minus that of ``mtmd+con`` with the same steps, per pre-training step). Each step is timed
in wall-clock and in CPU seconds of this process (all threads): on a shared machine the wall
clock is stretched by the other load, the CPU seconds much less; CPU seconds / 2 is the wall
clock of a quiet 2-core machine if both threads stay busy (a lower bound), CPU seconds / 1
the wall clock if only one does (an upper bound). The profile's step
counts at the cap (every network to ``training.epochs``) then give its training time; it is an
upper bound of the training part, as the plateau stop ends most networks earlier. Validation,
recognition references, postprocessing decisions and evaluation are not in it (``overhead``:
a measured fraction can be added from a finished run's ``cell.json`` records).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from paper import step_counts

from jointseg.training.timing import StepTimer

WARMUP = 3
TIMED = 10
PRIOR_STEPS = 40


class CpuStepTimer(StepTimer):
    """``StepTimer`` that also records each timed step's CPU seconds (all threads)."""

    def __init__(self, warmup: int) -> None:
        super().__init__(warmup)
        self.cpu: list[float] = []
        self._cpu_start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self._cpu_start = time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if batch_idx >= self.warmup:
            self.cpu.append(time.process_time() - self._cpu_start)


def _timed(cfg, scheme: str, data: Path, out: Path) -> dict[str, float]:
    """Mean wall and CPU seconds per timed step, and of the whole training."""
    import shutil

    from jointseg.training.runner import train_networks

    if out.exists():
        shutil.rmtree(out)
    timer = CpuStepTimer(WARMUP)
    started, cpu = time.perf_counter(), time.process_time()
    scheme_cfg = cfg.model_copy(update={"scheme": scheme})
    train_networks(scheme_cfg, data, out, progress=False, callbacks=[timer])
    return {
        "step": sum(timer.steps) / len(timer.steps),
        "step_cpu": sum(timer.cpu) / len(timer.cpu),
        "wall": time.perf_counter() - started,
        "cpu": time.process_time() - cpu,
    }


def _timing_config(cfg, datasets: int | None = None):
    timing = cfg.model_copy(deep=True)
    timing.training.epochs = 1
    timing.training.iterations_per_epoch = WARMUP + TIMED
    timing.training.iterations_per_dataset = False
    timing.training.validation_fraction = 0.0
    timing.training.plateau_patience = None
    timing.regularization.shape_prior.steps = PRIOR_STEPS
    if datasets is not None:
        timing.datasets = timing.datasets[:datasets]
    return timing


def _cell_overhead(cfg, study: Path, out: Path, multi: dict[str, float]) -> dict[str, float]:
    """A whole ``mtmd`` cell at the profile's config with one epoch of the timed steps, one
    validation subject and one test subject per joint: CPU seconds of ``train_run`` outside
    the optimizer steps (data set-up, one validation, recognition references, postprocessing
    decision) and of ``evaluate_run``."""
    import shutil

    from jointseg.evaluation.evaluate import evaluate_run
    from jointseg.workflows.train import train_run

    if out.exists():
        shutil.rmtree(out)
    cell = _timing_config(cfg)
    cell.training.validation_fraction = 0.5
    cell.training.validation_every = 1
    cpu = time.process_time()
    train_run(cell.model_copy(update={"scheme": "mtmd"}), study, out, progress=False)
    trained = time.process_time() - cpu
    cpu = time.process_time()
    evaluate_run(out, progress=False)
    return {
        "train_run_cpu_outside_steps": trained - (WARMUP + TIMED) * multi["step_cpu"],
        "evaluate_run_cpu": time.process_time() - cpu,
    }


def _seconds(counts: dict[str, float], per_step: dict[str, float]) -> float:
    return sum(counts[k] * per_step[k] for k in ("single", "multi", "prior"))


def estimate_profile(profile, cfg, schemes: list[str], out: Path, seed: int, jobs: int) -> dict:
    """Time the profile's steps on a small study and write ``estimate.json``."""
    import torch

    from jointseg.synth.generate import synthesize_study

    torch.set_num_threads(2)  # the profile's machine: 2 cores
    study = out / "study"
    if not (study / "synth.json").is_file():
        synthesize_study(
            study,
            2,
            0,
            ["ankle", "knee", "shoulder"],
            seed,
            jobs,
            False,
            scale=profile.synth_scale,
            progress=False,
        )
    single = _timed(_timing_config(cfg, 1), "individual", study, out / "single")
    multi = _timed(_timing_config(cfg), "mtmd+con", study, out / "multi")
    full = _timed(_timing_config(cfg), "full", study, out / "full")
    steps = WARMUP + TIMED
    per_step = {}
    for clock, step_key in (("wall", "step"), ("cpu", "step_cpu")):
        extra = full[clock] - multi[clock] - (full[step_key] - multi[step_key]) * steps
        per_step[clock] = {
            "single": single[step_key],
            "multi": full[step_key],  # the dearest three-dataset network stands for all
            "prior": max(0.0, extra) / PRIOR_STEPS,
        }
    overhead = _cell_overhead(cfg, study, out / "cell", multi)
    counts = step_counts(profile, cfg, schemes)
    curve = step_counts(profile, cfg, [s for s in profile.curve_schemes if s in schemes])
    settings = profile.folds + len(profile.scarce)
    total = {
        clock: settings * _seconds(counts, per_step[clock]) + _seconds(curve, per_step[clock])
        for clock in per_step
    }
    result = {
        "threads": torch.get_num_threads(),
        "measured": {"one_dataset": single, "mtmd+con": multi, "full": full},
        "seconds_per_step": per_step,
        "steps_per_setting_at_cap": counts,
        "curve_steps_at_cap": curve,
        "settings": settings,
        "one_cell_outside_steps": overhead,
        "training_seconds_at_cap": {
            "measured_wall": total["wall"],
            "cpu_seconds": total["cpu"],
            "quiet_2_cores_lower": total["cpu"] / 2,
            "quiet_2_cores_upper": total["cpu"],
        },
    }
    (out / "estimate.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(json.dumps(result, indent=1))
    return result
