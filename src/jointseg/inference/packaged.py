"""The model that ships with the package, and the word ``pretrained`` that names it.

A packed run folder (written by :func:`jointseg.workflows.pretrained.pack_run`) lives as package
data in ``jointseg/pretrained/model/``; the environment variable ``JOINTSEG_PRETRAINED`` names
another folder instead (tests, a model packed elsewhere). Every command that takes a run folder
takes the word (``jointseg predict pretrained SCAN``, ``evaluate``, ``postprocess``, ``export``,
``adapt``): :func:`resolve_run` is the one place it is resolved. The packaged model is read,
never written: a command that writes into its run folder needs ``--out`` for it
(:func:`output_folder`). An installation whose package holds no packed model says so, with the
command that trains and packs one.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

from jointseg.runs import RunError, RunFolder

PRETRAINED = "pretrained"  # the word that names the packaged model where a run folder goes
PRETRAINED_ENV = "JOINTSEG_PRETRAINED"
PACKAGE_FOLDER = ("pretrained", "model")  # under the jointseg package
TRAIN_COMMAND = "make pretrained"  # in a checkout; benchmarks/pretrained.py --help for its pieces


class PretrainedModelMissing(RunError):
    """The package holds no pretrained model (none was trained and packed into it yet)."""


def packaged_run_dir() -> Path:
    """The packed run folder: ``$JOINTSEG_PRETRAINED``, else ``jointseg/pretrained/model``."""
    override = os.environ.get(PRETRAINED_ENV)
    if override:
        return Path(override)
    return Path(str(files("jointseg").joinpath(*PACKAGE_FOLDER)))


def has_packaged_model(folder: Path | None = None) -> bool:
    """Whether ``folder`` (default: :func:`packaged_run_dir`) holds a packed run."""
    return RunFolder(folder or packaged_run_dir()).is_run()


def resolve_run(run: str | Path) -> Path:
    """The run folder ``run`` names: the packed model for the word ``pretrained`` (unless a run
    folder of that name is in the working directory), else ``run`` itself.

    Raises :class:`PretrainedModelMissing` when the word names a model the package lacks.
    """
    if str(run) != PRETRAINED or RunFolder(Path(run)).is_run():
        return Path(run)
    folder = packaged_run_dir()
    if not has_packaged_model(folder):
        raise PretrainedModelMissing(
            f"no pretrained model in this installation ({folder} holds no {RunFolder.INDEX}): none "
            f"has been trained and packed yet. Train and pack it from a checkout of jointseg "
            f"with `{TRAIN_COMMAND}` (hours on a CPU; resumable: `python benchmarks/pretrained.py "
            f"--max-minutes 60` continues where it stopped), or give a run folder of your own "
            "(`jointseg train`)"
        )
    return folder


def is_packaged(folder: str | Path) -> bool:
    """Whether ``folder`` is the packaged model's folder (the package's own, or
    ``$JOINTSEG_PRETRAINED``): read-only for every command."""
    here = Path(folder).resolve()
    package = Path(str(files("jointseg").joinpath(*PACKAGE_FOLDER))).resolve()
    return here in (packaged_run_dir().resolve(), package)


def output_folder(run: str | Path, out: str | Path | None, default: str, what: str) -> Path:
    """Where a command writes ``what`` it makes of the run ``run`` (a folder or the word
    ``pretrained``): ``out`` when given, else ``RUN/default`` (``default`` "": the run folder).

    Raises :class:`~jointseg.runs.RunError`, naming ``--out``, for the packaged model without
    ``out``: it lives inside the installed package, which no command writes into.
    """
    if out is not None:
        return Path(out)
    folder = resolve_run(run)
    if is_packaged(folder):
        raise RunError(
            f"{run!s}: the packaged model ({folder}) is read-only: it ships inside the "
            f"installed package; give --out FOLDER for the {what}"
        )
    return folder / default if default else folder


__all__ = [
    "PRETRAINED",
    "PRETRAINED_ENV",
    "TRAIN_COMMAND",
    "PretrainedModelMissing",
    "has_packaged_model",
    "is_packaged",
    "output_folder",
    "packaged_run_dir",
    "resolve_run",
]
