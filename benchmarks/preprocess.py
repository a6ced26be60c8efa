"""Preprocessing speed: volumes per second into the slice cache, cold and warm, 1 and 2 jobs.

    python benchmarks/preprocess.py            # 8 volumes of 256x256x64
    python benchmarks/preprocess.py --quick    # 4 volumes
    python benchmarks/preprocess.py --memory   # also: peak memory of one 512x512x300 scan

Volumes are synthetic (a body with two bones, noise), written in the nnU-Net layout with
``dataset.json``; every run starts from a fresh cache folder (cold), then repeats (warm).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from jointseg.config import PreprocessingConfig
from jointseg.data.cache import build_slice_cache
from jointseg.data.io import write_image
from jointseg.data.labels import DomainLabels
from jointseg.data.manifest import DatasetManifest, list_cases, write_manifest
from jointseg.data.preprocess import preprocess_case

SHAPE = (64, 256, 256)  # z, y, x
SPACING = (0.4, 0.4, 2.0)  # x, y, z in mm
STRUCTURES = {"femur": 1, "tibia": 2}


def synthetic_case(seed: int, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """An int16 scan (body + bones + noise) and its uint8 label map."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    cy, cx = (np.asarray(shape[1:]) / 2 + rng.uniform(-20, 20, 2)).tolist()
    in_plane = ((y - cy) / (0.4 * shape[1])) ** 2 + ((x - cx) / (0.3 * shape[2])) ** 2
    body = in_plane + 0 * z < 1
    label = np.zeros(shape, dtype=np.uint8)
    for value, (dy, ry) in zip(STRUCTURES.values(), ((-0.12, 0.1), (0.14, 0.09)), strict=True):
        bone = ((y - cy - dy * shape[1]) / (ry * shape[1])) ** 2 + (
            (x - cx) / (0.08 * shape[2])
        ) ** 2
        label[(bone + ((z - shape[0] / 2) / (0.45 * shape[0])) ** 2 < 1) & body] = value
    image = 300.0 * body + 250.0 * (label > 0) + rng.normal(0, 25, shape)
    return image.astype(np.int16), label


def write_synthetic_dataset(folder: Path, count: int) -> Path:
    for index in range(count):
        image, label = synthetic_case(index)
        for array, path in (
            (image, folder / "imagesTr" / f"case_{index:03d}_0000.nii.gz"),
            (label, folder / "labelsTr" / f"case_{index:03d}.nii.gz"),
        ):
            itk = sitk.GetImageFromArray(array)
            itk.SetSpacing(SPACING)
            write_image(itk, path)
    manifest = DatasetManifest(
        name=folder.name,
        channel_names={"0": "MR"},
        labels={"background": 0, **STRUCTURES},
        numTraining=count,
        file_ending=".nii.gz",
    )
    write_manifest(folder, manifest)
    return folder


def time_builds(folder: Path, cfg: PreprocessingConfig, jobs: int, work: Path) -> None:
    cases = list_cases(folder)
    labels = DomainLabels("knee", STRUCTURES)
    root = work / f"cache_jobs{jobs}"
    shutil.rmtree(root, ignore_errors=True)
    for state in ("cold", "warm"):
        began = time.perf_counter()
        cache = build_slice_cache(folder, cases, labels, cfg, root, jobs=jobs, progress=False)
        seconds = time.perf_counter() - began
        print(
            f"jobs={jobs} {state}: {seconds:7.3f} s  {len(cases) / seconds:9.2f} volumes/s  "
            f"({len(cache)} slices)",
            flush=True,
        )


def peak_memory(cfg: PreprocessingConfig) -> None:
    """Peak extra resident memory of preprocess_case on a 512x512x300 int16 scan and label."""
    import psutil

    shape = (300, 512, 512)
    image = sitk.GaussianSource(sitk.sitkInt16, shape[::-1], (120, 120, 80), (256, 256, 150), 1000)
    image.SetSpacing((0.3, 0.3, 1.0))
    label = sitk.BinaryThreshold(image, 600, 2000, 1, 0)
    volume_mb = np.prod(shape) * 2 / 2**20
    process = psutil.Process()
    before = process.memory_info().rss
    peak, running = [before], [True]

    def poll() -> None:
        while running[0]:
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    began = time.perf_counter()
    result = preprocess_case(image, label, cfg)
    seconds = time.perf_counter() - began
    running[0] = False
    watcher.join()
    extra = (peak[0] - before) / 2**20
    print(
        f"512x512x300 int16 scan ({volume_mb:.0f} MB) + uint8 label: {seconds:.2f} s, "
        f"peak extra memory {extra:.0f} MB = {extra / volume_mb:.2f} scan copies "
        f"(output {result.image.nbytes / 2**20:.0f} MB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=8, help="Number of volumes.")
    parser.add_argument("--quick", action="store_true", help="4 volumes.")
    parser.add_argument("--memory", action="store_true", help="Measure a 512x512x300 scan.")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    count = 4 if args.quick else args.volumes
    cfg = PreprocessingConfig(target_spacing=0.8, patch_size=(128, 128))
    with tempfile.TemporaryDirectory(prefix="jointseg-bench-") as tmp:
        work = Path(tmp)
        began = time.perf_counter()
        folder = write_synthetic_dataset(work / "Dataset001_Bench", count)
        print(
            f"{count} volumes of {SHAPE[2]}x{SHAPE[1]}x{SHAPE[0]} int16 .nii.gz "
            f"(written in {time.perf_counter() - began:.1f} s); target spacing "
            f"{cfg.target_spacing} mm, patch {cfg.patch_size[0]}x{cfg.patch_size[1]}",
            flush=True,
        )
        for jobs in args.jobs:
            time_builds(folder, cfg, jobs, work)
    if args.memory:
        peak_memory(cfg)


if __name__ == "__main__":
    main()
