"""Prediction speed and memory: seconds per scan and peak RSS, with and without TTA.

    python benchmarks/predict.py                # demo and paper models, a 256x256x100 scan
    python benchmarks/predict.py --quick        # a 256x256x40 scan, one repetition
    python benchmarks/predict.py --large        # also: the demo model on a 512x512x300 scan
    python benchmarks/predict.py --device cuda  # on a GPU
    python benchmarks/predict.py --configs paper --tta on --slices 20 --threads 1
                                                # one configuration, a shorter scan, one thread
    python benchmarks/predict.py --backends onnxruntime   # ONNX Runtime only (default: both)

Each configuration runs in its own process (so peak memory is its own): a temporary run folder
holds a randomly initialised three-domain network (timing needs no trained weights) built from
configs/demo.yaml or configs/paper.yaml (model and preprocessing sections; fallbacks: ResNet-18
width 0.25 at 128x128, ResNet-34 width 1.0 at 256x256), with recognition references measured on
two small synthetic scans per domain, so that recognition takes the path of a trained run. The
scan is synthetic (a body with two bright ellipsoids, 0.6 x 0.6 x 3 mm). Timed:
``Predictor.predict`` (label map on the scan's grid) after a warm-up call on the same scan (the
first call at new tensor shapes pays for kernel selection), best of the repetitions; domain
recognition on its own; and ``write_case`` (label map, tables, meshes, measurements, preview) of
the scan's true label map. Memory: peak RSS of the process (getrusage) and the RSS high-water
mark during prediction above the RSS before it (psutil, sampled every 5 ms). Each configuration
runs with each backend: PyTorch, and ONNX Runtime on the run's graphs exported by
``jointseg export`` (export not timed; domain recognition stays on PyTorch, and the process
holds both the PyTorch model and the ONNX Runtime sessions).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import SimpleITK as sitk
import yaml
from _child import run_json_child

DOMAINS = {
    "ankle": {"calcaneus": 1, "talus": 2, "tibia": 3},
    "knee": {"femur": 1, "fibula": 2, "patella": 3, "tibia": 4},
    "shoulder": {"humerus": 1, "scapula": 2},
}
FALLBACK = {
    "demo": ({"encoder": "resnet18", "width": 0.25}, {"patch_size": [128, 128]}),
    "paper": ({"encoder": "resnet34", "width": 1.0}, {"patch_size": [256, 256]}),
}


def build_run(name: str, folder: Path, size: tuple[int, int, int] | None = None) -> Path:
    """A run folder with a random-weight network of configuration ``name``; with ``size``, its
    recognition references measured on scans of that size."""
    import torch

    from jointseg.config import config_from_dict, save_config, shipped_config_text
    from jointseg.models import build_model, save_model
    from jointseg.runs import DomainEntry, ModelEntry, RunInfo, save_run_info

    data = yaml.safe_load(shipped_config_text(name))
    model, preprocessing = FALLBACK[name]
    cfg = config_from_dict(
        {
            "name": f"bench-{name}",
            "datasets": [{"name": d, "folder": f"Dataset00{i}_{d}"} for i, d in enumerate(DOMAINS)],
            "preprocessing": {**preprocessing, **data.get("preprocessing", {}), "jobs": 1},
            "augmentation": data.get("augmentation", {}),
            "model": {**model, **data.get("model", {}), "encoder_weights": "none"},
        }
    )
    torch.manual_seed(0)
    heads = [len(s) + 1 for s in DOMAINS.values()]
    net = build_model(cfg.model, heads, domain_specific_bn=True, pretrained=False)
    save_config(cfg, folder / "config.yaml")
    save_model(net.eval(), folder / "models" / "main")
    info = RunInfo(
        scheme="full",
        domains=[
            DomainEntry(name=d, folder=f"Dataset00{i}_{d}", structures=s)
            for i, (d, s) in enumerate(DOMAINS.items())
        ],
        models=[ModelEntry(name="main", path="models/main", domains=list(DOMAINS))],
    )
    save_run_info(folder, info)
    if size is not None:
        fit_references(folder, size)
    return folder


def fit_references(run: Path, size: tuple[int, int, int]) -> None:
    """Recognition references from two synthetic scans of ``size`` per domain (as training
    does): the knee's look like the timed scan, the other domains' are blurred, so that
    recognition runs as on a trained run (the knee's head only; the others stop after the early
    layers)."""
    from jointseg.inference.predictor import Predictor
    from jointseg.recognition.fitting import fit_recognition

    predictor = Predictor.from_run(run)

    def scan(domain: str, seed: int) -> np.ndarray:
        image = make_scan(size, seed=seed)[0]
        if domain != "knee":
            image = sitk.SmoothingRecursiveGaussian(image, 2.0)
        return predictor.recognition_volume(image)

    volumes = {name: ([scan(name, 1), scan(name, 2)], []) for name in DOMAINS}
    fit_recognition(run, {c.name: c.path for c in predictor.candidates()}, volumes)


def make_scan(
    size: tuple[int, int, int], spacing=(0.6, 0.6, 3.0), seed: int = 0
) -> tuple[sitk.Image, sitk.Image]:
    """A synthetic MR-like scan of ``size`` (x, y, z): a body with two bright ellipsoids, and
    the ellipsoids' label map (knee values 1 and 4)."""
    nx, ny, nz = size
    rng = np.random.default_rng(seed)
    volume = np.empty((nz, ny, nx), np.float32)
    labels = np.zeros((nz, ny, nx), np.uint8)
    y, x = np.mgrid[:ny, :nx].astype(np.float32)
    body = ((x - nx / 2) / (0.42 * nx)) ** 2 + ((y - ny / 2) / (0.4 * ny)) ** 2 <= 1
    for k in range(nz):  # slice by slice: no full-size temporaries beyond the volume itself
        t = (k - nz / 2) / (0.45 * nz)
        for value, (cx, cy) in ((1, (0.4, 0.45)), (4, (0.62, 0.55))):
            r = 0.12 * max(0.0, 1 - t * t) ** 0.5
            if r > 0:
                labels[k][((x / nx - cx) ** 2 + (y / ny - cy) ** 2) <= r * r] = value
        plane = np.where(labels[k] > 0, 900.0, np.where(body, 400.0, 20.0))
        volume[k] = plane + rng.normal(0, 25, plane.shape)
    image, label_map = sitk.GetImageFromArray(volume), sitk.GetImageFromArray(labels)
    for item in (image, label_map):
        item.SetSpacing(spacing)
    return image, label_map


