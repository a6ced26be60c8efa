"""Sections of BENCHMARKS.md that a benchmark fills: the text between ``<!-- NAME:begin -->``
and ``<!-- NAME:end -->``."""

from __future__ import annotations

from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    """The begin and end markers of section ``name``."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def update_section(page: Path, name: str, text: str) -> None:
    """Replace what lies between the markers of section ``name`` of ``page`` with ``text``
    (atomically); a page without the section is refused, naming it."""
    from jointseg.utils.atomic import atomic_write_text

    begin_marker, end_marker = markers(name)
    content = page.read_text(encoding="utf-8")
    begin, end = content.find(begin_marker), content.find(end_marker)
    if begin < 0 or end < begin:
        raise ValueError(f"{page}: no '{begin_marker}' ... '{end_marker}' section to fill")
    head = content[: begin + len(begin_marker)]
    atomic_write_text(page, head + "\n" + text.strip() + "\n" + content[end:])
