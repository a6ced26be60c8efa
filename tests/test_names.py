"""Names as file names: one rule for meshes, ONNX graphs and adapted models."""

from __future__ import annotations

import pytest

from jointseg.utils.names import safe_name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("femur", "femur"),
        ("knee_t1", "knee_t1"),
        ("femur (left)", "femur__left_"),
        ("a/b", "a_b"),
        ("v1.2-x", "v1.2-x"),
        ("", "domain"),
        ("..", "domain"),
    ],
)
def test_safe_name_keeps_letters_digits_and_dashes(name, expected):
    assert safe_name(name, "domain") == expected
