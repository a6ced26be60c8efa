"""Readable listings of state-dict keys for load errors."""

from __future__ import annotations

import re
from collections.abc import Iterable

_DOMAIN = re.compile(r"\.bns\.\d+(?=\.|$)")


def layers_of(keys: Iterable[str]) -> list[str]:
    """The layers owning ``keys`` in first-seen order (``bn.bns.3.weight`` -> ``bn.bns.*``)."""
    layers: dict[str, None] = {}
    for key in keys:
        layer = key.rsplit(".", 1)[0] if "." in key else key
        layers[_DOMAIN.sub(".bns.*", layer)] = None
    return list(layers)


def key_listing(title: str, items: list[str], limit: int = 20) -> list[str]:
    """Lines ``title (n):`` then up to ``limit`` indented items and a count of the rest."""
    if not items:
        return []
    lines = [f"  {title} ({len(items)}):"] + [f"    {item}" for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"    ... and {len(items) - limit} more")
    return lines


def mismatch_report(
    header: str, mismatched: list[str], missing: list[str], unexpected: list[str]
) -> str:
    """One message naming mismatched shapes, and the layers with missing or unexpected keys."""
    lines = [header]
    lines += key_listing("mismatched shapes", mismatched)
    lines += key_listing(
        f"layers missing from the source ({len(missing)} keys)", layers_of(missing)
    )
    lines += key_listing(
        f"unexpected layers in the source ({len(unexpected)} keys)", layers_of(unexpected)
    )
    if any(".bns." in k for k in missing) != any(".bns." in k for k in unexpected):
        lines.append(
            "  hint: one side has domain-specific batch normalization (.bns.*), the other not"
        )
    return "\n".join(lines)
