"""``jointseg init``: a commented training config for the datasets a study folder holds.

The config starts from a shipped one (``demo``: minutes on a CPU; ``paper``: the paper's scale,
for a GPU; ``pretrained``: the shipped model's recipe) and replaces its datasets and scheme with
the study's: one entry per dataset folder (``Dataset005_KneeT1`` -> domain ``knee_t1``), and the
scheme that suits their number (:func:`recommended_scheme`). A header lists what was found and
the commands that come next. The file is validated as a config before it is written, atomically,
and an existing file is kept unless ``force``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from jointseg.config import SHIPPED_CONFIGS, config_from_dict, shipped_config_text
from jointseg.data.checks import dataset_folders
from jointseg.data.manifest import domain_name_of, list_cases, load_manifest
from jointseg.utils.atomic import atomic_write_text

CONFIG_FILE = "jointseg.yaml"  # written into the study folder unless told otherwise
KNOWN_JOINTS = ("ankle", "knee", "shoulder", "elbow")  # the shipped model's domains


@dataclass(frozen=True)
class FoundDataset:
    """A dataset folder of the study: its domain name, structures and case counts."""

    name: str
    folder: str
    structures: dict[str, int]
    training: int
    held_out: int

    def line(self) -> str:
        return (
            f"{self.name}: {self.folder}, {self.training} training and {self.held_out} held-out "
            f"cases; {', '.join(self.structures)}"
        )


def find_datasets(data: str | Path) -> list[FoundDataset]:
    """Every dataset folder under ``data`` (or ``data`` itself), named uniquely."""
    found: list[FoundDataset] = []
    for folder in dataset_folders(data):
        manifest = load_manifest(folder)
        name = base = domain_name_of(folder)
        index = 2
        while name in {f.name for f in found}:
            name, index = f"{base}_{index}", index + 1
        found.append(
            FoundDataset(
                name,
                folder.name,
                manifest.structures,
                len(list_cases(folder, "train")),
                len(list_cases(folder, "test")),
            )  # fmt: skip
        )
    return found


def recommended_scheme(data: Path, datasets: list[FoundDataset]) -> tuple[str, list[str]]:
    """The scheme for this many datasets and the comment lines that say why."""
    if len(datasets) != 1:
        return "full", [
            f"{len(datasets)} datasets: one network over all of them (`full`: shared convolutions,",
            "domain-specific BN, one head per dataset, contrastive term and shape prior).",
            "`jointseg ablate` trains the schemes: below to compare; `individual` (one network",
            "per dataset) is the baseline to beat.",
        ]
    only = datasets[0]
    known = f", which knows the {only.name}" if only.name in KNOWN_JOINTS else ""
    return "individual", [
        "One dataset: nothing to share, so one network for it (`individual`). Two other",
        "starts for few labelled scans (docs/own-data.md):",
        f"- adapt the shipped model{known}, with your site as a new domain:",
        f"    jointseg adapt pretrained --dataset {data / only.folder} --name "
        f"{only.name}_site --out runs/adapted",
        "- or mix in synthetic joints: jointseg synth --out SYNTH --joints ankle,shoulder; copy",
        "  its Dataset folders next to yours (folder numbers distinct from yours), list them",
        "  under datasets: and train `full` (`transfer` needs a second dataset as well).",
    ]


def _replace_block(lines: list[str], key: str, block: list[str]) -> list[str]:
    """``lines`` with the top-level ``key``'s block (its line and the indented lines under it)
    replaced by ``block``."""
    start = next((i for i, line in enumerate(lines) if line.startswith(f"{key}:")), None)
    if start is None:
        return block + lines
    end = start + 1
    while end < len(lines) and (lines[end].startswith((" ", "-")) or not lines[end].strip()):
        end += 1
    return lines[:start] + block + lines[end:]


def config_text(data: Path, datasets: list[FoundDataset], base: str, path: Path) -> str:
    """The commented YAML text of the config to be written to ``path`` (see the module
    docstring)."""
    scheme, why = recommended_scheme(data, datasets)
    lines = shipped_config_text(base).splitlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)  # the shipped config's own header
    entries = ["datasets:"] + [f"  - {{name: {d.name}, folder: {d.folder}}}" for d in datasets]
    lines = _replace_block(lines, "name", [f"name: {data.resolve().name or 'study'}"])
    lines = _replace_block(lines, "datasets", entries)
    lines = _replace_block(lines, "scheme", [*(f"# {w}" for w in why), f"scheme: {scheme}"])
    header = [
        f"# jointseg training config for the datasets in {data} (written by `jointseg init`,",
        f"# starting from the shipped `{base}` config; every key: docs/training.md).",
        "# Found:",
        *(f"#   {d.line()}" for d in datasets),
        "# Next:",
        f"#   jointseg check {data}",
        f"#   jointseg train --config {path} --data {data} --out runs/{scheme}",
        f"#   jointseg evaluate runs/{scheme}    (held-out cases in imagesTs/labelsTs; or "
        "`jointseg cv`)",
        f"#   jointseg predict runs/{scheme} scan.nii.gz --out pred/",
        "",
    ]
    return "\n".join(header + lines) + "\n"


def write_init_config(
    data: str | Path, out: str | Path | None = None, base: str = "demo", force: bool = False
) -> tuple[Path, list[FoundDataset], str]:
    """Write the config for ``data``'s datasets to ``out`` (default ``DATA/jointseg.yaml``);
    returns (path, datasets found, scheme). Raises ``FileExistsError`` for an existing file
    without ``force``, ``ValueError`` for an unknown ``base``."""
    if base not in SHIPPED_CONFIGS:
        raise ValueError(f"--base {base!r}: choose one of {', '.join(SHIPPED_CONFIGS)}")
    data = Path(data)
    datasets = find_datasets(data)
    path = Path(out) if out is not None else data / CONFIG_FILE
    if path.exists() and not force:
        raise FileExistsError(f"{path}: exists; --force replaces it")
    text = config_text(data, datasets, base, path)
    config = config_from_dict(yaml.safe_load(text), str(path))  # what train will read
    atomic_write_text(path, text)
    return path, datasets, config.scheme


__all__ = [
    "CONFIG_FILE",
    "FoundDataset",
    "config_text",
    "find_datasets",
    "recommended_scheme",
    "write_init_config",
]
