"""A short report of the software and hardware jointseg runs on."""

from __future__ import annotations

import os
import platform


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
