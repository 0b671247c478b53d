"""The one place that decides where tensors run: CUDA when present, the CPU otherwise.

``compute.device`` in params.yaml (or the ``RECONET_DEVICE`` environment variable, which wins)
may name a device (``cpu``, ``cuda``, ``cuda:1``); ``auto`` picks CUDA when PyTorch sees one.
"""

from __future__ import annotations

import os

import torch


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
