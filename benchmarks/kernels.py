"""Run one command under several emulated CPUs: PyTorch's and oneDNN's kernel choices, threads.

PyTorch picks its CPU kernels from ``ATEN_CPU_CAPABILITY`` (default, avx2, avx512) and oneDNN
from ``ONEDNN_MAX_CPU_ISA`` (SSE41, AVX2, AVX512_CORE, ...); a trained model's numbers follow
them. A setting above what this CPU has is skipped (PyTorch would fall back silently).

    python benchmarks/kernels.py -- python -m pytest -q tests/test_predict.py
    python benchmarks/kernels.py --threads 1 2 -- python benchmarks/fixture_margins.py --seeds 0 1

Each run's exit status and wall time are printed; the exit status is 1 when any run failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

# (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA): what an old x86, an AVX2 and an AVX-512 CPU use.
SETTINGS = (("default", "SSE41"), ("avx2", "AVX2"), ("avx512", "AVX512_CORE"))


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def supported(capability: str, flags: set[str]) -> bool:
    needs = {"default": set(), "avx2": {"avx2", "fma"}, "avx512": {"avx512f", "avx512bw"}}
    return needs[capability] <= flags


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("command", nargs=argparse.REMAINDER, help="after --: the command")
    args = parser.parse_args()
    command = [c for c in args.command if c != "--"] or [sys.executable, "-m", "pytest", "-q"]
    flags = cpu_flags()
    results = []
    for capability, isa in SETTINGS:
        if not supported(capability, flags):
            print(f"skipped: {capability}/{isa} (this CPU lacks it)", flush=True)
            continue
        for threads in args.threads:
            env = dict(os.environ)
            env.update(
                ATEN_CPU_CAPABILITY=capability,
                ONEDNN_MAX_CPU_ISA=isa,
                OMP_NUM_THREADS=str(threads),
                JOINTSEG_TEST_THREADS=str(threads),
            )
            label = f"ATEN_CPU_CAPABILITY={capability} ONEDNN_MAX_CPU_ISA={isa} threads={threads}"
            print(f"=== {label}", flush=True)
            start = time.perf_counter()
            code = subprocess.call(command, env=env)
            seconds = time.perf_counter() - start
            results.append((label, code, seconds))
            print(f"=== {label}: exit {code} in {seconds:.0f} s", flush=True)
    print("\nsummary")
    for label, code, seconds in results:
        print(f"  {'ok  ' if code == 0 else 'FAIL'} {label} ({seconds:.0f} s)")
    return int(any(code for _, code, _ in results))


if __name__ == "__main__":
    sys.exit(main())
