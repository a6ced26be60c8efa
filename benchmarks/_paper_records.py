"""Finished cells' records, kept apart from the benchmark's output folder.

A cell's run folder holds checkpoints and caches (tens of MB); what the report and a rerun read
of a finished cell is a few small text files. ``save_cell``/``save_nnunet`` copy those into a
records folder (``paper.py --records DIR``, small enough to keep in git) as each cell finishes;
``restore`` copies them back into an output folder that lacks them, so that a benchmark run in
pieces continues from its finished cells on another machine or after its output folder is lost
(the study and the fold views are rebuilt from the seed). The output folder's path is written
as ``${OUT}`` in the records and put back on restore.

Layout of DIR mirrors the output folder::

    DIR/cv/fold_0/full/{cell.json, config.yaml, run.json, evaluation/metrics.csv,
                        logs/<network>/metrics.csv}
    DIR/cv/fold_0/nnunet/{train,predict}_<variant>_<dataset>.json, scores_<variant>_<dataset>.csv
"""

from __future__ import annotations

import logging
from pathlib import Path

from jointseg.utils.atomic import atomic_write_text

log = logging.getLogger(__name__)

CELL_FILE = "cell.json"
CELL_RECORD = ("config.yaml", "run.json", "evaluation/metrics.csv", "logs/*/metrics.csv")
NNUNET_PREFIXES = ("train_", "predict_", "scores_")  # + <variant>_<dataset>.json/.csv
OUT_TOKEN = "${OUT}"


def _copy(source: Path, target: Path, old: str, new: str) -> None:
    text = source.read_text(encoding="utf-8")
    atomic_write_text(target, text.replace(old, new))


def save_cell(out: Path, run: Path, records: Path) -> bool:
    """Copy a finished cell's record (``cell.json`` last) into ``records``; False when the
    cell is not finished."""
    if not (run / CELL_FILE).is_file():
        return False
    target = records / run.relative_to(out)
    root = str(out.resolve())
    for pattern in CELL_RECORD:
        for source in sorted(run.glob(pattern)):
            _copy(source, target / source.relative_to(run), root, OUT_TOKEN)
    _copy(run / CELL_FILE, target / CELL_FILE, root, OUT_TOKEN)
    return True


def _nnunet_networks(folder: Path) -> list[str]:
    """The ``<variant>_<dataset>`` networks of an nnU-Net folder that are trained, predicted
    and scored."""
    names = {p.stem.removeprefix("train_") for p in folder.glob("train_*.json")}
    return sorted(
        n
        for n in names
        if (folder / f"predict_{n}.json").is_file() and (folder / f"scores_{n}.csv").is_file()
    )


def _nnunet_files(folder: Path, network: str) -> list[Path]:
    # scores last: a network's record is complete once its scores are there
    return [
        folder / f"train_{network}.json",
        folder / f"predict_{network}.json",
        folder / f"scores_{network}.csv",
    ]


def save_nnunet(out: Path, folder: Path, records: Path) -> list[str]:
    """Copy the records of a fold's finished nnU-Net networks into ``records``; returns their
    names (``<variant>_<dataset>``)."""
    root = str(out.resolve())
    target = records / folder.relative_to(out)
    done = _nnunet_networks(folder)
    for network in done:
        for source in _nnunet_files(folder, network):
            _copy(source, target / source.name, root, OUT_TOKEN)
    return done


def save_all(out: Path, records: Path) -> int:
    """Copy every finished cell and nnU-Net network of ``out`` into ``records``; returns how
    many."""
    count = 0
    for record in sorted(out.rglob(CELL_FILE)):
        count += save_cell(out, record.parent, records)
    for folder in sorted(out.glob("cv/fold_*/nnunet")):
        count += len(save_nnunet(out, folder, records))
    return count


def restore(records: Path, out: Path) -> list[Path]:
    """Copy into ``out`` the records of the cells and nnU-Net networks that ``out`` has not
    finished (an interrupted run there is replaced by the finished record); returns the cell
    folders and nnU-Net networks restored."""
    if not records.is_dir():
        return []
    root = str(out.resolve())
    restored: list[Path] = []
    for record in sorted(records.rglob(CELL_FILE)):
        source_run = record.parent
        run = out / source_run.relative_to(records)
        if (run / CELL_FILE).is_file():
            continue
        for pattern in CELL_RECORD:
            for source in sorted(source_run.glob(pattern)):
                _copy(source, run / source.relative_to(source_run), OUT_TOKEN, root)
        _copy(record, run / CELL_FILE, OUT_TOKEN, root)
        restored.append(run)
    for source_folder in sorted(records.glob("cv/fold_*/nnunet")):
        folder = out / source_folder.relative_to(records)
        finished = set(_nnunet_networks(folder)) if folder.is_dir() else set()
        for network in _nnunet_networks(source_folder):
            if network in finished:
                continue
            for source in _nnunet_files(source_folder, network):
                _copy(source, folder / source.name, OUT_TOKEN, root)
            restored.append(folder / network)
    if restored:
        log.info("restored %d finished cells and networks from %s", len(restored), records)
    return restored
