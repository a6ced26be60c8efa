"""nnU-Net v2 as a peer of the benchmarks: its own virtualenv, driven through its command line.

``NnUNet.find(install=True)`` runs ``benchmarks/nnunet_env.sh`` (creating
``benchmarks/.nnunet-venv`` on first use, and copying the short-budget trainer
``nnunet_budget_trainer.py`` into it as ``nnUNetTrainerBudget``), then checks that nnU-Net's
own trainer lookup finds that trainer. On any failure it returns ``(None, reason)`` so that a
benchmark can print why its nnU-Net rows were skipped and carry on with jointseg alone.

The trainer reads its budget from environment variables (see nnunet_budget_trainer.py):
``NNUNET_BUDGET_ITERATIONS`` per epoch, ``NNUNET_BUDGET_EPOCHS``, ``NNUNET_BUDGET_SECONDS``
(wall-clock cap of the training loop) or ``NNUNET_BUDGET_CPU_SECONDS`` (the same in CPU seconds),
``NNUNET_BUDGET_VAL_ITERATIONS``, ``NNUNET_BUDGET_PLATEAU_PATIENCE``, ``NNUNET_BUDGET_THREADS``;
:meth:`NnUNet.train` passes a budget key ``k`` as ``NNUNET_BUDGET_<K>``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
VENV = Path(os.environ.get("NNUNET_VENV", HERE / ".nnunet-venv"))
SCRIPT = HERE / "nnunet_env.sh"
TRAINER = "nnUNetTrainerBudget"

_LOOKUP_CHECK = f"""
import os
import nnunetv2
from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
folder = os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer")
cls = recursive_find_python_class(folder, "{TRAINER}", "nnunetv2.training.nnUNetTrainer")
assert cls is not None, "trainer not found"
import importlib.metadata as m
print(m.version("nnunetv2"), m.version("torch"))
"""


class TreeMemory:
    """Peak summed RSS of a process and its descendants, and the largest single process,
    sampled every ``interval`` seconds while the process runs."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_total = 0
        self.peak_single = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            total = 0
            try:
                processes = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            for process in processes:
                try:
                    rss = process.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                self.peak_single = max(self.peak_single, rss)
            self.peak_total = max(self.peak_total, total)
            time.sleep(self.interval)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class NnUNet:
    """nnU-Net's commands with their three folders (raw, preprocessed, results) under ``root``."""

    def __init__(self, venv: Path, root: Path, version: str, threads: int | None = None) -> None:
        self.venv = Path(venv)
        self.root = Path(root)
        self.version = version
        self.raw = self.root / "nnUNet_raw"
        self.preprocessed = self.root / "nnUNet_preprocessed"
        self.results = self.root / "nnUNet_results"
        for folder in (self.raw, self.preprocessed, self.results):
            folder.mkdir(parents=True, exist_ok=True)
        self.threads = threads or os.cpu_count() or 1

    @classmethod
    def find(
        cls, root: Path, install: bool = True, setup: bool = True
    ) -> tuple[NnUNet | None, str]:
        """The nnU-Net of ``benchmarks/.nnunet-venv`` (installed when ``install``), or
        ``(None, reason)``. ``setup`` runs ``nnunet_env.sh``, which also copies the budget
        trainer; without it (processes started by one that did) the venv is only checked."""
        if not (VENV / "bin" / "nnUNetv2_train").exists() and not install:
            return None, f"{VENV} does not exist (run: bash {SCRIPT.relative_to(HERE.parent)})"
        try:
            if setup:
                subprocess.run(
                    ["bash", str(SCRIPT)], check=True, capture_output=True, text=True,
                    encoding="utf-8", env={**os.environ, "NNUNET_VENV": str(VENV)}, timeout=3600,
                )  # fmt: skip
        except subprocess.CalledProcessError as error:
            return None, f"{SCRIPT.name} failed: {error.stderr.strip()[-600:]}"
        except (OSError, subprocess.TimeoutExpired) as error:
            return None, f"{SCRIPT.name} failed: {error}"
        check = subprocess.run(
            [str(VENV / "bin" / "python"), "-c", _LOOKUP_CHECK],
            capture_output=True,
            text=True,
            encoding="utf-8",
        )
        if check.returncode != 0:
            return None, "nnU-Net's trainer lookup failed: " + check.stderr.strip()[-600:]
        version = check.stdout.strip().splitlines()[-1]
        return cls(VENV, root, version), ""

    # -- environment and commands --------------------------------------------------------
    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            **os.environ,
            "nnUNet_raw": str(self.raw),
            "nnUNet_preprocessed": str(self.preprocessed),
            "nnUNet_results": str(self.results),
            "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "1"),
            "nnUNet_compile": "false",
            "PATH": f"{self.venv / 'bin'}:{os.environ.get('PATH', '')}",
        }
        env.pop("PYTHONPATH", None)
        env.update(extra or {})
        return env

    def run(
        self, args: list[str], log: Path, extra_env: dict[str, str] | None = None
    ) -> dict[str, float]:
        """Run an nnU-Net command, output to ``log``; returns wall seconds and peak memory (MB):
        ``peak_total_mb`` (the process tree's summed RSS, sampled) and ``peak_single_mb`` (the
        largest single process, sampled)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        command = [str(self.venv / "bin" / args[0]), *args[1:]]
        started = time.perf_counter()
        with log.open("w", encoding="utf-8") as handle:
            handle.write("$ " + " ".join(args) + "\n")
            handle.flush()
            process = subprocess.Popen(
                command, stdout=handle, stderr=subprocess.STDOUT, env=self.env(extra_env)
            )
            with TreeMemory(process.pid) as memory:
                code = process.wait()
        seconds = time.perf_counter() - started
        if code != 0:
            tail = log.read_text(encoding="utf-8", errors="replace")[-1500:]
            raise RuntimeError(f"{' '.join(args)} failed (exit {code}), see {log}:\n{tail}")
        return {
            "seconds": seconds,
            "peak_total_mb": memory.peak_total / 2**20,
            "peak_single_mb": memory.peak_single / 2**20,
        }

    # -- datasets ------------------------------------------------------------------------
    def add_dataset(self, folder: Path) -> int:
        """Link a dataset folder (``DatasetNNN_Name``, nnU-Net's raw layout) under nnUNet_raw;
        returns its id."""
        folder = Path(folder).resolve()
        target = self.raw / folder.name
        if target.is_symlink() or target.exists():
            if target.resolve() != folder:
                raise RuntimeError(f"{target} already links to {target.resolve()}")
        else:
            target.symlink_to(folder, target_is_directory=True)
        return int(folder.name.split("_")[0][len("Dataset") :])

    def dataset_name(self, dataset_id: int) -> str:
        prefix = f"Dataset{dataset_id:03d}_"
        names = [p.name for p in self.raw.iterdir() if p.name.startswith(prefix)]
        if len(names) != 1:
            raise RuntimeError(f"dataset {dataset_id}: found {names} in {self.raw}")
        return names[0]

    def plan_and_preprocess(self, ids: list[int], log: Path, extra: list[str] = ()) -> dict:
        """``nnUNetv2_plan_and_preprocess -c 2d`` for ``ids``; returns each dataset's 2d plan."""
        self.run(
            ["nnUNetv2_plan_and_preprocess", "-d", *map(str, ids), "-c", "2d",
             "-np", str(self.threads), "-npfp", str(self.threads), *extra],
            log,
        )  # fmt: skip
        return {i: self.plan_2d(i) for i in ids}

    def plan_2d(self, dataset_id: int, plans: str = "nnUNetPlans") -> dict:
        path = self.preprocessed / self.dataset_name(dataset_id) / f"{plans}.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        config = data["configurations"]["2d"]
        arch = config["architecture"]["arch_kwargs"]
        return {
            "patch_size": config["patch_size"],
            "batch_size": config["batch_size"],
            "spacing": config["spacing"],
            "n_stages": arch["n_stages"],
            "features_per_stage": arch["features_per_stage"],
        }

    def write_splits(self, dataset_id: int, train: list[str], validation: list[str]) -> None:
        """Fold 0 of nnU-Net's splits_final.json = the given training/validation cases."""
        path = self.preprocessed / self.dataset_name(dataset_id) / "splits_final.json"
        splits = [{"train": list(train), "val": list(validation)}]
        path.write_text(json.dumps(splits, indent=1), encoding="utf-8")

    def train(
        self,
        dataset_id: int,
        log: Path,
        budget: dict[str, float | int],
        device: str = "cpu",
        plans: str = "nnUNetPlans",
    ) -> dict:
        """Train fold 0 of the 2d configuration of ``plans`` with nnUNetTrainerBudget; returns
        the trainer's budget.json plus the command's wall seconds and memory."""
        env = {f"NNUNET_BUDGET_{k.upper()}": str(v) for k, v in budget.items()}
        # augmentation in the training process, so that its CPU time counts in a CPU budget
        # (0 would break planning, which sets torch's threads from it)
        env["nnUNet_n_proc_DA"] = "0"
        stats = self.run(
            ["nnUNetv2_train", str(dataset_id), "2d", "0", "-tr", TRAINER, "-device", device,
             "-p", plans],
            log, env,
        )  # fmt: skip
        folder = self.model_folder(dataset_id, plans) / "fold_0"
        record = json.loads((folder / "budget.json").read_text(encoding="utf-8"))
        return {
            **record,
            "command_seconds": stats["seconds"],
            "peak_total_mb": stats["peak_total_mb"],
            "peak_single_mb": stats["peak_single_mb"],
        }

    def model_folder(self, dataset_id: int, plans: str = "nnUNetPlans") -> Path:
        return self.results / self.dataset_name(dataset_id) / f"{TRAINER}__{plans}__2d"

    def predict(
        self, dataset_id: int, images: Path, out: Path, log: Path, mirroring: bool = True,
        checkpoint: str = "checkpoint_final.pth", device: str = "cpu",
        plans: str = "nnUNetPlans",
    ) -> dict[str, float]:  # fmt: skip
        """``nnUNetv2_predict -device DEVICE -npp 1 -nps 1`` of a folder of ``*_0000``
        images."""
        if out.exists():
            shutil.rmtree(out)
        args = ["nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", str(dataset_id),
                "-c", "2d", "-f", "0", "-tr", TRAINER, "-chk", checkpoint,
                "-device", device, "-npp", "1", "-nps", "1", "-p", plans]  # fmt: skip
        if not mirroring:
            args.append("--disable_tta")
        return self.run(args, log)
