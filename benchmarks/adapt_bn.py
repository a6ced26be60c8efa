"""Test-time BN adaptation (``jointseg predict --adapt-bn``) on joints under foreign protocols.

    OMP_NUM_THREADS=1 python benchmarks/adapt_bn.py [--run pretrained]
        [--pairs knee:ankle,knee:elbow,knee:shoulder,elbow:knee,knee:knee,elbow:elbow]
        [--test 3] [--data-seed 11] [--scale 1.0] [--out benchmarks/out/adapt_bn]
        [--json benchmarks/results/adapt_bn/DATE.json]

Each ``JOINT:PROTOCOL`` pair is the joint's held-out subjects (``subject_params(joint, "test",
i, seed)``) imaged with that protocol's contrast and resolution, rendered by
``benchmarks/protocol_swap.py``'s :func:`render_all` into ``OUT/data`` (kept: a rerun renders
what is missing); a pair of a joint with its own protocol is the control (the training
distribution). One Predictor of the run segments every scan twice, the joint given, as
``jointseg predict`` does (the run's postprocessing): with the joint's BN statistics as trained,
and re-estimated on the scan (``adapt_bn``). Dice per bone against the exact labels, the seconds
of each prediction. Written: the JSON (per scan and bone, and the table); printed: the table.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from protocol_swap import by_name, protocol_title, render_all, scan_paths  # noqa: E402

from jointseg.synth.protocol_swap import imaging_protocol  # noqa: E402
from jointseg.utils.atomic import atomic_write_json  # noqa: E402
from jointseg.utils.environment import cpu_description  # noqa: E402

PAIRS = "knee:ankle,knee:elbow,knee:shoulder,elbow:knee,knee:knee,elbow:elbow"
MODES = {"plain": False, "adapted": True}


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """``JOINT:PROTOCOL,...`` -> [(joint, protocol)]; unknown names: a clear error."""
    pairs = []
    for item in filter(None, text.split(",")):
        joint, sep, protocol = item.partition(":")
        if not sep:
            raise SystemExit(f"--pairs: {item!r} is not JOINT:PROTOCOL")
        imaging_protocol(joint, protocol)  # unknown joints and protocols: ValueError
        pairs.append((joint, protocol))
    return pairs


def score(run: str, data: Path, pairs: list[tuple[str, str]], test: int) -> pd.DataFrame:
    """Dice per scan, bone and mode (plain, adapted) and the seconds of each prediction."""
    from tqdm import tqdm

    from jointseg.data.io import read_image
    from jointseg.evaluation.metrics import score_case
    from jointseg.inference.postprocess import Postprocessing
    from jointseg.inference.predict import postprocess_prediction
    from jointseg.inference.predictor import Predictor

    predictor = Predictor.from_run(run)
    postprocessing = Postprocessing.load(predictor.run_dir)
    unknown = sorted({joint for joint, _ in pairs} - set(predictor.domains))
    if unknown:
        raise SystemExit(f"{run}: {', '.join(unknown)} not among its domains")
    rows = []
    scans = [(joint, protocol, i) for joint, protocol in pairs for i in range(test)]
    for joint, protocol, index in tqdm(scans, desc="score", unit="scan"):
        image_path, label_path = scan_paths(data, protocol, joint, index)
        image, reference = read_image(image_path), read_image(label_path)
        for mode, adapt in MODES.items():
            predictor.adapt_bn = adapt
            started = time.perf_counter()
            prediction = predictor.predict_checked(image, joint)
            seconds = time.perf_counter() - started
            assert prediction.details["adapt_bn"] is adapt
            prediction = postprocess_prediction(postprocessing, prediction)
            label_map, structures = by_name(
                prediction.label_map, predictor.structures(joint), joint
            )
            for row in score_case(label_map, reference, structures):
                rows.append({"joint": joint, "protocol": protocol, "subject": index,
                             "mode": mode, "structure": row["structure"],
                             "dice": float(row["dice"]), "seconds": seconds})  # fmt: skip
    return pd.DataFrame(rows)


def bone_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean Dice over the subjects per joint, protocol and bone, plain and adapted, and the
    change; after each pair's bones, its ``mean`` over bones and subjects."""
    rows = []
    for (joint, protocol), pair in scores.groupby(["joint", "protocol"], sort=False):
        bones = pair.groupby(["structure", "mode"], sort=False)["dice"].mean().unstack()
        bones.loc["mean"] = pair.groupby("mode")["dice"].mean()
        for bone, dice in bones.iterrows():
            rows.append({"joint": joint, "protocol": protocol, "bone": bone,
                         "plain": float(dice["plain"]), "adapted": float(dice["adapted"]),
                         "change": float(dice["adapted"] - dice["plain"])})  # fmt: skip
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame, subjects: int) -> str:
    """The table in Markdown: one row per joint, protocol and bone (the pair's mean in bold)."""
    lines = [f"Dice per bone, mean over {subjects} subject{'s' * (subjects > 1)}; "
             "the joint's own protocol is the control.", "",
             "| joint | imaged with | bone | Dice | Dice `--adapt-bn` | change |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for row in table.itertuples():
        cells = [f"{row.plain:.3f}", f"{row.adapted:.3f}", f"{row.change:+.3f}"]
        bone = row.bone
        if bone == "mean":
            cells, bone = [f"**{c}**" for c in cells], "**mean**"
        head = [row.joint, protocol_title(row.protocol), bone]
        lines.append("| " + " | ".join(head + cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="pretrained", help="a run folder, or 'pretrained'")
    parser.add_argument("--pairs", default=PAIRS, help="JOINT:PROTOCOL,... to image and score")
    parser.add_argument("--test", type=int, default=3, help="held-out subjects per pair")
    parser.add_argument("--data-seed", type=int, default=11, help="the subjects' seed")
    parser.add_argument("--scale", type=float, default=1.0, help="< 1: smaller volumes (tests)")
    parser.add_argument("--jobs", type=int, default=1, help="rendering processes")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "adapt_bn")
    parser.add_argument(
        "--json", type=Path, default=None, help="default benchmarks/results/adapt_bn/DATE.json"
    )
    args = parser.parse_args(argv)
    pairs = parse_pairs(args.pairs)
    data = args.out / "data"
    for joint in dict.fromkeys(joint for joint, _ in pairs):  # render_all crosses its lists
        protocols = [protocol for other, protocol in pairs if other == joint]
        render_all(data, [joint], protocols, args.test, args.data_seed, args.scale, args.jobs)
    started = time.perf_counter()
    scores = score(args.run, data, pairs, args.test)
    minutes = (time.perf_counter() - started) / 60
    table = bone_table(scores)
    seconds = scores.drop_duplicates(["joint", "protocol", "subject", "mode"])
    seconds = seconds.groupby("mode")["seconds"].median()
    text = markdown(table, args.test)
    text += (f"\n\nMedian seconds per scan: {seconds['plain']:.1f} as trained, "
             f"{seconds['adapted']:.1f} with `--adapt-bn`; scoring {minutes:.1f} min.")  # fmt: skip
    today = datetime.date.today().isoformat()
    path = args.json or ROOT / "benchmarks" / "results" / "adapt_bn" / f"{today}.json"
    atomic_write_json(path, {
        "command": " ".join(["python", *sys.argv]),
        "machine": cpu_description(),
        "run": args.run, "pairs": [list(p) for p in pairs], "subjects": args.test,
        "data_seed": args.data_seed, "scale": args.scale,
        "median_seconds": {mode: float(s) for mode, s in seconds.items()},
        "table": table.to_dict(orient="records"),
        "scores": scores.to_dict(orient="records"),
    })  # fmt: skip
    print(text)
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
