"""The union label space: local <-> union lookups, and the one decoding of a shared head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jointseg.data.labels import DomainLabels, LabelSpace, lookup_table
from jointseg.models.network import domain_labels, domain_logits

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


def test_a_shared_head_is_decoded_over_the_domains_own_channels():
    """Union logits [1, 4, 1, 4] (background, femur, tibia, humerus) decoded for the knee.

    Pixel 0: humerus (foreign) is largest; among the knee's channels femur (2) beats tibia (1)
    and background (0): femur, where an argmax over every channel would give background.
    Pixel 1: tibia. Pixel 2: background. Pixel 3: humerus largest, background next: background.
    """
    columns = [[0.0, 2.0, 1.0, 3.0], [0.0, 1.0, 2.0, -1.0], [5.0, 1.0, 2.0, 0.0], [1, 0, 0, 3]]
    logits = torch.tensor(columns).T.reshape(1, 4, 1, 4)
    knee = SPACE.union_channels("knee")
    assert domain_labels(logits, knee).tolist() == [[[1, 2, 0, 0]]]
    # the shoulder's local classes: 0 background, 1 humerus, 2 tibia
    assert domain_labels(logits, SPACE.union_channels("shoulder")).tolist() == [[[1, 2, 0, 1]]]
    assert domain_logits(logits, knee).shape == (1, 3, 1, 4)
    assert domain_logits(logits, None) is logits  # a domain's own head
