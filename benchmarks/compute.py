"""Fast on a CPU: training steps and a cold prediction, before and after channels-last and
bfloat16, on this machine in one run.

    python benchmarks/compute.py                 # every scheme, 10 timed steps per variant
    python benchmarks/compute.py --quick         # 4 timed steps, 1 prediction repeat
    python benchmarks/compute.py --json benchmarks/results/compute/NAME.json

Training: seconds per step of the real training loop (``train_run`` with the demo config on a
small generated study, benchmarks/train.py's StepTimer and study) for each scheme under four
variants: float32 with PyTorch's default memory format (the setting before ``precision: auto``
and ``channels_last``), channels-last, bfloat16 autocast, and both. The variants of a scheme run
round-robin in ``--rounds`` rounds, each variant in its own fresh process, so that a change in
the machine's load falls on all of them alike; the median step of each is reported with its
speed-up over float32. Where the CPU computes bfloat16 only by emulation (no AVX512-BF16 or
AMX), the bfloat16 variants run for the first scheme alone, for one round of 3 timed steps (at
8-20x slower they would take most of the run): they show why ``precision: auto`` chooses
float32 there.

Prediction: the command ``jointseg predict pretrained SCAN --domain knee`` on a 256x256x100
knee scan (the shipped model's reference scan resampled), each in a new process (imports,
model load, reading, prediction, postprocessing, writing), with and without meshes, best of
``--repeats``: the model as it shipped (float32, default memory format: a copy of the run
folder with ``training.channels_last: false``) against ``--precision auto`` with channels-last.
The import time of the prediction module and the heavy libraries it loads are measured in a
fresh process too.

``--compile``: torch.compile (inductor) against eager PyTorch on the demo network, in a fresh
process each: the seconds the first call takes (compilation), then seconds per call, for a
training step (forward, Dice+CE, backward, AdamW; batch 12 of 128x128) and an inference batch
(16 slices of 224x224, no gradient), and the calls after which compiling has paid for itself.

Every figure is printed with the CPU's name, its kernels (``ATEN_CPU_CAPABILITY``) and whether
it computes bfloat16 natively.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from _child import run_json_child  # noqa: E402

from jointseg.utils.environment import cpu_description  # noqa: E402

SCHEMES = ("shared", "mtmd", "mtmd+con", "full")
# name -> (training.precision, training.channels_last); the first is the baseline
VARIANTS = {
    "float32": ("32", False),
    "channels-last": ("32", True),
    "bf16": ("bf16-mixed", False),
    "bf16+channels-last": ("bf16-mixed", True),
}
EMULATED_STEPS = 3  # timed steps of an emulated bfloat16 variant (single-threaded, slow)
SIZE = (256, 256, 100)
HEAVY = ("monai", "lightning", "pandas", "matplotlib", "trimesh", "skimage", "tensorboard")


# --------------------------------------------------------------------------- training
def train_child(spec: dict) -> dict:
    """Train one scheme under one variant for a few steps; the step times after warm-up."""
    from jointseg.config import ExperimentConfig
    from jointseg.training.timing import StepTimer
    from jointseg.workflows.train import train_run

    cfg = ExperimentConfig.model_validate(spec["config"])
    timer = StepTimer(spec["warmup"])
    train_run(cfg, Path(spec["data"]), Path(spec["out"]), progress=False, callbacks=[timer])
    return {"steps": timer.steps}


def training_speed(
    schemes: list[str], steps: int, rounds: int, warmup: int, native_bf16: bool
) -> dict:
    """Median s/step of each scheme and variant, variants interleaved over ``rounds``."""
    from train import make_study

    from jointseg.config import load_config

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        base = load_config(
            "demo",
            {
                "training.epochs": 1,
                "training.iterations_per_epoch": steps + warmup,
                "training.validation_fraction": 0.0,
                "training.iterations_per_dataset": False,
                "regularization.shape_prior.steps": 20,
            },
        )
        size = base.preprocessing.patch_size[0] + 52  # a field of view wider than the patch
        make_study(data, (24, size, size))
        for index, scheme in enumerate(schemes):
            variants = [
                v for v in VARIANTS if native_bf16 or index == 0 or not v.startswith("bf16")
            ]
            times: dict[str, list[float]] = {v: [] for v in variants}
            for round_ in range(rounds):
                for variant in variants:
                    precision, channels_last = VARIANTS[variant]
                    emulated = precision.startswith("bf16") and not native_bf16
                    if emulated and round_ > 0:
                        continue  # one short round shows the emulation's cost
                    cfg = base.model_copy(deep=True, update={"scheme": scheme})
                    cfg.training.precision = precision
                    cfg.training.channels_last = channels_last
                    if emulated:
                        cfg.training.iterations_per_epoch = EMULATED_STEPS + warmup
                    out = Path(tmp) / f"{scheme}-{variant}-{round_}"
                    spec = {"config": cfg.model_dump(mode="json"), "warmup": warmup,
                            "data": str(data), "out": str(out)}  # fmt: skip
                    child = run_json_child(__file__, spec, f"{scheme} under {variant}")
                    times[variant] += child["steps"]
                    shutil.rmtree(out, ignore_errors=True)
            results[scheme] = {v: statistics.median(t) for v, t in times.items()}
            print_training_row(scheme, results[scheme])
    return results


def print_training_row(scheme: str, row: dict[str, float]) -> None:
    base = row["float32"]
    cells = "  ".join(
        f"{v} {row[v]:.3f} s ({base / row[v]:.2f}x)" if v in row else f"{v} -" for v in VARIANTS
    )
    print(f"{scheme:<9} {cells}", flush=True)


# ------------------------------------------------------------------------- prediction
def make_knee_scan(path: Path) -> Path:
    """The shipped model's reference knee scan resampled to 256x256x100 (same field of view)."""
    import SimpleITK as sitk

    from jointseg.inference.packaged import resolve_run

    image = sitk.ReadImage(str(resolve_run("pretrained") / "reference_scan.nii.gz"))
    spacing = [
        sp * n / m for sp, n, m in zip(image.GetSpacing(), image.GetSize(), SIZE, strict=True)
    ]
    resampled = sitk.Resample(
        image, list(SIZE), sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
        image.GetDirection(), 0.0, sitk.sitkFloat32,
    )  # fmt: skip
    sitk.WriteImage(resampled, str(path))
    return path


