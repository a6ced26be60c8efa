"""Joint recognition by anatomy against recognition by appearance, on held-out scans of every
joint in several contrasts and on volumes that show no joint.

    python benchmarks/anatomy_recognition.py --run RUN [--contrasts protocol,t1,random]

``RUN``: a run trained with ``jointseg train`` on a ``jointseg synth`` study (its ``data_dir``,
still on disk; ``--study`` otherwise). The run is copied to ``--out`` (default
benchmarks/out/anatomy_recognition/) and, if it has none, its anatomy statistics are measured
there from its training label maps (preprocessed as training did) and calibrated on its
predictions of its validation scans, as ``jointseg train`` does now. Test volumes, up to
``--test`` held-out subjects per joint:

- ``protocol``: the study's test scan (the joint's realistic protocol);
- ``t1``: the same subject with the protocol's geometry as T1-weighted spin echo without fat
  suppression (marrow and fat bright; benchmarks/randomized.py's unseen protocol);
- ``random``: the same subject with the protocol's geometry and its randomized contrast
  (``jointseg synth --randomize``'s draw for that subject);

and, in the knee test scan's geometry, volumes with no joint
(:mod:`jointseg.synth.nonjoint`): Gaussian noise, a brain-like head, an abdomen-like body
(seeds 0 and 1 each; ``--joints-only`` leaves them out). Every volume is recognized with the
rule of :func:`decide` (``appearance``, ``anatomy``, ``anatomy-first``, ``anatomy-ranked``).
Confusion tables go to the console and to ``decisions-RUN.csv`` and ``summary-RUN.md``
(``RUN``: the run folder's name).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))


NON_JOINTS = ("noise", "brain-like", "abdomen-like")
CONTRASTS = ("protocol", "t1", "random")


def add_anatomy(predictor, study: Path) -> None:
    """Measure the run's anatomy statistics from its training label maps, calibrated on its
    predictions of its validation scans (as ``jointseg train`` does), unless it has them, and
    load them."""
    from jointseg.runs import RunFolder
    from jointseg.workflows.anatomy import fit_run_anatomy_from_study

    run = predictor.run_dir
    if not RunFolder(run).anatomy_reference_file.is_file():
        fit_run_anatomy_from_study(run, study)
    predictor.recognizer.load_run(run)
    reliable = {n: r.reliable for n, r in predictor.recognizer.anatomy.items()}
    print(f"[anatomy] reliable domains: {reliable}", flush=True)


def rendered(joint: str, index: int, contrast: str, seed: int, scale: float, cache: Path):
    """A held-out subject of ``joint`` in ``contrast`` ('t1' or 'random') as an image (rendered
    once into ``cache``)."""
    from jointseg.data.io import read_image, write_image

    path = cache / f"{joint}_{index}_{contrast}_{seed}_{scale}.nii.gz"
    if path.is_file():
        return read_image(path)
    image = render(joint, index, contrast, seed, scale)
    write_image(image, path)
    return image


def render(joint: str, index: int, contrast: str, seed: int, scale: float):

    from randomized import unseen_rendering

    from jointseg.data.io import array_to_image
    from jointseg.synth.generate import subject_params
    from jointseg.synth.randomize import sample_rendering, synthesize_randomized

    params = subject_params(joint, "test", index, seed)
    if contrast == "t1":
        rendering = unseen_rendering(params)
    else:
        rendering = sample_rendering(params, geometry=False)
    volume = synthesize_randomized(params, rendering, scale)
    g = volume.geometry
    return array_to_image(
        volume.image, spacing=g.spacing, origin=g.origin, direction=g.direction.ravel()
    )


def volumes(study: Path, info, contrasts, test: int, cache: Path, non_joints=NON_JOINTS):
    """(protocol, truth, case, image) of every test volume."""
    import SimpleITK as sitk

    from jointseg.data.io import read_image
    from jointseg.data.manifest import list_cases
    from jointseg.synth import nonjoint

    record = json.loads((study / "synth.json").read_text(encoding="utf-8"))
    seed, scale = int(record["seed"]), float(record["scale"])
    knee = next(d for d in info.domains if d.name == "knee")
    reference = read_image(list_cases(study / knee.folder, "test")[0].image)
    shape = sitk.GetArrayViewFromImage(reference).shape
    for kind in non_joints:
        make = {"noise": nonjoint.noise_volume, "brain-like": nonjoint.brain_like,
                "abdomen-like": nonjoint.abdomen_like}[kind]  # fmt: skip
        for seed_ in (0, 1):
            image = make(shape, reference.GetSpacing(), seed_)
            image.SetDirection(reference.GetDirection())
            yield "no joint", kind, f"{kind}-{seed_}", image
    for contrast in contrasts:
        for domain in info.domains:
            for index, case in enumerate(list_cases(study / domain.folder, "test")[:test]):
                if contrast == "protocol":
                    yield contrast, domain.name, case.case_id, read_image(case.image)
                else:
                    image = rendered(domain.name, index, contrast, seed, scale, cache)
                    yield contrast, domain.name, case.case_id, image


def decide(predictor, image) -> dict:
    """Each rule's decision (None: refused): ``appearance`` (runs without anatomy statistics),
    ``anatomy`` (the rule of runs with them: candidates in appearance order, vetoed by their
    anatomy check only where the domain is reliable), ``anatomy-first`` (every domain
    trusted: vetoed wherever its anatomy is implausible) and ``anatomy-ranked`` (the plausible
    domains ranked by anatomy distance)."""
    from jointseg.recognition.decision import decide_by_anatomy, recognize_domain

    recognizer = predictor.recognizer
    case = predictor.preprocess(image)
    spacing = case.inverse.slice_spacing
    began = time.perf_counter()
    new = recognizer.recognize(case.image, False, spacing)
    seconds = time.perf_counter() - began
    saved, recognizer.anatomy = recognizer.anatomy, {}
    try:
        old = recognizer.recognize(case.image, refuse=False)
    finally:
        recognizer.anatomy = saved
    complete = recognize_domain(recognizer.candidates(), case.image, recognizer.calibration,
                                recognizer.batch_size, complete=True)  # fmt: skip
    scores = {name: new.anatomy.get(name) or recognizer.anatomy_score(case.image, spacing, name)
              for name in recognizer.routes}  # fmt: skip
    first = decide_by_anatomy(complete, scores.__getitem__, list(scores))
    plausible = [n for n, s in scores.items() if s.plausible]
    ranked = min(plausible, key=lambda n: scores[n].distance) if plausible else None
    return {
        "appearance": old.domain or "refused",
        "anatomy": new.domain or "refused",
        "anatomy-first": first.domain or "refused",
        "anatomy-ranked": ranked or "refused",
        "anatomy_checked": ",".join(new.anatomy),
        "seconds": round(seconds, 2),
        **{f"D_{n}": round(s.distance, 3) for n, s in scores.items()},
        **{f"why_{n}": "; ".join(s.reasons) for n, s in scores.items()},
        **{f"app_{s.name}": round(s.refusal, 3) for s in old.scores},
        "threshold": round(old.threshold, 3),
    }


def confusion(frame: pd.DataFrame, rule: str) -> str:
    table = pd.crosstab([frame["protocol"], frame["truth"]], frame[rule])
    header = "| contrast | truth | " + " | ".join(table.columns) + " |"
    lines = [header, "|" + " --- |" * (len(table.columns) + 2)]
    for (protocol, truth), counts in table.iterrows():
        lines.append(f"| {protocol} | {truth} | " + " | ".join(str(v) for v in counts) + " |")
    return f"**{rule}**\n\n" + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--study", type=Path)
    parser.add_argument("--contrasts", default=",".join(CONTRASTS))
    parser.add_argument("--test", type=int, default=2)
    parser.add_argument("--joints-only", action="store_true", help="no non-joint volumes")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "out" / "anatomy_recognition"
    )
    args = parser.parse_args()
    from jointseg.inference.predictor import Predictor
    from jointseg.runs import load_run_info

    info = load_run_info(args.run)
    study = args.study or Path(info.data_dir)
    run = args.out / args.run.name
    if not run.is_dir():
        shutil.copytree(args.run, run, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    predictor = Predictor.from_run(run)
    add_anatomy(predictor, study)
    rows = []
    contrasts = [c for c in args.contrasts.split(",") if c]
    cache = args.out / "volumes"
    cache.mkdir(parents=True, exist_ok=True)
    for protocol, truth, case, image in volumes(
        study, info, contrasts, args.test, cache, () if args.joints_only else NON_JOINTS
    ):
        row = {"protocol": protocol, "truth": truth, "case": case, **decide(predictor, image)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    frame = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / f"decisions-{args.run.name}.csv", index=False)
    text = f"run {args.run}\n\n" + "\n".join(
        confusion(frame, rule)
        for rule in ("appearance", "anatomy", "anatomy-first", "anatomy-ranked")
    )
    (args.out / f"summary-{args.run.name}.md").write_text(text, encoding="utf-8")
    print(text, flush=True)


if __name__ == "__main__":
    main()
