"""Input scenarios for ``benchmarks/robustness.py``: bad files through every command that reads
them, and scans as they come through the prediction path. Each is a plain function that returns
what happened, or raises :class:`Unhandled` saying what went wrong.

Bad inputs run the real command line (``python -m jointseg.cli``) in a fresh process; handled
means the documented exit status (1 for bad data, 2 for a command called wrongly), the file named
on a line with a description of its problem, and neither a traceback nor a bare "Aborted".
The damaged files are made by the builders of ``tests/test_bad_inputs.py``; the scans by
``tests/tiny_model.py``. Predictions use the run folder of an untrained model (``train_run``
with ``max_steps=0``): its label maps are arbitrary but must follow the scan, not its storage.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import yaml
from robustness_faults import Unhandled, check, jointseg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests/

from jointseg.config import PATCH_MULTIPLE  # noqa: E402
from jointseg.data.io import read_image, write_image  # noqa: E402
from jointseg.inference import slices  # noqa: E402
from jointseg.inference.predict import predict_path  # noqa: E402
from jointseg.inference.predictor import InputError, Predictor  # noqa: E402
from tests.conftest import write_dataset  # noqa: E402
from tests.test_bad_inputs import (  # noqa: E402
    DAMAGES,
    SECOND,
    damaged_study,
    dicom_series,
)
from tests.test_scan_inputs import PIXELS, back_to, big_header_file, reorient  # noqa: E402
from tests.test_training import tiny_config  # noqa: E402
from tests.tiny_model import DOMAINS, OBLIQUE, make_scan, same_geometry, train_run  # noqa: E402

KNEE = "Dataset001_knee"


# ----------------------------------------------------------------------------- helpers


@functools.cache
def _root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="jointseg-inputs-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


@functools.cache
def _clean_study() -> Path:
    """The two test domains as a study (3 training and 2 test cases each) with its config."""
    root = _root() / "study"
    for index, (domain, structures) in enumerate(DOMAINS.items()):
        write_dataset(
            root, f"Dataset00{index + 1}_{domain}", cases=3, test_cases=2, structures=structures
        )
    config = tiny_config()
    config["datasets"] = [
        {"name": domain, "folder": f"Dataset00{index + 1}_{domain}"}
        for index, domain in enumerate(DOMAINS)
    ]
    (root / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return root


@functools.cache
def _untrained_run() -> Path:
    folder = _root() / "untrained"
    folder.mkdir()
    return train_run(folder, max_steps=0)


@functools.cache
def _predictor() -> Predictor:
    return Predictor.from_run(_untrained_run(), batch_size=8)


def _study_copy(tmp: Path) -> Path:
    study = tmp / "study"
    shutil.copytree(_clean_study(), study)
    return study


def _handled(done, path: Path, message: str, status: int = 1) -> str:
    """The line of ``done``'s output naming ``path`` with ``message``; raises if not handled."""
    output = done.stdout + done.stderr
    check("Traceback" not in output, f"a traceback for {path.name}:\n{output[-1500:]}")
    check("Aborted" not in output, f"a bare 'Aborted' for {path.name}")
    check(
        done.returncode == status,
        f"exit status {done.returncode}, not {status}, for {path.name}: {output[-500:]}",
    )
    lines = [line for line in output.splitlines() if str(path) in line]
    check(bool(lines), f"{path} not named in the output:\n{output[-800:]}")
    named = [line for line in lines if message in line]
    check(bool(named), f"{path.name} named without {message!r}: {lines}")
    return named[0].strip()


def _short(line: str, *folders: Path) -> str:
    for folder in folders:
        line = line.replace(f"{folder}/", "")
    return line


def _commands(study: Path, tmp: Path, command: str) -> list[str]:
    config = study / "config.yaml"
    if command == "train":
        return ["train", "-c", str(config), "-d", str(study), "-o", str(tmp / "run")]
    return [command, "-c", str(config), "-d", str(study)]


