"""The on-disk slice cache: content keys, reuse, rebuilds, parallel builds, errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from jointseg.config import ExperimentConfig, PreprocessingConfig
from jointseg.data import cache as cache_module
from jointseg.data import io as scan_io
from jointseg.data.cache import (
    build_slice_cache,
    default_cache_root,
    preprocess_study,
)
from jointseg.data.labels import DomainLabels
from jointseg.data.manifest import DatasetError, list_cases, load_manifest
from jointseg.data.preprocess import preprocess_case, restore_labels

from .conftest import make_volume_pair, write_dataset

CFG = PreprocessingConfig(target_spacing=1.0, patch_size=(32, 32), jobs=1)


def domain(folder: Path, name: str = "toy") -> DomainLabels:
    return DomainLabels(name, load_manifest(folder).structures)


@pytest.fixture
def counted_reads(monkeypatch):
    calls: list[Path] = []
    original = scan_io.read_image

    def counting(path):
        calls.append(Path(path))
        return original(path)

    monkeypatch.setattr(scan_io, "read_image", counting)
    return calls


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    # Non-contiguous on-disk values: the cache must store local classes 0, 1, 2.
    return write_dataset(tmp_path, cases=3, structures={"femur": 3, "tibia": 7})


def build(folder: Path, cfg=CFG, root: Path | None = None, jobs: int | None = 1):
    root = root or folder.parent / "cache"
    return build_slice_cache(
        folder, list_cases(folder), domain(folder), cfg, cache_root=root, jobs=jobs, progress=False
    )


def test_cache_contents(dataset: Path):
    cache = build(dataset)
    cases = list_cases(dataset)
    assert cache.case_ids == [c.case_id for c in cases]
    assert cache.images.dtype == np.float32 and cache.labels.dtype == np.uint8
    for array in (*cache.images.arrays, *cache.labels.arrays):
        assert isinstance(array, np.memmap) and not array.flags.writeable
        assert array.shape == (8, 26, 26)  # 32 voxels of 0.8 mm at 1 mm: the whole view
    assert len(cache) == 24  # 3 cases x 8 slices
    assert cache.case_slices == {"toy_000": (0, 8), "toy_001": (8, 16), "toy_002": (16, 24)}
    assert set(np.unique(cache.labels.arrays)) == {0, 1, 2}
    per_row = [cache.labels[row].any() for row in range(len(cache))]
    assert np.array_equal(cache.foreground, per_row)
    assert cache.foreground.sum() == 18  # the boxes leave the first and last slice empty
    assert np.array_equal(cache.rows(["toy_002", "toy_000"]), [*range(16, 24), *range(8)])
    assert cache.rows([]).shape == (0,)
    with pytest.raises(KeyError, match="nope"):
        cache.rows(["nope"])
    with pytest.raises(IndexError, match="several cases"):
        cache.images[6:10]
    # every structure voxel of a case is listed (fewer than MAX_LOCATIONS), as (class, row, y, x)
    classes, rows, ys, xs = cache.locations.T
    assert cache.locations.dtype == np.int32
    for value in (1, 2):
        mask = np.stack([cache.labels[row] for row in range(len(cache))]) == value
        picked = classes == value
        assert picked.sum() == mask.sum() and mask[rows[picked], ys[picked], xs[picked]].all()

    expected = preprocess_case(scan_io.read_image(cases[1].image), None, CFG)
    assert np.array_equal(cache.images[8:16], expected.image)
    assert cache.inverse["toy_001"] == expected.inverse
    # local classes -> disk values -> original grid gives back the label file
    labels = domain(dataset)
    disk = labels.disk_values()[cache.labels[8:16]]
    restored = restore_labels(disk, cache.inverse["toy_001"])
    original = sitk.GetArrayFromImage(scan_io.read_image(cases[1].label))
    dice = [
        2
        * ((restored_v := sitk.GetArrayFromImage(restored) == v) & (original == v)).sum()
        / (restored_v.sum() + (original == v).sum())
        for v in (3, 7)
    ]
    assert min(dice) > 0.9


def test_cache_hit_reads_no_volume_and_hashes_no_input_file(
    dataset: Path, counted_reads, monkeypatch
):
    first = build(dataset)
    assert len(counted_reads) == 6  # 3 images + 3 labels
    counted_reads.clear()
    hashed: list[Path] = []
    original = cache_module.file_sha256
    monkeypatch.setattr(cache_module, "file_sha256", lambda p: hashed.append(p) or original(p))
    second = build(dataset)
    # only the cache's own arrays are hashed (verified), no input file
    assert counted_reads == [] and all(second.path in p.parents for p in hashed)
    names = sorted(str(p.relative_to(second.path)) for p in hashed)
    assert names == sorted(
        ["foreground.npy", "locations.npy"]
        + [f"{kind}/toy_00{i}.npy" for kind in ("images", "labels") for i in range(3)]
    )
    assert second.path == first.path
    assert np.array_equal(second.images[0:8], first.images[0:8])
    # `jobs` does not belong to the key
    assert build(dataset, cfg=CFG.model_copy(update={"jobs": 2}), jobs=1).path == first.path
    assert counted_reads == []


def test_rebuilt_after_a_parameter_change(dataset: Path, counted_reads):
    first = build(dataset)
    counted_reads.clear()
    other = build(dataset, cfg=CFG.model_copy(update={"clip_percentiles": (1.0, 99.0)}))
    assert other.path != first.path and len(counted_reads) == 6
    counted_reads.clear()
    moved = build(dataset, cfg=CFG.model_copy(update={"target_spacing": 0.8}))
    assert moved.path not in (first.path, other.path) and len(counted_reads) == 6
    assert first.path.is_dir()  # older caches stay usable


def test_rebuilt_after_a_label_mapping_change(dataset: Path, counted_reads):
    first = build(dataset)
    counted_reads.clear()
    renamed = DomainLabels("toy", {"femur": 3, "tibia": 7, "fibula": 9})
    again = build_slice_cache(
        dataset,
        list_cases(dataset),
        renamed,
        CFG,
        cache_root=first.path.parents[1],
        jobs=1,
        progress=False,
    )
    assert again.path != first.path and len(counted_reads) == 6


def test_rebuilt_after_a_content_change(dataset: Path, counted_reads):
    first = build(dataset)
    case = list_cases(dataset)[0]
    label = scan_io.read_image(case.label)
    array = sitk.GetArrayFromImage(label)
    array[array == 7] = 3  # same size, same geometry, different bytes
    changed = sitk.GetImageFromArray(array)
    changed.CopyInformation(label)
    scan_io.write_image(changed, case.label)
    counted_reads.clear()
    second = build(dataset)
    assert second.path != first.path and len(counted_reads) == 6
    assert 2 not in np.unique(second.labels[slice(*second.case_slices[case.case_id])])


def test_cases_of_different_sizes_round_trip(tmp_path: Path):
    folder = write_dataset(tmp_path, cases=2, structures={"femur": 3, "tibia": 7})
    wide = list_cases(folder)[1]
    for path in (wide.image, wide.label):  # the second case's field of view is 48 x 40 voxels
        image, label = make_volume_pair(shape=(5, 40, 48), seed=4, labels=(3, 7))
        scan_io.write_image(image if path == wide.image else label, path)
    cache = build(folder)
    assert [a.shape for a in cache.images.arrays] == [(8, 26, 26), (5, 32, 38)]
    assert cache.case_slices == {"toy_000": (0, 8), "toy_001": (8, 13)}
    assert cache.images[3].shape == (26, 26) and cache.images[10].shape == (32, 38)
    assert np.array_equal(cache.images.shapes(np.array([12, 0])), [[32, 38], [26, 26]])
    again = cache_module.load_slice_cache(cache.path)
    for case in cache.case_ids:
        rows = slice(*cache.case_slices[case])
        expected = preprocess_case(scan_io.read_image(wide.image), None, CFG).image
        if case == wide.case_id:
            assert np.array_equal(again.images[rows], expected)
        restored = restore_labels(
            domain(folder).disk_values()[again.labels[rows]], again.inverse[case]
        )
        truth = scan_io.read_image(folder / "labelsTr" / f"{case}.nii.gz")
        assert restored.GetSize() == truth.GetSize()


def test_format_version_bump_invalidates_old_caches(dataset: Path, counted_reads, monkeypatch):
    first = build(dataset)
    counted_reads.clear()
    monkeypatch.setattr(cache_module, "CACHE_FORMAT_VERSION", cache_module.CACHE_FORMAT_VERSION + 1)
    second = build(dataset)
    assert second.path != first.path and len(counted_reads) == 6
    meta = json.loads((second.path / "meta.json").read_text(encoding="utf-8"))
    assert meta["version"] == cache_module.CACHE_FORMAT_VERSION


def test_patch_size_does_not_change_the_cache(dataset: Path, counted_reads):
    first = build(dataset)
    counted_reads.clear()
    assert build(dataset, cfg=CFG.model_copy(update={"patch_size": (64, 64)})).path == first.path
    assert counted_reads == []


def test_parallel_build_is_identical(dataset: Path, tmp_path: Path):
    serial = build(dataset, root=tmp_path / "serial", jobs=1)
    parallel = build(dataset, root=tmp_path / "parallel", jobs=2)
    assert serial.path.name == parallel.path.name
    for kind in ("images", "labels"):
        pairs = zip(getattr(serial, kind).arrays, getattr(parallel, kind).arrays, strict=True)
        assert all(np.array_equal(a, b) for a, b in pairs)
    assert np.array_equal(serial.foreground, parallel.foreground)
    assert np.array_equal(serial.locations, parallel.locations)
    assert serial.inverse == parallel.inverse
    meta = [
        json.loads((c.path / "meta.json").read_text(encoding="utf-8")) for c in (serial, parallel)
    ]
    assert meta[0]["cases"] == meta[1]["cases"]


def test_unknown_label_value_names_the_file(tmp_path: Path):
    folder = write_dataset(tmp_path, cases=2, structures={"femur": 1, "tibia": 2})
    labels = DomainLabels("toy", {"femur": 1})  # value 2 is not mapped
    with pytest.raises(DatasetError, match=r"toy_000\.nii\.gz.*\[2\]"):
        build_slice_cache(
            folder,
            list_cases(folder),
            labels,
            CFG,
            cache_root=tmp_path / "c",
            progress=False,
            jobs=1,
        )
    parent = tmp_path / "c" / folder.name
    assert not [p for p in parent.iterdir() if p.name != "file_hashes.json"]  # no half cache


def test_failed_build_leaves_nothing_behind(dataset: Path, monkeypatch):
    calls = []
    original = cache_module._process

    def failing(task):
        calls.append(task)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(task)

    monkeypatch.setattr(cache_module, "_process", failing)
    with pytest.raises(KeyboardInterrupt):
        build(dataset)
    assert list((dataset.parent / "cache" / dataset.name).iterdir()) == []
    monkeypatch.setattr(cache_module, "_process", original)
    assert len(build(dataset)) == 24


def test_unlabelled_case_is_an_error(dataset: Path):
    case = list_cases(dataset)[0]
    case.label.unlink()
    with pytest.raises(DatasetError, match="no label file"):
        build(dataset)


def test_preprocess_study(tmp_path: Path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="jointseg.data.cache")
    monkeypatch.delenv("JOINTSEG_CACHE", raising=False)
    write_dataset(tmp_path, name="Dataset001_Knee", cases=2)
    write_dataset(tmp_path, name="Dataset002_Ankle", cases=1, structures={"talus": 1})
    cfg = ExperimentConfig(
        datasets=[
            {"name": "knee", "folder": "Dataset001_Knee"},
            {"name": "ankle", "folder": "Dataset002_Ankle"},
        ],
        preprocessing=CFG.model_dump(),
    )
    caches = preprocess_study(cfg, tmp_path)
    assert list(caches) == ["knee", "ankle"]
    assert len(caches["knee"]) == 16 and len(caches["ankle"]) == 8
    assert set(np.unique(caches["ankle"].labels.arrays)) == {0, 1}
    assert caches["knee"].path.is_relative_to(tmp_path / ".jointseg_cache")
    out = caplog.text
    assert "knee: 2 cases, 16 slices" in out and "built" in out
    caplog.clear()
    preprocess_study(cfg, tmp_path)
    assert caplog.text.count("reused") == 2


def test_default_cache_root(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("JOINTSEG_CACHE", raising=False)
    assert default_cache_root(tmp_path) == tmp_path / ".jointseg_cache"
    monkeypatch.setenv("JOINTSEG_CACHE", str(tmp_path / "elsewhere"))
    assert default_cache_root(tmp_path) == tmp_path / "elsewhere"
