"""Label tables next to a label map: names, values and colours in the formats viewers read.

- ``<case>_seg.json``: ``{"labels": [{"value", "name", "color": [r, g, b]}...]}``
- ``<case>_seg_itksnap.txt``: ITK-SNAP label description file (Segmentation > Import Label
  Descriptions).
- ``<case>_seg.ctbl``: 3D Slicer colour table (Data > Add Data; then pick it as the label map's
  colour node).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jointseg.utils.atomic import atomic_write_json, atomic_write_text

Color = tuple[int, int, int]

# Bones of the paper's joints keep one colour across joints (tibia is in the ankle and the knee).
KNOWN_COLORS: dict[str, Color] = {
    "calcaneus": (230, 159, 0),
    "talus": (86, 180, 233),
    "tibia": (0, 158, 115),
    "femur": (213, 94, 0),
    "fibula": (204, 121, 167),
    "patella": (240, 228, 66),
    "humerus": (0, 114, 178),
    "scapula": (220, 50, 47),
}
PALETTE: tuple[Color, ...] = (
    (228, 26, 28), (55, 126, 184), (77, 175, 74), (152, 78, 163), (255, 127, 0),
    (255, 255, 51), (166, 86, 40), (247, 129, 191), (27, 158, 119), (117, 112, 179),
    (102, 166, 30), (230, 171, 2),
)  # fmt: skip


@dataclass(frozen=True)
class LabelEntry:
    """One structure of a label map."""

    value: int
    name: str
    color: Color


def label_entries(structures: dict[str, int]) -> list[LabelEntry]:
    """Entries for ``structures`` (name -> on-disk value), sorted by value, colours distinct."""
    used: set[Color] = set()
    entries: list[LabelEntry] = []
    spare = iter([c for c in PALETTE if c not in KNOWN_COLORS.values()])
    for name, value in sorted(structures.items(), key=lambda kv: kv[1]):
        color = KNOWN_COLORS.get(name.lower())
        if color is None or color in used:
            color = next(spare, None) or _fallback_color(value)
        used.add(color)
        entries.append(LabelEntry(int(value), name, color))
    return entries


def _fallback_color(value: int) -> Color:
    # Golden-ratio hue walk for label tables larger than the palette.
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((value * 0.618033988749895) % 1.0, 0.75, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def json_table(entries: list[LabelEntry], domain: str | None = None) -> dict:
    """The JSON label table (background included, as value 0)."""
    labels = [{"value": 0, "name": "background", "color": [0, 0, 0]}]
    labels += [{"value": e.value, "name": e.name, "color": list(e.color)} for e in entries]
    table: dict = {"labels": labels}
    if domain is not None:
        table = {"domain": domain, **table}
    return table


def itksnap_table(entries: list[LabelEntry]) -> str:
    """ITK-SNAP label description file text."""
    lines = [
        "################################################",
        "# ITK-SnAP Label Description File",
        "# File format: ",
        "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
        "# Fields: ",
        "#    IDX:   Zero-based index ",
        "#    -R-:   Red color component (0..255)",
        "#    -G-:   Green color component (0..255)",
        "#    -B-:   Blue color component (0..255)",
        "#    -A-:   Label transparency (0.00 .. 1.00)",
        "#    VIS:   Label visibility (0 or 1)",
        "#    MSH:   Label mesh visibility (0 or 1)",
        "#  LABEL:   Label description ",
        "################################################",
        f'{0:>5} {0:>5} {0:>4} {0:>4} {0:>8} {0:>2} {0:>2}    "Clear Label"',
    ]
    for e in entries:
        name = e.name.replace('"', "'")
        r, g, b = e.color
        lines.append(f'{e.value:>5} {r:>5} {g:>4} {b:>4} {1:>8} {1:>2} {1:>2}    "{name}"')
    return "\n".join(lines) + "\n"


def slicer_table(entries: list[LabelEntry], name: str = "jointseg") -> str:
    """3D Slicer colour table text (``.ctbl``): index name r g b a, spaces as underscores."""
    lines = [f"# Color table file {name}", f"# {len(entries) + 1} values", "0 Background 0 0 0 0"]
    for e in entries:
        r, g, b = e.color
        lines.append(f"{e.value} {'_'.join(e.name.split())} {r} {g} {b} 255")
    return "\n".join(lines) + "\n"


def label_table_paths(out_dir: str | Path, case: str) -> dict[str, Path]:
    """Where the three tables of ``case`` go."""
    out_dir = Path(out_dir)
    return {
        "json": out_dir / f"{case}_seg.json",
        "itksnap": out_dir / f"{case}_seg_itksnap.txt",
        "slicer": out_dir / f"{case}_seg.ctbl",
    }


def write_label_tables(
    out_dir: str | Path, case: str, structures: dict[str, int], domain: str | None = None
) -> list[Path]:
    """Write the JSON, ITK-SNAP and Slicer tables of ``case``; returns the paths written."""
    entries = label_entries(structures)
    paths = label_table_paths(out_dir, case)
    atomic_write_json(paths["json"], json_table(entries, domain))
    atomic_write_text(paths["itksnap"], itksnap_table(entries))
    atomic_write_text(paths["slicer"], slicer_table(entries, f"{case}_seg"))
    return list(paths.values())