def _dataset_commands(
    damage: Callable[[Path], None], path: str, expect: dict[str, tuple[str, str]]
) -> str:
    """Damage ``path`` of a copy of the clean study; each command of ``expect`` names its file
    (relative to the study) with its message."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        study = _study_copy(tmp)
        damage(study / path)
        lines = []
        for command, (named, message) in expect.items():
            args = ["check", str(study)] if command == "check" else _commands(study, tmp, command)
            lines.append(_handled(jointseg(*args), study / named, message))
        check(not (tmp / "run" / "run.json").exists(), "train wrote a run anyway")
        shown = dict.fromkeys(_short(line, study) for line in lines)
        return f"{', '.join(expect)}: exit 1; " + " | ".join(shown)


def _predict(
    make: Callable[[Path], Path], message: str, status: int = 1, *options: str
) -> tuple[str, Path]:
    """``jointseg predict`` of the untrained run on what ``make`` writes into a folder."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        target = make(tmp)
        out = tmp / "out"
        done = jointseg(
            "predict", str(_untrained_run()), str(target), "-o", str(out), "--no-meshes", *options
        )
        line = _handled(done, target, message, status)
        written = sorted(out.rglob("*")) if out.exists() else []
        check(not written, f"outputs written: {written}")
        return _short(line, tmp), target


# ----------------------------------------------------------------------------- bad files


def _every_command(kind: str) -> str:
    """A damaged image and an emptied label in each split of the knee dataset, through check,
    preprocess, train, evaluate and predict (a folder of scans and the one scan)."""
    damage, message = DAMAGES[kind]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        case = damaged_study(_clean_study(), tmp, damage)
        study = case["study"]
        (train_bad, train_empty), (test_bad, test_empty) = case["train"], case["test"]

        done = jointseg("check", str(study))
        for path, problem in (
            (train_bad, message),
            (train_empty, SECOND),
            (test_bad, message),
            (test_empty, SECOND),
        ):
            _handled(done, path, problem)
        for command in ("preprocess", "train"):
            done = jointseg(*_commands(study, tmp, command))
            check("2 unreadable files" in done.stderr, f"{command}: not both files listed")
            _handled(done, train_bad, message)
            _handled(done, train_empty, SECOND)
        check(not (tmp / "run" / "run.json").exists(), "train wrote a run anyway")

        run = tmp / "evaluated"
        shutil.copytree(_untrained_run(), run)
        done = jointseg("evaluate", str(run), "--data", str(study))
        check("2 unreadable files" in done.stderr, "evaluate: not both files listed")
        _handled(done, test_bad, message)
        _handled(done, test_empty, SECOND)

        out = tmp / "predicted"
        predict = ("predict", str(_untrained_run()))
        options = ("-o", str(out), "--domain", "knee", "--no-meshes")
        done = jointseg(*predict, str(test_bad.parent), *options)
        check("1 of 2 scans failed" in done.stderr, f"predict folder: {done.stderr[-500:]}")
        _handled(done, test_bad, message)
        check((out / "toy_101_0000_seg.nii.gz").is_file(), "the good scan was not segmented")
        line = _handled(jointseg(*predict, str(test_bad), *options), test_bad, message)
    return f"check, preprocess, train, evaluate, predict: exit 1; {_short(line, test_bad.parent)}"


def nifti_cut_short() -> str:
    return _every_command("cut short")


def nifti_zero_bytes() -> str:
    return _every_command("empty")


def gzip_bad_crc() -> str:
    return _every_command("bad checksum")


def nifti_header_promises_more_voxels() -> str:
    return _every_command("header")


