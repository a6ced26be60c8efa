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
appearance rule (runs without anatomy statistics) and the anatomy rule; ``anatomy-ranked`` is
the alternative that ranks the plausible domains by anatomy distance instead of appearance.
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

from jointseg.data.preprocess import preprocess_case  # noqa: E402

NON_JOINTS = ("noise", "brain-like", "abdomen-like")
CONTRASTS = ("protocol", "t1", "random")


def add_anatomy(predictor, study: Path) -> None:
    """Measure the run's anatomy statistics from its training label maps, calibrated on its
    predictions of its validation scans (as ``jointseg train`` does), and load them."""
    from jointseg.data.io import read_image
    from jointseg.data.manifest import list_cases
    from jointseg.recognition.anatomy import ANATOMY_FILE
    from jointseg.recognition.fitting import fit_anatomy

    run, info = predictor.run_dir, predictor.info
    if not (run / ANATOMY_FILE).is_file():
        label_maps, predictions = {}, {}
        for domain in info.domains:
            lut = domain.labels().local_lookup()
            cases = {c.case_id: c for c in list_cases(study / domain.folder, "train")}
            label_maps[domain.name], predictions[domain.name] = [], []
            for case_id in info.training_cases[domain.name]:
                case = cases[case_id]
                image, label = read_image(case.image), read_image(case.label)
                done = preprocess_case(image, label, predictor.config.preprocessing)
                label_maps[domain.name].append((lut[done.label], done.inverse.slice_spacing))
            for case_id in info.validation_cases[domain.name]:
                done = predictor.preprocess(read_image(cases[case_id].image))
                labels = predictor.segment_slices(done.image, predictor.routes[domain.name])
                predictions[domain.name].append((labels, done.inverse.slice_spacing))
        structures = {d.name: list(d.structures) for d in info.domains}
        fit_anatomy(run, structures, label_maps, predictions)
    predictor.recognizer.load_run(run)


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
    predictor = Predictor.from_run(run, calibrate=False)
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
        confusion(frame, rule) for rule in ("appearance", "anatomy", "anatomy-ranked")
    )
    (args.out / f"summary-{args.run.name}.md").write_text(text, encoding="utf-8")
    print(text, flush=True)


if __name__ == "__main__":
    main()