class PeakRSS:
    """RSS high-water mark of this process while the block runs (sampled every 5 ms)."""

    def __enter__(self) -> PeakRSS:
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def child(spec: dict) -> dict:
    """Measure one configuration in this process."""
    import torch

    from jointseg.inference.backends import load_backend
    from jointseg.inference.export import export_run
    from jointseg.inference.predictor import Predictor
    from jointseg.inference.writer import write_case

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    with tempfile.TemporaryDirectory() as tmp:
        run = build_run(spec["config"], Path(tmp) / "run", tuple(spec["size"]))
        predictor = Predictor.from_run(
            run, device=spec["device"], batch_size=spec["batch_size"], tta=spec["tta"]
        )
        if spec["backend"] != "torch":
            export_run(run, Path(tmp) / "onnx")
            predictor.backend = load_backend(
                spec["backend"], predictor, Path(tmp) / "onnx", spec["threads"], spec["device"]
            )
        scan, truth = make_scan(tuple(spec["size"]))
        if spec["warmup"]:  # the first call at new shapes pays for kernel selection
            predictor.predict(scan, domain="knee")
            predictor.recognize(scan, refuse=False)
        seconds, cpu_seconds = [], []
        for _ in range(spec["repeats"]):
            with PeakRSS() as memory:
                started, cpu_started = time.perf_counter(), time.process_time()
                prediction = predictor.predict(scan, domain="knee")
                seconds.append(time.perf_counter() - started)
                cpu_seconds.append(time.process_time() - cpu_started)
        started = time.perf_counter()
        predictor.recognize(scan, refuse=False)
        recognition = time.perf_counter() - started
        # Outputs (meshes, measurements, preview, files) of a realistic label map: the random
        # network's own labels would be noise.
        labelled = replace(prediction, label_map=truth)
        with PeakRSS() as output_memory:
            started = time.perf_counter()
            write_case(scan, labelled, Path(tmp) / "out", "case", ".nii.gz", spec["meshes"])
            outputs = time.perf_counter() - started
    return {
        **spec,
        "seconds": min(seconds),
        "cpu_seconds": min(cpu_seconds),
        "recognition_seconds": recognition,
        "grid": prediction.details["grid"],
        "slices": prediction.details["slices"],
        "smooth_restore": prediction.details["smooth_restore"],
        "outputs_seconds": outputs,
        "predict_peak_above_start_mb": (memory.peak - memory.start) / 2**20,
        "outputs_peak_above_start_mb": (output_memory.peak - output_memory.start) / 2**20,
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
    }


