"""How a network computes on this machine: the precision and the memory format.

``precision: auto`` (training and prediction) computes in bfloat16 autocast only where the
device computes bfloat16 natively, else in float32:

- a CPU whose kernels reach AVX512-BF16 or AMX (a bfloat16 matrix unit): measured faster
  there than float32 (BENCHMARKS.md, "Fast on a CPU"); a CPU without them emulates bfloat16
  at an 8-20x slowdown, so ``auto`` never picks it there;
- a CUDA device that supports bfloat16 (float16 autocast on one that does not).

Master weights, optimizer state, BatchNorm statistics and saved weights stay float32: autocast
changes only the dtype an operation computes in. A choice is one of :data:`PRECISIONS`; the
same machine always resolves ``auto`` the same way, so a seed stays deterministic there.

Channels-last (NHWC) is the memory format of every 4D weight and activation when
``channels_last`` is on: oneDNN's convolutions run faster on it on CPUs, cuDNN's under mixed
precision; the numbers computed are the same operations in another order.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

logger = logging.getLogger(__name__)

Precision = Literal["auto", "32", "bf16", "16"]
PRECISIONS: tuple[str, ...] = ("auto", "32", "bf16", "16")

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below AVX512_CORE_BF16: its bfloat16 kernels emulated
_ISAS_WITHOUT_BF16 = {
    "SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
}  # fmt: skip

# Lightning's names of the three trainer precisions
LIGHTNING_PRECISION = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}
_ALIASES = {
    "32": "32", "32-true": "32", "fp32": "32", "float32": "32",
    "bf16": "bf16", "bf16-mixed": "bf16", "bfloat16": "bf16",
    "16": "16", "16-mixed": "16", "fp16": "16", "float16": "16",
    "auto": "auto",
}  # fmt: skip


def canonical(precision: str) -> str:
    """One of :data:`PRECISIONS` for any accepted spelling ("bf16-mixed" -> "bf16")."""
    name = _ALIASES.get(str(precision).strip().lower())
    if name is None:
        raise ValueError(
            f"unknown precision {precision!r}; choose from auto, 32, bf16, 16 (or Lightning's "
            "32-true, bf16-mixed, 16-mixed)"
        )
    return name


def cpu_computes_bf16() -> bool:
    """Whether this CPU's kernels compute bfloat16 natively (AVX512-BF16 or AMX).

    Kernels capped below AVX-512 (``ATEN_CPU_CAPABILITY=default|avx2`` or a
    ``ONEDNN_MAX_CPU_ISA`` below AVX512_CORE_BF16) emulate it, and count as not native.
    """
    if not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        return False
    if not torch.backends.cpu.get_cpu_capability().upper().startswith("AVX512"):
        return False
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").strip().upper()
    return isa not in _ISAS_WITHOUT_BF16


AUTO_DEVICE = "auto"  # CUDA when this machine has it, else the CPU


def torch_device(name: str) -> torch.device:
    """``name`` (``cpu``, ``cuda``, ``cuda:N``, ... or ``auto``: CUDA when available, else the
    CPU) as a torch device, refusing CUDA where there is none."""
    if name == AUTO_DEVICE:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {name!r}: {error}") from None


LIGHTNING_ACCELERATORS = {"cpu": "cpu", "cuda": "gpu", "mps": "mps"}  # torch -> Lightning


def lightning_placement(device: torch.device, devices: int = 1) -> dict:
    """Lightning's ``accelerator`` and ``devices`` for ``device``, in ``devices`` processes
    (``cuda:N``: GPU N alone)."""
    accelerator = LIGHTNING_ACCELERATORS.get(device.type)
    if accelerator is None:
        raise ValueError(f"cannot train on device {str(device)!r}; use --device cpu or cuda")
    if device.index is None:
        return {"accelerator": accelerator, "devices": devices}
    if devices != 1:
        raise ValueError(
            f"--device {device} names one GPU; with --devices {devices} give --device cuda"
        )
    return {"accelerator": accelerator, "devices": [device.index]}


def device_type(device: str | torch.device) -> str:
    """ "cpu" or "cuda" (the type of ``device``: "cuda:1" -> "cuda")."""
    return torch.device(device).type


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """The precision a network computes in on ``device``: "32", "bf16" or "16".

    ``auto``: bfloat16 where the device computes it natively, else float32 (on CUDA without
    bfloat16, float16). An explicit "bf16" is kept (a warning where it is emulated); "16" on a
    CPU falls back to float32 (no CPU float16 autocast is faster than float32).
    """
    name = canonical(precision)
    kind = device_type(device)
    if kind == "cuda":
        if name == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "16"
        return name
    if name == "auto":
        return "bf16" if cpu_computes_bf16() else "32"
    if name == "16":
        logger.info("precision 16 is for GPUs: computing in float32 on the CPU")
        return "32"
    if name == "bf16" and not cpu_computes_bf16():
        logger.warning(
            "precision bf16 on a CPU without native bfloat16 (AVX512-BF16/AMX): emulated, "
            "several times slower than float32; precision auto would choose float32"
        )
    return name


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None: float32, no autocast)."""
    return {"32": None, "bf16": torch.bfloat16, "16": torch.float16}[canonical(precision)]


@contextlib.contextmanager
def computing_in(precision: str, device: str | torch.device) -> Iterator[None]:
    """Autocast to a resolved ``precision`` on ``device`` (nothing for float32)."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type(device), dtype=dtype):
        yield


def memory_format(channels_last: bool) -> torch.memory_format:
    """The 4D memory format: channels-last (NHWC) or PyTorch's default (NCHW)."""
    return torch.channels_last if channels_last else torch.contiguous_format


def to_memory_format(module: nn.Module, channels_last: bool) -> nn.Module:
    """``module`` with every 4D parameter and buffer in the chosen memory format (in place)."""
    return module.to(memory_format=memory_format(channels_last))


def as_memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A 4D batch in the chosen memory format (others unchanged)."""
    if x.dim() != 4:
        return x
    return x.contiguous(memory_format=memory_format(channels_last))


def describe(precision: str, resolved: str, device: str | torch.device = "cpu") -> str:
    """A one-line account of a setting and what it resolved to (:func:`resolve_precision`),
    for logs: "32 (auto: no native bf16 on this CPU)"."""
    if canonical(precision) != "auto":
        return resolved
    if device_type(device) == "cuda":
        return f"{resolved} (auto)"
    why = "native bf16" if resolved == "bf16" else "no native bf16 on this CPU"
    return f"{resolved} (auto: {why})"
