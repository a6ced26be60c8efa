"""Run a benchmark script's measurement in a fresh Python process and read back its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run_json_child(script: str | Path, spec: dict, what: str, tail: int = 3000) -> dict:
    """``python SCRIPT --child JSON(spec)``; the last stdout line parsed as JSON.

    Raises RuntimeError naming ``what`` with the end of stderr when the child fails.
    """
    result = subprocess.run(
        [sys.executable, str(script), "--child", json.dumps(spec)],
        capture_output=True, text=True, encoding="utf-8", check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{result.stderr[-tail:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
