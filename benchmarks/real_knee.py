"""A real knee MR through a trained model: femur, tibia and patella on sagittal slices.

    python benchmarks/real_knee.py                          # the packaged model (`pretrained`)
    python benchmarks/real_knee.py --run runs/full --figure docs/images/real_knee_overlay.png

The scan: the de-identified sagittal knee of the ``mskt`` package's source distribution (PyPI,
MIT; ``data/MESE_T2_dicom_data_anon/``: GE 3 T multi-echo spin echo for T2 mapping, 24 slices x
8 echoes, 256 x 256 at 0.625 mm, 3 mm slices 4 mm apart). It is fetched once with
``pip download mskt --no-deps --no-binary mskt -d CACHE`` (only mskt from source: its build
requirements come as wheels), the DICOM folder is taken out of the archive, its first echo
(lowest Echo Numbers / Echo Time: the most anatomy, the least T2 decay) is read
(``read_image(folder, echo=1)``) and written as one NIfTI volume. Then ``jointseg predict RUN
VOLUME --domain knee`` and ``--domain auto`` (a refusal is reported, not fatal), and the figure:
the predicted femur, tibia and patella over several sagittal slices. ``OUT/real_knee.json``
records the scan's geometry, the predicted volumes and the recognition.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACKAGE, SERIES = "mskt", "data/MESE_T2_dicom_data_anon/"
BONES = ("femur", "tibia", "patella")
SLICES = 6  # sagittal slices in the figure


def fetch_sdist(cache: Path) -> Path:
    """The mskt source archive in ``cache`` (downloaded once)."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(f"{PACKAGE}-*.tar.gz"))
    if not found:
        command = [sys.executable, "-m", "pip", "download", PACKAGE, "--no-deps",
                   "--no-binary", PACKAGE, "-d", str(cache)]  # fmt: skip
        print("[real_knee] " + " ".join(command[2:]))
        subprocess.run(command, check=True)
        found = sorted(cache.glob(f"{PACKAGE}-*.tar.gz"))
    if not found:
        raise SystemExit(f"pip download left no {PACKAGE} archive in {cache}")
    return found[-1]


def extract_series(archive: Path, target: Path) -> Path:
    """The archive's multi-echo DICOM folder, extracted into ``target`` (once)."""
    if target.is_dir() and any(target.iterdir()):
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = member.name.split("/", 1)[-1]  # without the top folder mskt-<version>/
            if member.isfile() and name.startswith(SERIES):
                member.name = Path(name).name
                tar.extract(member, target, filter="data")
    return target


def first_echo_volume(series: Path, volume: Path) -> dict:
    """Write the series' first echo as ``volume``; its geometry."""
    import pydicom

    from jointseg.data.io import dicom_echoes, dicom_series_files, read_image, write_image
    from jointseg.inference.preview import view_names

    image = read_image(series, echo=1)
    write_image(image, volume)
    files = dicom_series_files(series, echo=1)
    echoes = dicom_echoes(sorted(str(p) for p in series.iterdir()))
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    return {
        "source": f"{PACKAGE} sdist, {SERIES}",
        "echoes": len(echoes),
        "echo_times_ms": [key[1] for key in echoes],
        "chosen_echo": 1,
        "size_xyz": list(image.GetSize()),
        "spacing_xyz_mm": [round(s, 4) for s in image.GetSpacing()],
        "origin_mm": [round(o, 3) for o in image.GetOrigin()],
        "direction": [round(d, 5) for d in image.GetDirection()],
        "planes": list(view_names(image.GetDirection())),
        "slice_thickness_mm": float(header.SliceThickness),
        "manufacturer": str(header.get("Manufacturer", "")),
        "field_strength_t": float(header.get("MagneticFieldStrength", 0) or 0),
        "pixel_type": image.GetPixelIDTypeAsString(),
    }


def predict(run: str, volume: Path, out: Path, domain: str) -> dict:
    """``jointseg predict RUN VOLUME --domain DOMAIN``; what came of it."""
    from jointseg.inference.predict import predict_path
    from jointseg.recognition.decision import DomainRecognitionError

    try:
        result = predict_path(Path(run), volume, out, domain=domain, meshes=False, overwrite=True)
    except DomainRecognitionError as error:
        return {"domain": None, "refused": str(error), "recognition": error.decision.to_dict()}
    return {"domain": result[0].domain, "confidence": result[0].confidence,
            "label_map": str(result[0].outputs[0])}  # fmt: skip


