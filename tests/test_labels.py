"""The union label space: local <-> union lookups."""

from __future__ import annotations

import numpy as np
import pytest

from jointseg.data.labels import DomainLabels, LabelSpace, lookup_table

KNEE = DomainLabels("knee", {"femur": 1, "tibia": 2})
SHOULDER = DomainLabels("shoulder", {"humerus": 3, "tibia": 7})
# union: 0 background, 1 femur, 2 tibia, 3 humerus
SPACE = LabelSpace([KNEE, SHOULDER])


def test_local_and_union_lookups():
    assert SPACE.union_channels("knee") == (0, 1, 2)
    assert SPACE.union_channels("shoulder") == (0, 3, 2)
    assert SPACE.union_to_local(1).tolist() == [0, 0, 2, 1]  # femur is foreign to the shoulder
    table = SPACE.local_to_union_table(["shoulder", "knee"])
    assert table.tolist() == [[0, 3, 2], [0, 1, 2]]


def test_head_to_union_per_domain_heads_and_one_union_head():
    heads = SPACE.head_to_union(["shoulder", "knee"], union_head=False)
    assert {h: m.tolist() for h, m in heads.items()} == {0: [0, 3, 2], 1: [0, 1, 2]}
    assert SPACE.head_to_union(["knee", "shoulder"], union_head=True)[0].tolist() == [0, 1, 2, 3]


def test_lookup_table_pads_rows_and_follows_mapping_keys():
    table = lookup_table({2: [0, 5], 0: [0, 1, 2]}, fill=-1)
    assert table.tolist() == [[0, 1, 2], [-1, -1, -1], [0, 5, -1]]


def test_masks_to_union_and_a_class_beyond_the_domain():
    masks = np.array([[[0, 1], [2, 1]]])
    assert SPACE.masks_to_union(masks, 1).tolist() == [[[0, 3], [2, 3]]]
    assert SPACE.masks_to_union(masks, 1).dtype == np.uint8
    with pytest.raises(ValueError, match="'knee': mask class 3 beyond its 3 local classes"):
        SPACE.masks_to_union(np.array([[[3]]]), 0)
