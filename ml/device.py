"""The one place that decides where tensors run and in which precision the networks compute.

``compute.device`` in params.yaml (or the ``RECONET_DEVICE`` environment variable, which wins)
may name a device (``cpu``, ``cuda``, ``cuda:1``); ``auto`` picks CUDA when PyTorch sees one.

``compute.precision`` (or ``RECONET_PRECISION``, which wins): ``fp32``, ``bf16`` or ``auto``.
``auto`` is bfloat16 on a CPU with bfloat16 units (``avx512_bf16`` or ``amx_bf16`` among its
flags, :func:`cpu_bf16_flags`), float16 on CUDA where the stage asks for it (``separation.half_precision``,
``train.mixed_precision``), float32 everywhere else. Reduced precision means ``torch.autocast``:
weights stay float32 (training keeps float32 master weights), the convolutions and matrix
products run in the reduced type.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo: bfloat16 dot products (AVX-512, AMX)
NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def pick_device(preference: str | None = None) -> torch.device:
    """The device to run on: ``RECONET_DEVICE``, else ``preference``, else ``auto``."""
    choice = (os.environ.get("RECONET_DEVICE") or preference or "auto").strip().lower()
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(choice)
    except RuntimeError:
        raise ValueError(f"unknown device {choice!r} (compute.device / RECONET_DEVICE): auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {choice!r} asked for (compute.device / RECONET_DEVICE) but CUDA is not available")
    return device


def device_from_params(params: dict) -> torch.device:
    return pick_device(params.get("compute", {}).get("device"))


@functools.cache
def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """The CPU's bfloat16 flags (of :data:`BF16_CPU_FLAGS`); empty on a CPU without them or where
    ``/proc/cpuinfo`` is absent. The only place that reads the CPU's capability (tests replace it)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return tuple(f for f in BF16_CPU_FLAGS if f in flags)


def cpu_capability() -> str:
    """What the benchmarks report: torch's CPU capability and the bfloat16 flags, e.g. ``AVX512, avx512_bf16``."""
    flags = cpu_bf16_flags()
    return f"{torch.backends.cpu.get_cpu_capability()}, " + (", ".join(flags) if flags else "no bfloat16 units")


def precision_choice(preference: str | None = None) -> str:
    """What was asked for, one of :data:`PRECISIONS`: ``RECONET_PRECISION``, else ``preference``
    (``compute.precision``), else ``auto``."""
    choice = (os.environ.get("RECONET_PRECISION") or preference or "auto").strip().lower()
    if choice not in PRECISIONS:
        raise ValueError(f"unknown precision {choice!r} (compute.precision / RECONET_PRECISION): "
                         f"{', '.join(PRECISIONS)}")  # fmt: skip
    return choice


def pick_precision(device: torch.device | str, preference: str | None = None, cuda_half: bool = False) -> torch.dtype:
    """The type the networks compute in on ``device`` for :func:`precision_choice`'s answer.
    ``cuda_half``: the stage's own float16 switch, which ``auto`` follows on CUDA."""
    device = torch.device(device)
    choice = precision_choice(preference)
    if choice == "fp32":
        return torch.float32
    if choice == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise RuntimeError(f"precision bf16 asked for (compute.precision / RECONET_PRECISION) but {device} "
                               "has no bfloat16 support")  # fmt: skip
        return torch.bfloat16
    if device.type == "cuda":
        return torch.float16 if cuda_half else torch.float32
    return torch.bfloat16 if device.type == "cpu" and cpu_bf16_flags() else torch.float32


def precision_from_params(params: dict, device: torch.device | str, cuda_half: bool = False) -> torch.dtype:
    return pick_precision(device, params.get("compute", {}).get("precision"), cuda_half)


def precision_name(dtype: torch.dtype) -> str:
    """``fp32``, ``bf16`` or ``fp16``: how caches, run identities and reports name a precision."""
    return NAMES[dtype]


def precision_dtype(name: str) -> torch.dtype:
    """The inverse of :func:`precision_name`."""
    return {n: dtype for dtype, n in NAMES.items()}[name]


def autocast(device: torch.device | str, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``; nothing at float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
