"""The manifest of an ONNX export (``onnx.json``): reading it and checking it against a run.

See :mod:`jointseg.inference.export` for the folder's layout.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from jointseg.models.checkpoint import WEIGHTS_FILE
from jointseg.runs import RunError, RunFolder, RunInfo

MANIFEST_FILE = "onnx.json"
FORMAT = "jointseg-onnx"
VERSION = 1


def default_export_folder(run: str | Path) -> Path:
    """``RUN/onnx``: where ``jointseg export`` writes and ``--backend onnxruntime`` looks."""
    return RunFolder(Path(run)).onnx_dir


def weights_digests(run_dir: str | Path, info: RunInfo) -> dict[str, str]:
    """Model name -> SHA-256 of its weights file."""
    digests = {}
    for entry in info.models:
        path = Path(run_dir) / entry.path / WEIGHTS_FILE
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digests[entry.name] = digest.hexdigest()
    return digests


def run_identifier(digests: dict[str, str]) -> str:
    """A short identifier of a run's weights: 16 hex digits of the digests' digest."""
    joined = "".join(f"{name}={digests[name]};" for name in sorted(digests))
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:16]


def read_manifest(folder: str | Path) -> dict:
    """An export folder's manifest; :class:`RunError` naming the folder when absent or bad."""
    path = Path(folder) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(
            f"{folder}: no ONNX export here ({MANIFEST_FILE} missing); "
            "run `jointseg export RUN` first (the packaged model: `jointseg export pretrained "
            "--out DIR`, then predict with --onnx DIR)"
        ) from None
    except (OSError, ValueError) as error:
        raise RunError(f"{path}: unreadable export manifest: {error}") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise RunError(f"{path}: not a {FORMAT} manifest of version {VERSION}")
    return manifest


def check_manifest(manifest: dict, folder: Path, run_dir: str | Path, info: RunInfo) -> None:
    """Refuse an export of other weights, or one missing a domain or a graph file."""
    if manifest.get("weights_sha256") != weights_digests(run_dir, info):
        raise RunError(
            f"{folder}: exported from other weights than {run_dir}'s models; "
            f"export again with `jointseg export {run_dir}`"
        )
    for entry in info.domains:
        item = manifest.get("domains", {}).get(entry.name)
        if item is None or item.get("structures") != dict(entry.structures):
            raise RunError(f"{folder}: the export lacks domain {entry.name!r} of {run_dir}")
        if not (folder / item["file"]).is_file():
            raise RunError(f"{folder}: {item['file']} is missing; export again")


__all__ = [
    "FORMAT",
    "MANIFEST_FILE",
    "VERSION",
    "check_manifest",
    "default_export_folder",
    "read_manifest",
    "run_identifier",
    "weights_digests",
]
