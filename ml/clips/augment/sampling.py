"""Random draws for the augmentation chains: on the generator's device, then moved to the data's
device (so a CPU generator gives the same augmentation on CPU and CUDA); which rows a transform
selects, and writing them back."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# ----------------------------------------------------------------------------------------------
# Random numbers (drawn on the generator's device, then moved to the data's device)
# ----------------------------------------------------------------------------------------------


def _gen_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def _rand(generator: torch.Generator | None, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """Uniform [0, 1) float32 of ``shape`` from ``generator``, on ``device``."""
    return torch.rand(shape, generator=generator, device=_gen_device(generator, device)).to(device)


def _randn(generator: torch.Generator | None, shape: tuple[int, ...], device: torch.device) -> Tensor:
    return torch.randn(shape, generator=generator, device=_gen_device(generator, device)).to(device)


def _uniform(generator: torch.Generator | None, shape: tuple[int, ...], bounds, device: torch.device) -> Tensor:
    low, high = float(bounds[0]), float(bounds[1])
    return _rand(generator, shape, device) * (high - low) + low


def _randint(generator: torch.Generator | None, shape: tuple[int, ...], low, high, device: torch.device) -> Tensor:
    """Integers uniform in [low, high] (inclusive; ``low``/``high`` may be tensors broadcasting to shape)."""
    u = _rand(generator, shape, device)
    span = torch.as_tensor(high, device=device) - torch.as_tensor(low, device=device) + 1
    return (u * span).floor().long().clamp_max(span - 1) + torch.as_tensor(low, device=device).long()


def _per_row(value: float | Tensor, x: Tensor) -> Tensor:
    """A scalar or a [B] tensor as a float32 [B, 1] column on x's device."""
    v = torch.as_tensor(value, dtype=torch.float32, device=x.device)
    return v.reshape(-1, 1).expand(x.shape[0], 1) if v.numel() == 1 else v.reshape(x.shape[0], 1)


# ----------------------------------------------------------------------------------------------
# The chains
# ----------------------------------------------------------------------------------------------


def _select(generator: torch.Generator | None, batch: int, p: float, device: torch.device) -> Tensor | None:
    """Rows (long indices) that apply a transform of probability ``p``; None when p == 0 (nothing drawn)."""
    if p <= 0 or batch == 0:
        return None
    rows = torch.nonzero(_rand(generator, (batch,), device) < p).squeeze(-1)
    return rows if rows.numel() else None


def _apply_rows(x: Tensor, rows: Tensor | None, fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """``fn(x[rows], rows)`` written back into a copy of ``x`` (x itself when no row is selected)."""
    if rows is None:
        return x
    if rows.numel() == x.shape[0]:
        return fn(x, rows)
    out = x.clone()
    out[rows] = fn(x.index_select(0, rows), rows)
    return out
