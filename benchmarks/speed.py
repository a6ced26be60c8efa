"""Speed against nnU-Net v2 on one machine: inference per 256x256x100 scan, peak memory, training.

    python benchmarks/speed.py --quick      # CPU: one timed call per configuration
    python benchmarks/speed.py              # three timed calls (best kept), 40 training steps
    python benchmarks/speed.py --no-nnunet  # jointseg only

Inference, one 256x256x100 scan (0.6 x 0.6 x 3 mm, a synthetic body with two
bones), every configuration in its own process:

- jointseg, warm: ``Predictor.predict`` after a warm-up call, in a child process, of the
  random-weight three-domain run that benchmarks/predict.py builds from configs/demo.yaml and
  configs/paper.yaml (timing needs no trained weights), with and without test-time flips;
- jointseg, cold: the command ``jointseg predict RUN scan.nii.gz --domain knee --no-meshes``
  (process start, model load, prediction, label map, measurements, preview) with a trained demo
  run (``--cold-run``, default benchmarks/quality.py's ``full`` run of the demo config);
- nnU-Net 2D, cold: ``nnUNetv2_predict -device cpu -npp 1 -nps 1``, with its default mirroring
  and with ``--disable_tta``, of a model planned with its defaults (``-c 2d``) on a generated
  dataset of two 256x256x100 scans at the same spacing (so the plan is for 256x256 in-plane)
  and trained with the short trainer for a token number of iterations (the weights do not
  change the cost).

Memory: each command runs under a small wrapper that reports
``getrusage(RUSAGE_CHILDREN).ru_maxrss``, the peak RSS of the largest single process
(nnU-Net's predictor starts worker processes); the process tree's summed RSS is also sampled
(psutil, every 50 ms). The warm jointseg rows report their process's own peak RSS
(getrusage(RUSAGE_SELF), the network built and the scan read in the same process).

Training: slices per second of jointseg ``full`` against a plain U-Net of the same backbone
(the ``shared`` scheme: one BatchNorm, one head, no regularizer), measured as
benchmarks/train.py does (its StepTimer and study; demo config), and nnU-Net's seconds per
training iteration (median over the token run's iterations after the first, at its planned
batch size and patch).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _child import run_json_child  # noqa: E402
from _nnunet import NnUNet, TreeMemory  # noqa: E402

SIZE = (256, 256, 100)  # x, y, z
SPACING = (0.6, 0.6, 3.0)

_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[1:])\n"
    "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print('MAXRSS_KB', usage.ru_maxrss, usage.ru_utime + usage.ru_stime, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def timed_command(args: list[str], log: Path, env: dict | None = None) -> dict:
    """Run a command under the ru_maxrss wrapper; wall seconds and peak memory (MB)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as handle:
        handle.write("$ " + " ".join(args) + "\n")
        handle.flush()
        process = subprocess.Popen(
            [sys.executable, "-c", _WRAPPER, *args],
            stdout=handle, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        with TreeMemory(process.pid) as memory:
            code = process.wait()
    seconds = time.perf_counter() - started
    text = log.read_text(errors="replace")
    if code != 0:
        raise RuntimeError(f"{' '.join(args)} failed (exit {code}):\n{text[-1500:]}")
    maxrss = [line.split()[1:] for line in text.splitlines() if line.startswith("MAXRSS_KB")]
    return {
        "seconds": seconds,
        "cpu_seconds": float(maxrss[-1][1]) if maxrss else float("nan"),
        "peak_single_mb": int(maxrss[-1][0]) / 1024 if maxrss else float("nan"),
        "peak_total_mb": memory.peak_total / 2**20,
    }


def scan_and_label(seed: int):
    """A 256x256x100 MR-like scan (a body with two bright bones, noise) and its label map."""
    import SimpleITK as sitk

    nx, ny, nz = SIZE
    rng = np.random.default_rng(seed)
    volume = np.empty((nz, ny, nx), np.float32)
    label = np.zeros((nz, ny, nx), np.uint8)
    y, x = np.mgrid[:ny, :nx].astype(np.float32)
    body = ((x - nx / 2) / (0.42 * nx)) ** 2 + ((y - ny / 2) / (0.4 * ny)) ** 2 <= 1
    for k in range(nz):
        t = (k - nz / 2) / (0.45 * nz)
        radius = 0.12 * max(0.0, 1 - t * t) ** 0.5
        plane = np.where(body, 400.0, 20.0)
        for value, (cx, cy) in enumerate(((0.4, 0.45), (0.62, 0.55)), start=1):
            bone = ((x / nx - cx) ** 2 + (y / ny - cy) ** 2) <= radius * radius
            plane[bone] = 900.0
            label[k][bone] = value
        volume[k] = plane + rng.normal(0, 25, plane.shape)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(SPACING)
    label_image = sitk.GetImageFromArray(label)
    label_image.CopyInformation(image)
    return image, label_image


# -- jointseg --------------------------------------------------------------------------------
def warm_child(spec: dict) -> dict:
    """In this process: a random-weight run of ``spec['config']`` (benchmarks/predict.py's
    build_run), ``Predictor.predict`` of the scan after a warm-up call; best of the repeats."""
    import resource

    import SimpleITK as sitk
    import torch
    from predict import build_run

    from jointseg.inference.predictor import Predictor

    with tempfile.TemporaryDirectory() as tmp:
        run = build_run(spec["config"], Path(tmp) / "run")
        predictor = Predictor.from_run(
            run, device="cpu", batch_size=spec["batch_size"], tta=spec["tta"]
        )
        scan = sitk.ReadImage(spec["scan"])
        predictor.predict(scan, domain="knee")  # warm-up: kernel selection at new shapes
        seconds, cpu = [], []
        for _ in range(spec["repeats"]):
            started, cpu_started = time.perf_counter(), time.process_time()
            prediction = predictor.predict(scan, domain="knee")
            seconds.append(time.perf_counter() - started)
            cpu.append(time.process_time() - cpu_started)
    return {
        **spec,
        "seconds": min(seconds),
        "cpu_seconds": min(cpu),
        "grid": list(prediction.details.get("grid", [])),
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
    }


def jointseg_warm(config: str, tta: bool, repeats: int, batch_size: int, scan: Path) -> dict:
    spec = {"config": config, "tta": tta, "repeats": repeats, "batch_size": batch_size,
            "scan": str(scan)}  # fmt: skip
    return run_json_child(__file__, spec, f"jointseg {config}", tail=2000)


def jointseg_cold(run: Path, scan: Path, work: Path) -> dict:
    """``jointseg predict`` of the scan as a fresh process: start-up, model load, prediction,
    label map, measurements and preview."""
    out = work / "pred_cold"
    shutil.rmtree(out, ignore_errors=True)
    jointseg = str(Path(sys.executable).parent / "jointseg")
    args = [jointseg, "predict", str(run), str(scan), "--out", str(out), "--domain", "knee",
            "--no-meshes"]  # fmt: skip
    return timed_command(args, work / "logs" / "jointseg_cold.log")


def training_speed(iterations: int) -> dict:
    """benchmarks/train.py's measurement for the plain U-Net (shared) and full, in a child."""
    code = f"""
import json, sys, tempfile
from pathlib import Path
sys.path.insert(0, {str(HERE)!r})
from train import make_study

from jointseg.training.timing import StepTimer
from jointseg.config import load_config
from jointseg.workflows.train import train_run
iterations, warmup = {iterations}, 3
base = load_config("demo", {{
    "training.epochs": 1, "training.iterations_per_epoch": iterations + warmup,
    "training.iterations_per_dataset": False,
    "training.validation_fraction": 0.0, "regularization.shape_prior.steps": 20}})
out = {{"batch": base.training.batch_size, "patch": base.preprocessing.patch_size,
        "encoder": base.model.encoder, "width": base.model.width}}
with tempfile.TemporaryDirectory() as tmp:
    data = Path(tmp) / "data"
    size = base.preprocessing.patch_size[0] + 32
    make_study(data, (24, size, size))
    for scheme in ("shared", "full"):
        timer = StepTimer(warmup)
        cfg = base.model_copy(update={{"scheme": scheme}})
        train_run(cfg, data, Path(tmp) / scheme, progress=False, callbacks=[timer])
        out[scheme] = sum(timer.steps) / len(timer.steps)
print("RESULT " + json.dumps(out))
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=ROOT,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"training speed failed:\n{result.stderr[-2000:]}")
    line = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


# -- nnU-Net ---------------------------------------------------------------------------------
def nnunet_dataset(raw: Path) -> Path:
    """Dataset900_Speed: two 256x256x100 scans with labels, nnU-Net's raw layout."""
    import SimpleITK as sitk

    folder = raw / "Dataset900_Speed"
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for index in range(2):
        image, label = scan_and_label(index)
        sitk.WriteImage(image, str(folder / "imagesTr" / f"speed_{index:03d}_0000.nii.gz"))
        sitk.WriteImage(label, str(folder / "labelsTr" / f"speed_{index:03d}.nii.gz"))
    manifest = {"channel_names": {"0": "MR"}, "labels": {"background": 0, "left": 1, "right": 2},
                "numTraining": 2, "file_ending": ".nii.gz"}  # fmt: skip
    (folder / "dataset.json").write_text(json.dumps(manifest, indent=1))
    return folder


def nnunet_speed(nn: NnUNet, scan: Path, token_iterations: int, work: Path) -> dict:
    logs = work / "logs"
    nnunet_dataset(nn.raw)
    dataset_id = 900
    print("[speed] nnU-Net: plan and preprocess (2d)", flush=True)
    plan = nn.plan_and_preprocess([dataset_id], logs / "nnunet_plan.log")[dataset_id]
    nn.write_splits(dataset_id, ["speed_000"], ["speed_001"])
    print(f"[speed] nnU-Net: training {token_iterations} iterations, plan {plan}", flush=True)
    record = nn.train(
        dataset_id,
        logs / "nnunet_train.log",
        {"iterations": token_iterations, "epochs": 1, "val_iterations": 1},
    )
    images = work / "nnunet_input"
    images.mkdir(exist_ok=True)
    target = images / "scan_0000.nii.gz"
    if not target.exists():
        target.symlink_to(scan)
    rows = {}
    for mirroring in (False, True):
        print(f"[speed] nnU-Net: predicting, mirroring {mirroring}", flush=True)
        out = work / f"nnunet_pred_{int(mirroring)}"
        shutil.rmtree(out, ignore_errors=True)
        args = [str(nn.venv / "bin" / "nnUNetv2_predict"), "-i", str(images), "-o", str(out),
                "-d", str(dataset_id), "-c", "2d", "-f", "0", "-tr", "nnUNetTrainerBudget",
                "-chk", "checkpoint_final.pth", "-device", "cpu",
                "-npp", "1", "-nps", "1"]  # fmt: skip
        if not mirroring:
            args.append("--disable_tta")
        rows[mirroring] = timed_command(
            args, logs / f"nnunet_predict_{int(mirroring)}.log", nn.env()
        )
    steps = record["step_seconds"][1:] or record["step_seconds"]
    return {"plan": plan, "train": record, "step_seconds": float(np.median(steps)),
            "predict": rows}  # fmt: skip


# -- main ------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one timed call per configuration")
    parser.add_argument("--no-nnunet", action="store_true", help="skip the nnU-Net rows")
    parser.add_argument("--configs", default="demo,paper")
    parser.add_argument("--batch-size", type=int, default=16, help="jointseg slices per forward")
    parser.add_argument("--token-iterations", type=int, default=3, help="nnU-Net training steps")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "speed")
    parser.add_argument(
        "--cold-run",
        type=Path,
        default=HERE / "out" / "quality" / "n5" / "runs" / "full",
        help="trained run for the cold `jointseg predict` row (a random network's noisy label "
        "map would inflate the measurement and preview outputs); default: quality.py's demo run",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(warm_child(json.loads(args.child))))
        return
    import SimpleITK as sitk

    repeats = 1 if args.quick else 3
    train_iterations = 12 if args.quick else 40
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    work = Path(tempfile.mkdtemp(prefix="speed_", dir=out))
    scan_path = work / "scan.nii.gz"
    sitk.WriteImage(scan_and_label(0)[0], str(scan_path))
    results: dict = {"size": list(SIZE), "spacing": list(SPACING), "jointseg": {}, "notes": []}

    nn, why = (None, "--no-nnunet given") if args.no_nnunet else NnUNet.find(work / "nnunet")
    if nn is not None:
        try:
            results["nnunet"] = nnunet_speed(nn, scan_path, args.token_iterations, work)
            results["nnunet_version"] = nn.version
        except RuntimeError as error:
            why = f"nnU-Net failed: {str(error)[:600]}"
            nn = None
    if nn is None:
        results["notes"].append(f"nnU-Net rows skipped: {why}")
        print(f"[speed] nnU-Net rows SKIPPED: {why}", flush=True)

    for config in configs:
        for tta in (False, True):
            print(f"[speed] jointseg {config}, TTA {tta} (warm)", flush=True)
            results["jointseg"][f"{config}_warm_tta{int(tta)}"] = jointseg_warm(
                config, tta, repeats, args.batch_size, scan_path
            )
    if args.cold_run and (args.cold_run / "run.json").is_file():
        print(f"[speed] jointseg predict {args.cold_run} (cold command)", flush=True)
        results["jointseg"]["cold"] = jointseg_cold(args.cold_run, scan_path, work)
        results["cold_run"] = str(args.cold_run)
    else:
        results["notes"].append(f"no trained run at {args.cold_run}: cold jointseg row skipped")
    print("[speed] training slices/s", flush=True)
    results["training"] = training_speed(train_iterations)
    results["load_average"] = os.getloadavg()
    (out / "speed.json").write_text(json.dumps(results, indent=1, default=str))
    text = report(results, configs)
    (out / "speed.md").write_text(text)
    print(text)
    shutil.rmtree(work, ignore_errors=True)


