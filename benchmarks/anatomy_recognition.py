"""Joint recognition by anatomy against recognition by appearance, on held-out scans of every
joint in several contrasts and on volumes that show no joint.

    python benchmarks/anatomy_recognition.py --run RUN [--contrasts protocol,t1,random]

``RUN``: a run trained with ``jointseg train`` on a ``jointseg synth`` study (its ``data_dir``,
still on disk; ``--study`` otherwise). The run is copied to ``--out`` (default
benchmarks/out/anatomy_recognition/) and, if it has none, its anatomy statistics are measured
there from its training label maps (preprocessed as training did), as ``jointseg train`` does
now. Test volumes, up to ``--test`` held-out subjects per joint:

- ``protocol``: the study's test scan (the joint's realistic protocol);
- ``t1``: the same subject with the protocol's geometry as T1-weighted spin echo without fat
  suppression (marrow and fat bright; benchmarks/randomized.py's unseen protocol);
- ``random``: the same subject with the protocol's geometry and its randomized contrast
  (``jointseg synth --randomize``'s draw for that subject);

and, in the knee test scan's geometry, volumes with no joint
(:mod:`jointseg.synth.nonjoint`): Gaussian noise, a brain-like head, an abdomen-like body
(seeds 0 and 1 each). Every volume is recognized with the appearance rule (runs without
anatomy statistics) and the anatomy rule; ``anatomy-ranked`` is the alternative that ranks the
plausible domains by anatomy distance instead of appearance. Confusion tables go to the console
and to ``decisions.csv`` and ``summary.md``.
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


def add_anatomy(run: Path, study: Path) -> None:
    """Measure the run's anatomy statistics from its training label maps."""
    from jointseg.config import load_config
    from jointseg.data.io import read_image
    from jointseg.data.manifest import list_cases
    from jointseg.data.preprocess import preprocess_case
    from jointseg.recognition.anatomy import ANATOMY_FILE
    from jointseg.recognition.fitting import fit_anatomy
    from jointseg.runs import load_run_info

    if (run / ANATOMY_FILE).is_file():
        return
    info = load_run_info(run)
    cfg = load_config(run / "config.yaml").preprocessing
    label_maps = {}
    for domain in info.domains:
        lut = domain.labels().local_lookup()
        cases = {c.case_id: c for c in list_cases(study / domain.folder, "train")}
        label_maps[domain.name] = []
        for case_id in info.training_cases[domain.name]:
            case = cases[case_id]
            done = preprocess_case(read_image(case.image), read_image(case.label), cfg)
            label_maps[domain.name].append((lut[done.label], done.inverse.slice_spacing))
    structures = {d.name: list(d.structures) for d in info.domains}
    fit_anatomy(run, structures, label_maps)


def rendered(joint: str, index: int, contrast: str, seed: int, scale: float):
    """A held-out subject of ``joint`` in ``contrast`` ('t1' or 'random') as an image."""

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


def volumes(study: Path, info, contrasts, test: int):
    """(protocol, truth, case, image) of every test volume."""
    import SimpleITK as sitk

    from jointseg.data.io import read_image
    from jointseg.data.manifest import list_cases
    from jointseg.synth import nonjoint

    record = json.loads((study / "synth.json").read_text(encoding="utf-8"))
    seed, scale = int(record["seed"]), float(record["scale"])
    reference = None
    for domain in info.domains:
        for index, case in enumerate(list_cases(study / domain.folder, "test")[:test]):
            image = read_image(case.image)
            if domain.name == "knee" and reference is None:
                reference = image
            for contrast in contrasts:
                if contrast == "protocol":
                    yield contrast, domain.name, case.case_id, image
                else:
                    yield (
                        contrast,
                        domain.name,
                        case.case_id,
                        rendered(domain.name, index, contrast, seed, scale),
                    )
    assert reference is not None
    shape = sitk.GetArrayViewFromImage(reference).shape
    for kind in NON_JOINTS:
        make = {"noise": nonjoint.noise_volume, "brain-like": nonjoint.brain_like,
                "abdomen-like": nonjoint.abdomen_like}[kind]  # fmt: skip
        for seed_ in (0, 1):
            image = make(shape, reference.GetSpacing(), seed_)
            image.SetDirection(reference.GetDirection())
            yield "no joint", kind, f"{kind}-{seed_}", image


def decide(predictor, image) -> dict:
    """The appearance rule's and the anatomy rule's decisions (None: refused)."""
    case = predictor.preprocess(image)
    old = predictor.recognizer.recognize(case.image, refuse=False)
    began = time.perf_counter()
    new = predictor.recognizer.recognize(case.image, False, case.inverse.slice_spacing)
    seconds = time.perf_counter() - began
    plausible = [n for n, s in new.anatomy.items() if s.plausible]
    ranked = min(plausible, key=lambda n: new.anatomy[n].distance) if plausible else None
    return {
        "appearance": old.domain or "refused",
        "anatomy": new.domain or "refused",
        "anatomy-ranked": ranked or "refused",
        "seconds": round(seconds, 2),
        **{f"D_{n}": round(s.distance, 3) for n, s in new.anatomy.items()},
        **{f"why_{n}": "; ".join(s.reasons) for n, s in new.anatomy.items()},
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
    add_anatomy(run, study)
    predictor = Predictor.from_run(run, calibrate=False)
    rows = []
    contrasts = [c for c in args.contrasts.split(",") if c]
    for protocol, truth, case, image in volumes(study, info, contrasts, args.test):
        row = {"protocol": protocol, "truth": truth, "case": case, **decide(predictor, image)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    frame = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / f"decisions-{args.run.name}.csv", index=False)
    text = f"run {args.run}\n\n" + "\n".join(
        confusion(frame, rule) for rule in ("appearance", "anatomy", "anatomy-ranked")
    )
    (args.out / f"summary-{args.run.name}.md").write_text(text, encoding="utf-8")
    print(text, flush=True)


if __name__ == "__main__":
    main()