def run_child(spec: dict) -> dict:
    return run_json_child(__file__, spec, f"configuration {spec}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 40-slice scan instead of 100")
    parser.add_argument("--slices", type=int, default=None, help="the scan's slice count")
    parser.add_argument("--no-warmup", action="store_true", help="time the first call too")
    parser.add_argument("--large", action="store_true", help="also a 512x512x300 scan (demo)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls; the best is kept")
    parser.add_argument("--configs", default="demo,paper")
    parser.add_argument("--tta", choices=("both", "off", "on"), default="both")
    parser.add_argument("--backends", default="torch,onnxruntime", help="torch, onnxruntime")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    size = [256, 256, args.slices or (40 if args.quick else 100)]
    specs = [
        {"config": c, "tta": tta, "size": size, "device": args.device,
         "batch_size": args.batch_size, "threads": args.threads,
         "repeats": args.repeats, "warmup": not args.no_warmup, "meshes": True,
         "backend": backend}
        for c in args.configs.split(",")
        for tta in {"both": (False, True), "off": (False,), "on": (True,)}[args.tta]
        for backend in args.backends.split(",")
    ]  # fmt: skip
    if args.large:
        large = {**specs[0], "config": "demo", "tta": False, "size": [512, 512, 300]}
        specs.append({**large, "repeats": 1, "warmup": False})
    results = []
    header = (
        f"{'config':7} {'backend':>11} {'scan':>12} {'grid':>9} {'TTA':>4} {'s/scan':>8} "
        f"{'cpu s':>7} {'x':>5} "
        f"{'recog s':>8} {'out s':>6} {'peak MB':>8} {'+MB':>6} {'out +MB':>8}"
    )
    print(header)
    print("-" * len(header))
    for spec in specs:
        r = run_child(spec)
        results.append(r)
        base = next(
            (b for b in results if b["config"] == r["config"] and not b["tta"]
             and b["size"] == r["size"] and b["backend"] == r["backend"]), r,
        )  # fmt: skip
        ratio = (
            f"{r['cpu_seconds'] / base['cpu_seconds']:5.2f}"
            if base is not r or not r["tta"]
            else ""
        )
        print(
            f"{r['config']:7} {r['backend']:>11} {'x'.join(map(str, r['size'])):>12} "
            f"{'x'.join(map(str, r['grid'])):>9} {'yes' if r['tta'] else 'no':>4} "
            f"{r['seconds']:8.2f} {r['cpu_seconds']:7.2f} {ratio:>5} "
            f"{r['recognition_seconds']:8.2f} "
            f"{r['outputs_seconds']:6.2f} {r['process_peak_rss_mb']:8.0f} "
            f"{r['predict_peak_above_start_mb']:6.0f} {r['outputs_peak_above_start_mb']:8.0f}",
            flush=True,
        )
    print(
        f"\n{results[0]['device']}, torch threads {results[0]['torch_threads']}, batch "
        f"{args.batch_size}; s/scan = wall-clock seconds of predict(), cpu s = its process CPU "
        "time (robust to other load on the machine); x = cpu s relative to the same model "
        "and backend without TTA; peak MB = the "
        "process's peak RSS; +MB = RSS high-water mark during predict() above the RSS before it; "
        "out s / out +MB = the same for writing a case's outputs (label map, tables, meshes, "
        "measurements, preview) of the scan's true label map."
    )
    if args.json:
        from jointseg.utils.atomic import atomic_write_json

        atomic_write_json(args.json, results)


if __name__ == "__main__":
    main()
