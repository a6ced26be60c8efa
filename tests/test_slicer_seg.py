"""3D Slicer .seg.nrrd: the header's segment fields, geometry and voxels read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from jointseg.inference.label_tables import KNOWN_COLORS
from jointseg.inference.slicer_seg import segment_extent, write_slicer_segmentation

STRUCTURES = {"humerus": 3, "scapula": 7, "glenoid_physis": 9}


def oblique_label_map() -> sitk.Image:
    labels = np.zeros((6, 10, 12), np.uint8)  # [k, j, i]
    labels[1:3, 2:5, 3:9] = 3
    labels[4, 7, 0:2] = 7
    image = sitk.GetImageFromArray(labels)  # glenoid_physis: absent
    a = np.deg2rad(25)
    image.SetDirection((np.cos(a), 0, np.sin(a), 0, 1, 0, -np.sin(a), 0, np.cos(a)))
    image.SetSpacing((0.5, 0.7, 3.0))
    image.SetOrigin((10.0, -4.0, 33.0))
    return image


def test_extent_of_a_segment_is_its_voxel_box():
    mask = np.zeros((6, 10, 12), bool)
    mask[1:3, 2:5, 3:9] = True
    assert segment_extent(mask) == (3, 8, 2, 4, 1, 2)
    assert segment_extent(np.zeros((2, 2, 2), bool)) == (0, -1, 0, -1, 0, -1)


def test_seg_nrrd_header_and_voxels_read_back(tmp_path: Path):
    import nrrd

    image = oblique_label_map()
    path = write_slicer_segmentation(image, STRUCTURES, tmp_path / "case_seg.seg.nrrd")
    data, header = nrrd.read(str(path), index_order="C")
    np.testing.assert_array_equal(data, sitk.GetArrayFromImage(image))
    assert header["space"] == "left-posterior-superior"
    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert header["Segmentation_SourceRepresentation"] == "Binary labelmap"
    segments = {
        header[f"Segment{i}_Name"]: {
            key: header[f"Segment{i}_{key}"]
            for key in ("ID", "Color", "LabelValue", "Layer", "Extent", "Tags")
        }
        for i in range(3)
    }
    assert "Segment3_Name" not in header
    assert {n: int(s["LabelValue"]) for n, s in segments.items()} == STRUCTURES
    assert {s["Layer"] for s in segments.values()} == {"0"}
    assert len({s["ID"] for s in segments.values()}) == 3
    assert segments["humerus"]["Extent"] == "3 8 2 4 1 2"
    assert segments["scapula"]["Extent"] == "0 1 7 7 4 4"
    assert segments["glenoid_physis"]["Extent"] == "0 -1 0 -1 0 -1"
    humerus = [float(v) for v in segments["humerus"]["Color"].split()]
    np.testing.assert_allclose(humerus, np.asarray(KNOWN_COLORS["humerus"]) / 255, atol=1e-5)
    assert "~SCT^85050009^Humerus~" in segments["humerus"]["Tags"]
    assert "~SCT^79601000^Scapula~" in segments["scapula"]["Tags"]
    assert "~SCT^91723000^Anatomical Structure~" in segments["glenoid_physis"]["Tags"]
    # the geometry, as ITK reads it
    back = sitk.ReadImage(str(path))
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