def bone_volumes(label_map: Path, run: str) -> dict[str, float]:
    """Predicted volume (ml) of each bone of the knee."""
    import SimpleITK as sitk

    from jointseg.data.io import read_image
    from jointseg.inference.packaged import resolve_run
    from jointseg.runs import load_run_info

    structures = load_run_info(resolve_run(run)).domain("knee").structures
    image = read_image(label_map)
    labels = sitk.GetArrayViewFromImage(image)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    return {name: round(float(np.sum(labels == value)) * voxel_ml, 2)
            for name, value in structures.items()}  # fmt: skip


def write_figure(volume: Path, label_map: Path | None, run: str, path: Path, title: str) -> None:
    """The scan's sagittal slices with the predicted femur, tibia and patella (colours of the
    label tables; the slices with the most bone, spread over the knee)."""
    import SimpleITK as sitk
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from jointseg.data.io import read_image
    from jointseg.inference.label_tables import label_entries
    from jointseg.inference.packaged import resolve_run
    from jointseg.runs import load_run_info
    from jointseg.utils.atomic import atomic_write_bytes

    image = sitk.GetArrayFromImage(read_image(volume)).astype(np.float32)  # z: sagittal slices
    labels = np.zeros(image.shape, np.uint8)
    entries = []
    if label_map is not None:
        labels = sitk.GetArrayFromImage(read_image(label_map))
        structures = load_run_info(resolve_run(run)).domain("knee").structures
        entries = [e for e in label_entries(structures) if e.name in BONES]
    bone = np.isin(labels, [e.value for e in entries])
    counts = bone.sum(axis=(1, 2))
    if counts.any():
        lit = np.flatnonzero(counts > 0.05 * counts.max())
        chosen = np.unique(np.linspace(lit[0], lit[-1], SLICES).round().astype(int))
    else:
        chosen = np.unique(np.linspace(3, len(image) - 4, SLICES).round().astype(int))
    low, high = np.percentile(image, [1, 99.5])
    figure = Figure(figsize=(3.2 * len(chosen), 3.9), dpi=100)
    FigureCanvasAgg(figure)
    for column, index in enumerate(chosen):
        ax = figure.add_subplot(1, len(chosen), column + 1)
        ax.imshow(image[index], cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        overlay = np.zeros((*labels.shape[1:], 4), np.float32)
        for entry in entries:
            where = labels[index] == entry.value
            overlay[where, :3] = np.asarray(entry.color, np.float32) / 255
            overlay[where, 3] = 0.45
        ax.imshow(overlay, interpolation="nearest")
        ax.set_title(f"sagittal slice {index}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Patch(color=np.asarray(e.color) / 255, label=e.name) for e in entries]
    if handles:
        figure.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0.07 if handles else 0, 1, 0.93))
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="pretrained", help="run folder, or 'pretrained'")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "real_knee")
    parser.add_argument("--cache", type=Path, default=None, help="download cache (OUT/cache)")
    parser.add_argument("--figure", type=Path, default=None, help="PNG (OUT/overlay.png)")
    parser.add_argument("--convert-only", action="store_true", help="stop after the volume")
    args = parser.parse_args(argv)
    from jointseg.utils.atomic import atomic_write_json
    from jointseg.workflows.console import configure_logging

    configure_logging()
    out = args.out
    archive = fetch_sdist(args.cache or out / "cache")
    series = extract_series(archive, out / "MESE_T2_dicom_data_anon")
    volume = out / "knee_mese_echo1.nii.gz"
    record: dict = {"scan": first_echo_volume(series, volume), "volume": str(volume)}
    print(f"[real_knee] {volume}: {json.dumps(record['scan'])}")
    if not args.convert_only:
        from jointseg.inference.packaged import resolve_run

        resolve_run(args.run)  # no packaged model: its message, before any work
        record["run"] = args.run
        knee = predict(args.run, volume, out / "knee", "knee")
        auto = predict(args.run, volume, out / "auto", "auto")
        knee["volumes_ml"] = bone_volumes(Path(knee["label_map"]), args.run)
        record["predictions"] = {"knee": knee, "auto": auto}
        recognized = auto["domain"] or "refused"
        title = (f"real knee (mskt, GE 3 T MESE, first echo), jointseg predict {args.run}; "
                 f"--domain auto: {recognized}")  # fmt: skip
        figure = args.figure or out / "overlay.png"
        write_figure(volume, Path(knee["label_map"]), args.run, figure, title)
        record["figure"] = str(figure)
        print(f"[real_knee] --domain knee: {knee['volumes_ml']} ml; --domain auto: {recognized}")
        print(f"[real_knee] figure: {figure}")
    atomic_write_json(out / "real_knee.json", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