def as_shipped(folder: Path) -> Path:
    """A copy of the shipped model's run folder that predicts in PyTorch's default format."""
    import yaml

    from jointseg.inference.packaged import resolve_run

    shutil.copytree(resolve_run("pretrained"), folder)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config.setdefault("training", {})["channels_last"] = False
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


def timed_command(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def import_cost() -> dict:
    """Seconds to import the prediction module in a fresh process, and the heavy libraries
    it loads."""
    code = (
        "import json, sys, time; t = time.perf_counter(); import jointseg.inference.predict; "
        "s = time.perf_counter() - t; "
        f"print(json.dumps({{'seconds': s, 'loaded': [m for m in {list(HEAVY)!r} "
        "if m in sys.modules]}))"
    )
    runs = [subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                           text=True) for _ in range(3)]  # fmt: skip
    parsed = [json.loads(r.stdout.strip().splitlines()[-1]) for r in runs]
    return {"seconds": min(p["seconds"] for p in parsed), "loaded": parsed[0]["loaded"]}


def prediction_speed(repeats: int) -> dict:
    """Cold ``jointseg predict`` seconds, shipped format against the automatic choice."""
    cli = str(Path(sys.executable).with_name("jointseg"))
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        scan = make_knee_scan(Path(tmp) / "knee.nii.gz")
        before = as_shipped(Path(tmp) / "shipped")
        settings = {
            "float32": (str(before), "32"),
            "auto + channels-last": ("pretrained", "auto"),
        }
        for meshes in (False, True):
            label = "with meshes" if meshes else "no meshes"
            times: dict[str, list[float]] = {name: [] for name in settings}
            for repeat in range(repeats):
                for name, (run, precision) in settings.items():
                    out = Path(tmp) / f"out-{repeat}"
                    command = [cli, "predict", run, str(scan), "--out", str(out), "--domain",
                               "knee", "--precision", precision, "--overwrite"]  # fmt: skip
                    if not meshes:
                        command.append("--no-meshes")
                    times[name].append(timed_command(command))
                    shutil.rmtree(out, ignore_errors=True)
            results[label] = {name: min(t) for name, t in times.items()}
            row = results[label]
            base = row["float32"]
            print(
                f"predict, {label:<11} "
                + "  ".join(f"{n} {s:.2f} s ({base / s:.2f}x)" for n, s in row.items()),
                flush=True,
            )
    return results


