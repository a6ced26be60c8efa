"""A name (a domain's, a structure's) as a file or folder name."""

from __future__ import annotations


def safe_name(name: str, fallback: str) -> str:
    """``name`` with every character other than letters, digits, ``-``, ``_`` and ``.`` as
    ``_``; ``fallback`` for a name left empty or made of dots only (no ``..`` path)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return safe if safe.strip(".") else fallback


__all__ = ["safe_name"]