def report(r: dict, configs: list[str]) -> str:
    nn = r.get("nnunet")
    base = nn["predict"][False] if nn else None
    scan = "x".join(map(str, r["size"]))
    lines = [
        f"Inference, one {scan} scan ({' x '.join(map(str, r['spacing']))} mm), CPU. "
        "Ratios: nnU-Net without mirroring (cold command) over this row, wall / CPU.",
        "",
        "| model | how | TTA / mirroring | wall s | CPU s | peak MB (largest process) | "
        "peak MB (process tree) | nnU-Net / this (wall, CPU) |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def ratio(row: dict) -> str:
        if not base:
            return "–"
        wall = base["seconds"] / row["seconds"]
        return f"{wall:.1f}, {base['cpu_seconds'] / row['cpu_seconds']:.1f}"

    for config in configs:
        for tta in (0, 1):
            j = r["jointseg"][f"{config}_warm_tta{tta}"]
            lines.append(
                f"| jointseg {config}, random weights (grid {'x'.join(map(str, j['grid']))}) | "
                f"warm, in-process | {'flips' if tta else 'no'} | {j['seconds']:.1f} | "
                f"{j['cpu_seconds']:.1f} | {j['process_peak_rss_mb']:.0f} | – | {ratio(j)} |"
            )
    if "cold" in r["jointseg"]:
        c = r["jointseg"]["cold"]
        lines.append(
            f"| jointseg demo, trained (`{Path(r['cold_run']).name}`) | cold, `jointseg predict "
            f"--no-meshes` | no | {c['seconds']:.1f} | {c['cpu_seconds']:.1f} | "
            f"{c['peak_single_mb']:.0f} | {c['peak_total_mb']:.0f} | {ratio(c)} |"
        )
    if nn:
        plan = nn["plan"]
        for mirroring in (False, True):
            p = nn["predict"][mirroring]
            lines.append(
                f"| nnU-Net 2d, token-trained (patch {'x'.join(map(str, plan['patch_size']))}, "
                f"{plan['n_stages']} stages) | cold, `nnUNetv2_predict` | "
                f"{'mirroring' if mirroring else 'no (--disable_tta)'} | {p['seconds']:.1f} | "
                f"{p['cpu_seconds']:.1f} | {p['peak_single_mb']:.0f} | {p['peak_total_mb']:.0f} "
                f"| {ratio(p)} |"
            )
    t = r["training"]
    lines += [
        "",
        f"Training, {t['encoder']} width {t['width']}, {t['patch'][0]}x{t['patch'][1]}, "
        f"batch {t['batch']} (demo config)",
        "",
        "| model | s/step | slices/s | relative to the plain U-Net |",
        "|---|---|---|---|",
    ]
    for name, key in (("plain U-Net (shared)", "shared"), ("jointseg full", "full")):
        lines.append(
            f"| {name} | {t[key]:.3f} | {t['batch'] / t[key]:.1f} | {t['shared'] / t[key]:.2f} |"
        )
    if nn:
        plan, step = nn["plan"], nn["step_seconds"]
        lines.append(
            f"| nnU-Net 2d, patch {'x'.join(map(str, plan['patch_size']))}, batch "
            f"{plan['batch_size']} | {step:.2f} | {plan['batch_size'] / step:.2f} | – |"
        )
    lines += ["", f"load average at the end: {', '.join(f'{x:.2f}' for x in r['load_average'])}"]
    lines += [f"- {n}" for n in r["notes"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
