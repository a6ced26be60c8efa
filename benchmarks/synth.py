"""The synthetic MR generator: seconds per subject, and how hard the images are to threshold.

    python benchmarks/synth.py                  # 5 subjects per joint, default volumes
    python benchmarks/synth.py --subjects 10
    python benchmarks/synth.py --study 15 --jobs 2   # also time a whole study

For every subject, an oracle picks the global intensity interval that best matches the union of
the labelled bones (Dice, labels known). The generator is only useful if this oracle fails:
the printed mean and maximum should stay below 0.6 on every joint. Time is per subject on one
core (wall clock and CPU time; the CPU time is the fairer figure on a busy machine), after the
per-process bone grids are built (their build time is printed apart).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from jointseg.synth.anatomy import JOINTS
from jointseg.synth.fields import bone_field
from jointseg.synth.generate import subject_params, synthesize_study
from jointseg.synth.quality import oracle_threshold_dice
from jointseg.synth.synthesis import synthesize_subject


def per_subject(subjects: int, seed: int) -> None:
    start = time.perf_counter()
    for joint, spec in JOINTS.items():
        for bone in spec.bones:
            bone_field(joint, bone.name)
    print(f"bone grids (once per process): {time.perf_counter() - start:.1f} s")
    print(
        f"{'joint':9s} {'shape (z,y,x)':>16s} {'wall s':>7s} {'cpu s':>6s} "
        f"{'oracle Dice':>12s} {'max':>6s}"
    )
    for joint in JOINTS:
        walls, cpus, dices, shape = [], [], [], None
        for index in range(subjects):
            params = subject_params(joint, "train", index, seed)
            tic, cpu = time.perf_counter(), time.process_time()
            volume = synthesize_subject(params)
            walls.append(time.perf_counter() - tic)
            cpus.append(time.process_time() - cpu)
            dices.append(oracle_threshold_dice(volume.image, volume.label))
            shape = volume.image.shape
        print(
            f"{joint:9s} {str(shape):>16s} {np.mean(walls):7.2f} {np.mean(cpus):6.2f} "
            f"{np.mean(dices):12.3f} {np.max(dices):6.3f}"
        )


def study(subjects: int, jobs: int, seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tic = time.perf_counter()
        synthesize_study(
            Path(tmp) / "study", subjects, max(1, subjects // 3), list(JOINTS), seed, jobs, False
        )
        total = 3 * (subjects + max(1, subjects // 3))
        wall = time.perf_counter() - tic
        print(
            f"study of {total} subjects, --jobs {jobs}: {wall:.0f} s "
            f"({wall / total:.2f} s per subject)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--study", type=int, default=0, help="also time a study of N subjects")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2 subjects, no study")
    args = parser.parse_args()
    if args.quick:
        args.subjects, args.study = 2, 0
    per_subject(args.subjects, args.seed)
    if args.study:
        study(args.study, args.jobs, args.seed)


if __name__ == "__main__":
    main()
