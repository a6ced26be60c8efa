"""A short report of the software and hardware jointseg runs on."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def environment_report() -> str:
    """Versions of jointseg and its main libraries, devices and thread counts."""
    import monai
    import SimpleITK as sitk
    import torch

    from jointseg._version import __version__
    from jointseg.utils.compute import describe, resolve_precision

    lines = [
        f"jointseg   {__version__}",
        f"python     {platform.python_version()} ({platform.machine()})",
        f"torch      {torch.__version__}",
        f"monai      {monai.__version__}",
        f"SimpleITK  {sitk.Version_VersionString()}",
        f"threads    torch {torch.get_num_threads()}, cpus {os.cpu_count()}",
        f"cpu        {torch.backends.cpu.get_cpu_capability()} kernels, "
        f"precision auto -> {describe('auto', resolve_precision('auto', 'cpu'), 'cpu')}",
    ]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            lines.append(f"device     cuda:{index} {torch.cuda.get_device_name(index)}")
    else:
        lines.append("device     cpu (no CUDA device found)")
    return "\n".join(lines)


def cpu_description() -> dict:
    """The CPU's name, kernels and bfloat16 support, as the figures' caption."""
    import torch

    from jointseg.utils.compute import cpu_computes_bf16

    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": name,
        "kernels": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
        "amx": bool(torch.cpu._is_amx_tile_supported()),
        "native_bf16": cpu_computes_bf16(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