def _dicom(damage: Callable[[Path], None], message: str) -> str:
    """``jointseg predict`` on the damaged series and on a folder holding it and a good one."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scans = tmp / "scans"
        dicom_series(scans / "good")
        series = dicom_series(scans / "bad")
        damage(series)
        run = str(_untrained_run())
        options = ("-o", str(tmp / "out"), "--domain", "knee", "--no-meshes")
        done = jointseg("predict", run, str(scans), *options)
        check("1 of 2 scans failed" in done.stderr, f"predict folder: {done.stderr[-500:]}")
        _handled(done, series, message)
        line = _handled(jointseg("predict", run, str(series), *options), series, message)
    return f"predict (folder, series): exit 1; {_short(line, scans)}"


def dicom_missing_slice() -> str:
    return _dicom(lambda series: (series / "slice003.dcm").unlink(), "missing slices")


def dicom_duplicated_slice() -> str:
    def duplicate(series: Path) -> None:
        shutil.copy(series / "slice005.dcm", series / "slice005_copy.dcm")

    return _dicom(duplicate, "duplicated slices: slice005.dcm and slice005_copy.dcm")


# ------------------------------------------------------------------- previously handled


def _edit(path: Path, change: Callable[[np.ndarray], np.ndarray], **geometry) -> None:
    image = read_image(path)
    array = change(sitk.GetArrayFromImage(image))
    edited = sitk.GetImageFromArray(array)
    edited.CopyInformation(image)
    for key, value in geometry.items():
        getattr(edited, f"Set{key}")(value)
    write_image(edited, path)


TRAIN_LABEL = f"{KNEE}/labelsTr/toy_001.nii.gz"
TRAIN_IMAGE = f"{KNEE}/imagesTr/toy_001_0000.nii.gz"


def _everywhere(named: str, message: str) -> dict[str, tuple[str, str]]:
    return dict.fromkeys(("check", "preprocess", "train"), (named, message))


def label_with_unknown_values() -> str:
    def seven(path: Path) -> None:
        _edit(path, lambda a: np.where(a == 2, 7, a).astype(a.dtype))

    return _dataset_commands(seven, TRAIN_LABEL, _everywhere(TRAIN_LABEL, "label values [7]"))


def label_geometry_mismatch() -> str:
    loaded = (TRAIN_IMAGE, "label and image grids differ: spacing")
    return _dataset_commands(
        lambda p: _edit(p, lambda a: a, Spacing=(0.9, 0.8, 3.0)),
        TRAIN_LABEL,
        {
            "check": (TRAIN_LABEL, "geometry differs from its image: spacing"),
            "preprocess": loaded,
            "train": loaded,
        },
    )


def label_file_missing() -> str:
    loaded = (TRAIN_IMAGE, "no label file for")
    return _dataset_commands(
        lambda p: p.unlink(),
        TRAIN_LABEL,
        {
            "check": (TRAIN_IMAGE, "training image without a label map"),
            "preprocess": loaded,
            "train": loaded,
        },
    )


def label_without_image() -> str:
    orphan = f"{KNEE}/labelsTr/toy_099.nii.gz"
    return _dataset_commands(
        lambda p: shutil.copy(p, p.with_name("toy_099.nii.gz")),
        TRAIN_LABEL,
        {"check": (orphan, "label map without a matching image")},
    )


def label_map_empty() -> str:
    return _dataset_commands(
        lambda p: _edit(p, lambda a: np.zeros_like(a)),
        TRAIN_LABEL,
        {"check": (TRAIN_LABEL, "empty label map")},
    )


def label_non_integer() -> str:
    loaded = (TRAIN_LABEL, "label values [0.5, 1.5, 2.5]")
    return _dataset_commands(
        lambda p: _edit(p, lambda a: a.astype(np.float32) + 0.5),
        TRAIN_LABEL,
        {
            "check": (TRAIN_LABEL, "label map holds non-integer values"),
            "preprocess": loaded,
            "train": loaded,
        },
    )


def image_nan_voxels() -> str:
    """One NaN voxel in a training image: check names it; preprocess must not cache NaNs."""

    def nan(path: Path) -> None:
        def change(a: np.ndarray) -> np.ndarray:
            a[2, 3, 4] = np.nan
            return a

        _edit(path, change)

    outcome = _dataset_commands(
        nan, TRAIN_IMAGE, {"check": (TRAIN_IMAGE, "1 NaN or infinite intensities")}
    )
    with tempfile.TemporaryDirectory() as tmp:
        study = _study_copy(Path(tmp))
        nan(study / TRAIN_IMAGE)
        done = jointseg(*_commands(study, Path(tmp), "preprocess"))
        if done.returncode == 0:
            cached = [np.load(p) for p in (study / ".jointseg_cache" / KNEE).rglob("images.npy")]
            bad = sum(int(np.isnan(a).sum()) for a in cached)
            total = sum(a.size for a in cached)
            check(bad == 0, f"preprocess exits 0 and caches {bad} NaN of {total} knee intensities")
            return f"{outcome}; preprocess: exit 0, no NaN among the {total} cached intensities"
        _handled(done, study / TRAIN_IMAGE, "NaN")
    return f"{outcome}; preprocess: exit 1, the file named"


def image_constant() -> str:
    return _dataset_commands(
        lambda p: _edit(p, lambda a: np.full_like(a, 120)),
        TRAIN_IMAGE,
        {"check": (TRAIN_IMAGE, "every voxel has the same intensity")},
    )


def image_garbage_bytes() -> str:
    return _dataset_commands(
        lambda p: p.write_bytes(b"garbage"), TRAIN_IMAGE, _everywhere(TRAIN_IMAGE, "cannot read")
    )


def image_2d_in_dataset() -> str:
    def flat(path: Path) -> None:
        write_image(read_image(path)[:, :, 3], path)

    loaded = (TRAIN_IMAGE, "expected a 3D scan, got size (32, 32)")
    return _dataset_commands(
        flat,
        TRAIN_IMAGE,
        {"check": (TRAIN_IMAGE, "a 2D image"), "preprocess": loaded, "train": loaded},
    )


def dataset_json_invalid() -> str:
    manifest = f"{KNEE}/dataset.json"
    return _dataset_commands(
        lambda p: p.write_text('{"labels": {"bone": 1}}'),
        manifest,
        _everywhere(manifest, "Field required"),
    )


def dataset_json_not_json() -> str:
    manifest = f"{KNEE}/dataset.json"
    return _dataset_commands(
        lambda p: p.write_text('{"labels": '), manifest, _everywhere(manifest, "not valid JSON")
    )


def config_unknown_key() -> str:
    def make(tmp: Path) -> Path:
        study = _study_copy(tmp)
        config = yaml.safe_load((study / "config.yaml").read_text(encoding="utf-8"))
        config["training"]["epochz"] = 3
        (study / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
        return study

    with tempfile.TemporaryDirectory() as tmp:
        study = make(Path(tmp))
        config = study / "config.yaml"
        line = ""
        for command in ("preprocess", "train"):
            done = jointseg(*_commands(study, Path(tmp), command))
            line = _handled(done, config, "invalid configuration", status=2)
            check("epochz" in done.stderr, f"{command}: the unknown key not named")
        return f"preprocess, train: exit 2; {_short(line, study)}"


def predict_2d_scan() -> str:
    def make(tmp: Path) -> Path:
        path = tmp / "flat.nii.gz"
        sitk.WriteImage(make_scan("knee", 3)[0][:, :, 5], str(path))
        return path

    line, _ = _predict(make, "2D")
    return f"exit 1; {line}"


def predict_mha_cut_short() -> str:
    def make(tmp: Path) -> Path:
        path = tmp / "cut.mha"
        sitk.WriteImage(make_scan("knee", 3)[0], str(path))
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * 0.6)])
        return path

    line, _ = _predict(make, "cannot read")
    return f"exit 1; {line}"


def predict_uncompressed_nifti_cut_short() -> str:
    def make(tmp: Path) -> Path:
        path = tmp / "cut.nii"
        sitk.WriteImage(make_scan("knee", 3)[0], str(path))
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * 0.6)])
        return path

    line, _ = _predict(make, "the header promises")
    return f"exit 1; {line}"


def predict_missing_file() -> str:
    line, _ = _predict(lambda tmp: tmp / "missing.nii.gz", "missing.nii.gz", 2)
    return f"exit 2; {line}"


def predict_empty_folder() -> str:
    def make(tmp: Path) -> Path:
        (tmp / "empty").mkdir()
        return tmp / "empty"

    line, _ = _predict(make, "empty folder", 2)
    return f"exit 2; {line}"


def predict_unsupported_file() -> str:
    def make(tmp: Path) -> Path:
        (tmp / "scan.txt").write_text("x")
        return tmp / "scan.txt"

    line, _ = _predict(make, "not a supported scan", 2)
    return f"exit 2; {line}"


def predict_run_without_model() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = tmp / "no_model"
        shutil.copytree(_untrained_run(), run)
        shutil.rmtree(run / "models")
        scan = tmp / "ok.mha"
        sitk.WriteImage(make_scan("knee", 3)[0], str(scan))
        done = jointseg("predict", str(run), str(scan), "-o", str(tmp / "out"))
        line = _handled(done, run, "missing model.json, model.safetensors", status=2)
        return f"exit 2; {_short(line, tmp)}"


BAD_INPUTS: list[Callable[[], str]] = [
    nifti_cut_short,
    nifti_zero_bytes,
    gzip_bad_crc,
    nifti_header_promises_more_voxels,
    dicom_missing_slice,
    dicom_duplicated_slice,
    label_with_unknown_values,
    label_geometry_mismatch,
    label_file_missing,
    label_without_image,
    label_map_empty,
    label_non_integer,
    image_nan_voxels,
    image_constant,
    image_garbage_bytes,
    image_2d_in_dataset,
    dataset_json_invalid,
    dataset_json_not_json,
    config_unknown_key,
    predict_2d_scan,
    predict_mha_cut_short,
    predict_uncompressed_nifti_cut_short,
    predict_missing_file,
    predict_empty_folder,
    predict_unsupported_file,
    predict_run_without_model,
]


# ----------------------------------------------------------------------- scans as they come


def _dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    x, y = a == value, b == value
    total = x.sum() + y.sum()
    return 1.0 if total == 0 else 2.0 * (x & y).sum() / total


def _agreement(maps: list[np.ndarray], values) -> float:
    """The worst Dice over every pair of label maps and every value (1 where identical)."""
    worst = 1.0
    for a, b in itertools.combinations(maps, 2):
        if not np.array_equal(a, b):
            worst = min(worst, *(_dice(a, b, v) for v in values))
    return worst


def _on_own_grid(prediction, image: sitk.Image) -> np.ndarray:
    check(same_geometry(prediction.label_map, image), "the label map is not on the scan's grid")
    array = sitk.GetArrayFromImage(prediction.label_map)
    values = {0, *DOMAINS["knee"].values()}
    check(set(np.unique(array)) <= values, f"label values {np.unique(array)} outside {values}")
    return array


def orientations_48() -> str:
    image, _ = make_scan("knee", 5, direction=OBLIQUE)
    predictor = _predictor()
    maps, identical = [], 0
    for perm in itertools.permutations(range(3)):
        for flips in itertools.product((0, 1), repeat=3):
            turned = reorient(image, perm, flips)
            prediction = predictor.predict(turned, domain="knee")
            _on_own_grid(prediction, turned)
            maps.append(back_to(prediction.label_map, image))
            identical += np.array_equal(maps[-1], maps[0])
    worst = _agreement(maps, DOMAINS["knee"].values())
    check(worst >= 0.99, f"pairwise Dice down to {worst:.4f}")
    labelled = int((maps[0] > 0).sum())
    return (
        f"48 label maps mapped back: {identical} of 48 identical to the first, worst pairwise "
        f"Dice {worst:.4f} ({labelled} labelled voxels)"
    )


def oblique_direction() -> str:
    straight, _ = make_scan("knee", 5)
    oblique, _ = make_scan("knee", 5, direction=OBLIQUE)
    predictor = _predictor()
    a = _on_own_grid(predictor.predict(straight, domain="knee"), straight)
    b = _on_own_grid(predictor.predict(oblique, domain="knee"), oblique)
    worst = _agreement([a, b], DOMAINS["knee"].values())
    check(worst >= 0.99, f"the oblique scan's labels differ: Dice {worst:.4f}")
    return f"label map on the oblique grid; Dice {worst:.4f} to the same voxels stored straight"


def anisotropy_02_02_8mm() -> str:
    image, _ = make_scan("knee", 6)
    grid = sitk.Image([352, 320, 7], sitk.sitkFloat32)  # 0.2 x 0.2 x 8 mm, the same field of view
    grid.SetSpacing((0.2, 0.2, 8.0))
    grid.SetOrigin(image.GetOrigin())
    grid.SetDirection(image.GetDirection())
    thin = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0)
    prediction = _predictor().predict(thin, domain="knee")
    _on_own_grid(prediction, thin)
    details = prediction.details
    check(details["slices"] == 7, f"{details['slices']} slices, not the 7 of the 8 mm axis")
    check(all(side % PATCH_MULTIPLE == 0 for side in details["grid"]), "odd slice grid")
    return f"352x320x7 label map; 7 slices along the 8 mm axis, slice grid {details['grid']}"


def field_of_view_8x8x3() -> str:
    image, _ = make_scan("knee", 6)
    tiny = image[28:36, 20:28, 8:11]
    _on_own_grid(_predictor().predict(tiny, domain="knee"), tiny)
    return "8x8x3 label map on the scan's grid"


def _voxel_type(pixel: str) -> str:
    image, _ = make_scan("knee", 7)
    predictor = _predictor()
    reference = sitk.GetArrayFromImage(predictor.predict(image, domain="knee").label_map)
    if pixel == "uint8":
        image = sitk.RescaleIntensity(image, 0, 255)
    typed = sitk.Cast(image, PIXELS[pixel])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"scan_{pixel}.nii.gz"
        sitk.WriteImage(typed, str(path))
        stored = sitk.ReadImage(str(path)).GetPixelIDTypeAsString()
        check(stored == typed.GetPixelIDTypeAsString(), f"stored as {stored}")
        got = _on_own_grid(predictor.predict(path, domain="knee"), sitk.ReadImage(str(path)))
    worst = _agreement([got, reference], DOMAINS["knee"].values())
    check(worst >= 0.95, f"Dice {worst:.4f} to the float32 scan's labels")
    return f"{stored} file read and segmented; Dice {worst:.4f} to the float32 scan's labels"


def voxels_int16() -> str:
    return _voxel_type("int16")


def voxels_uint8() -> str:
    return _voxel_type("uint8")


def voxels_uint16() -> str:
    return _voxel_type("uint16")


def voxels_float64() -> str:
    return _voxel_type("float64")


def constant_image() -> str:
    def make(tmp: Path) -> Path:
        image, _ = make_scan("knee", 0)
        flat = sitk.GetImageFromArray(
            np.full(sitk.GetArrayViewFromImage(image).shape, 120, np.int16)
        )
        flat.CopyInformation(image)
        path = tmp / "flat.nii.gz"
        sitk.WriteImage(flat, str(path))
        return path

    lines = [
        _predict(make, "every voxel has the same intensity", 1, "--domain", domain)[0]
        for domain in ("auto", "knee")
    ]
    return f"refused (--domain auto and knee), exit 1; {lines[-1]}"


def file_4d() -> str:
    def make(tmp: Path) -> Path:
        image, _ = make_scan("knee", 0)
        path = tmp / "series4d.nii.gz"
        sitk.WriteImage(sitk.JoinSeries([image, image]), str(path))
        return path

    line, _ = _predict(make, "the scan is 4D")
    return f"refused, exit 1; {line}"


def file_2_channels() -> str:
    def make(tmp: Path) -> Path:
        image, _ = make_scan("knee", 0)
        path = tmp / "two_channels.nrrd"
        sitk.WriteImage(sitk.Compose(image, image), str(path))
        return path

    line, _ = _predict(make, "2 components per voxel")
    return f"refused, exit 1; {line}"


def header_1024x1024x400() -> str:
    """Refused from the header alone: reading the voxels raises, and the limit is set just
    under this scan's 419,430,400 voxels (the default, 2^30, would accept it)."""

    def no_reading(*args, **kwargs):
        raise Unhandled("the voxels were read")

    real_read, real_limit = slices.read_image, slices.MAX_SCAN_VOXELS
    slices.read_image, slices.MAX_SCAN_VOXELS = no_reading, 400 * 1024 * 1024 - 1
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = big_header_file(Path(tmp) / "huge.nii", (1024, 1024, 400))
            began = time.perf_counter()
            try:
                predict_path(_untrained_run(), path, Path(tmp) / "out")
            except InputError as error:
                message = str(error)
            else:
                raise Unhandled("not refused")
            seconds = time.perf_counter() - began
            check(message.startswith(f"{path}: the scan has 419,430,400 voxels"), message)
            message = message.replace(f"{tmp}/", "")
    finally:
        slices.read_image, slices.MAX_SCAN_VOXELS = real_read, real_limit
    return f"refused in {seconds:.2f} s without reading a voxel; {message}"


SCANS: list[Callable[[], str]] = [
    orientations_48,
    oblique_direction,
    anisotropy_02_02_8mm,
    field_of_view_8x8x3,
    voxels_int16,
    voxels_uint8,
    voxels_uint16,
    voxels_float64,
    constant_image,
    file_4d,
    file_2_channels,
    header_1024x1024x400,
]