def compile_child(spec: dict) -> dict:
    """Seconds of the first call and median seconds per call, eager or compiled."""
    import torch

    from jointseg.config import load_config
    from jointseg.models import build_model

    torch.manual_seed(0)
    cfg = load_config("demo")
    net = build_model(cfg.model, [4, 5, 3], True, pretrained=False)
    net.to(memory_format=torch.channels_last)
    training = spec["mode"] == "training"
    batch, side = (12, 128) if training else (16, 224)
    x = torch.randn(batch, cfg.model.context_slices, side, side).contiguous(
        memory_format=torch.channels_last
    )
    domains = torch.arange(batch) % 3 if training else torch.zeros(batch, dtype=torch.long)
    target = torch.randint(0, 3, (batch, side, side))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net.train(training)

    def forward(inputs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        out = net(inputs, ids)
        return torch.cat([out.logits[d][:, :3] for d in sorted(out.logits)])

    call = torch.compile(forward) if spec["compiled"] else forward

    def once() -> None:
        if training:
            logits = call(x, domains)
            loss = torch.nn.functional.cross_entropy(logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        else:
            with torch.no_grad():
                call(x, domains)

    started = time.perf_counter()
    once()
    first = time.perf_counter() - started
    times = []
    for _ in range(spec["calls"]):
        started = time.perf_counter()
        once()
        times.append(time.perf_counter() - started)
    return {"first": first, "per_call": statistics.median(times)}


def compile_cost(calls: int) -> dict:
    """Eager against torch.compile for a training step and an inference batch."""
    results = {}
    for mode in ("training", "inference"):
        row = {}
        for compiled in (False, True):
            spec = {"mode": mode, "compiled": compiled, "calls": calls, "child": "compile"}
            name = "compiled" if compiled else "eager"
            row[name] = run_json_child(__file__, spec, f"{mode}, {name}")
        eager, compiled_ = row["eager"], row["compiled"]
        gain = eager["per_call"] - compiled_["per_call"]
        extra = compiled_["first"] - eager["first"]
        row["break_even_calls"] = extra / gain if gain > 0 else None
        results[mode] = row
        print(
            f"{mode:<10} eager {eager['per_call']:.3f} s/call; compiled "
            f"{compiled_['per_call']:.3f} s/call ({eager['per_call'] / compiled_['per_call']:.2f}x)"
            f", first call {compiled_['first']:.0f} s against {eager['first']:.1f} s; "
            + (
                f"pays after {row['break_even_calls']:.0f} calls"
                if row["break_even_calls"] is not None
                else "never pays"
            ),
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 timed steps, 1 repeat")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per variant")
    parser.add_argument("--repeats", type=int, default=None, help="cold predictions per setting")
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument("--no-training", action="store_true")
    parser.add_argument("--no-prediction", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also torch.compile vs eager")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        child = compile_child if spec.get("child") == "compile" else train_child
        print(json.dumps(child(spec)))
        return
    machine = cpu_description()
    print(
        f"{machine['cpu']}: {machine['kernels']} kernels, AVX512-BF16 {machine['avx512_bf16']}, "
        f"AMX {machine['amx']}, native bfloat16 {machine['native_bf16']}, "
        f"{machine['threads']} threads, torch {machine['torch']}",
        flush=True,
    )
    steps = args.steps or (4 if args.quick else 10)
    repeats = args.repeats or (1 if args.quick else 3)
    results: dict = {"machine": machine, "command": " ".join(sys.argv)}
    if not args.no_training:
        schemes = [s for s in args.schemes.split(",") if s]
        print(f"\ntraining s/step (demo config, batch 12 of 128x128, median of {steps} x "
              f"{args.rounds} steps; speed-up over float32)")  # fmt: skip
        results["training"] = training_speed(
            schemes, steps, args.rounds, warmup=2, native_bf16=machine["native_bf16"]
        )
    if not args.no_prediction:
        results["imports"] = import_cost()
        print(
            f"\nimport jointseg.inference.predict: {results['imports']['seconds']:.2f} s; "
            f"heavy libraries loaded: {', '.join(results['imports']['loaded']) or 'none'}"
        )
        print(f"\ncold `jointseg predict pretrained` of a 256x256x100 knee, best of {repeats}")
        results["prediction"] = prediction_speed(repeats)
    if args.compile:
        print("\ntorch.compile (inductor) against eager, demo network, channels-last, float32")
        results["compile"] = compile_cost(calls=3 if args.quick else 8)
    if args.json:
        from jointseg.utils.atomic import atomic_write_json

        atomic_write_json(args.json, results)


if __name__ == "__main__":
    main()
