"""The spectrogram half of augmentation: transforms on log-mels ``[B, n_mels, frames]`` in dB and
:class:`SpectrogramAugmenter`, their chain (masks fill with each sample's minimum)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ml.clips.augment.params import SPECTROGRAM_TRANSFORMS, AugmentParams
from ml.clips.augment.sampling import _apply_rows, _randint, _select, _uniform

# ----------------------------------------------------------------------------------------------
# Spectrogram transforms (plain functions; log_mel: [B, n_mels, frames] in dB)
# ----------------------------------------------------------------------------------------------


def _fill_value(log_mel: Tensor, fill: float | Tensor | None) -> Tensor:
    if fill is None:
        return log_mel.amin(dim=(-2, -1), keepdim=True)
    return torch.as_tensor(fill, dtype=log_mel.dtype, device=log_mel.device).reshape(-1, 1, 1)


def brightness(log_mel: Tensor, gain_db: float | Tensor) -> Tensor:
    """Add ``gain_db`` (per row) to the whole log-mel: the clip played louder or softer (RecoNet, p=.4)."""
    return log_mel + torch.as_tensor(gain_db, dtype=log_mel.dtype, device=log_mel.device).reshape(-1, 1, 1)


def time_roll(log_mel: Tensor, shifts: Tensor) -> Tensor:
    """Circular roll of each row along time by ``shifts[b]`` frames (the fingerprint report)."""
    n = log_mel.shape[-1]
    t = torch.arange(n, device=log_mel.device)
    index = torch.remainder(t - shifts.to(log_mel.device).long().reshape(-1, 1), n)
    return log_mel.gather(-1, index.unsqueeze(1).expand_as(log_mel))


def _span_mask(start: Tensor, width: Tensor, size: int) -> Tensor:
    """[B, n, size] booleans: position i is within [start, start + width) of mask (b, j)."""
    i = torch.arange(size, device=start.device)
    return (i >= start.unsqueeze(-1)) & (i < (start + width).unsqueeze(-1))


def mask_rectangles(
    log_mel: Tensor,
    mel_start: Tensor,
    mel_width: Tensor,
    frame_start: Tensor,
    frame_width: Tensor,
    fill: float | Tensor | None = None,
) -> Tensor:
    """Set rectangles to ``fill`` (default: each sample's minimum). Arguments are [B, n] (n rectangles).

    Rectangle (b, j) covers mel bands [mel_start, mel_start + mel_width) and frames
    [frame_start, frame_start + frame_width); a zero width masks nothing.
    """
    n_mels, n_frames = log_mel.shape[-2:]
    mels = _span_mask(mel_start.to(log_mel.device), mel_width.to(log_mel.device), n_mels).float()
    frames = _span_mask(frame_start.to(log_mel.device), frame_width.to(log_mel.device), n_frames).float()
    covered = torch.bmm(mels.transpose(1, 2), frames) > 0  # [B, n_mels, n_frames]
    return torch.where(covered, _fill_value(log_mel, fill), log_mel)


def frequency_mask(log_mel: Tensor, start: Tensor, width: Tensor, fill: float | Tensor | None = None) -> Tensor:
    """SpecAugment frequency masks: mel bands [start, start + width) of every frame set to ``fill``."""
    covered = _span_mask(start.to(log_mel.device), width.to(log_mel.device), log_mel.shape[-2]).any(1)
    return torch.where(covered.unsqueeze(-1), _fill_value(log_mel, fill), log_mel)


def time_mask(log_mel: Tensor, start: Tensor, width: Tensor, fill: float | Tensor | None = None) -> Tensor:
    """SpecAugment time masks: frames [start, start + width) of every mel band set to ``fill``."""
    covered = _span_mask(start.to(log_mel.device), width.to(log_mel.device), log_mel.shape[-1]).any(1)
    return torch.where(covered.unsqueeze(-2), _fill_value(log_mel, fill), log_mel)


def draw_rectangles(
    generator: torch.Generator | None,
    batch: int,
    n_rects: int,
    size: tuple[int, int],
    mel_fraction: tuple[float, float],
    frame_fraction: tuple[float, float],
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random rectangles inside a (n_mels, frames) image: ``(mel_start, mel_width, frame_start, frame_width)``.

    Each side is round(fraction·size) (at least 1) with the fraction uniform in its range; the rectangle
    lies wholly inside the image, its position uniform. All four are [batch, n_rects] long tensors.
    """
    out = []
    for extent, fraction in zip(size, (mel_fraction, frame_fraction), strict=True):
        width = (_uniform(generator, (batch, n_rects), fraction, device) * extent).round().long().clamp(1, extent)
        start = _randint(generator, (batch, n_rects), 0, extent - width, device)
        out += [start, width]
    return out[0], out[1], out[2], out[3]


class SpectrogramAugmenter:
    """The spectrogram chain (:data:`SPECTROGRAM_TRANSFORMS`, in that order) on log-mels [B, n_mels, frames].

    ``SpectrogramAugmenter(params)(log_mel, generator)``; masks fill with each sample's minimum.
    """

    def __init__(self, params: AugmentParams | Mapping[str, Any] | None = None):
        self.params = params if isinstance(params, AugmentParams) else AugmentParams.from_params(params)

    def __call__(self, log_mel: Tensor, generator: torch.Generator) -> Tensor:
        _check_log_mel(log_mel)
        for name in SPECTROGRAM_TRANSFORMS:
            log_mel = self._run(name, log_mel, generator, getattr(self.params, name).p)
        return log_mel

    def apply(self, name: str, log_mel: Tensor, generator: torch.Generator, p: float | None = None) -> Tensor:
        """Apply the one transform ``name`` alone, with its configured ``p`` or the given one (1: every row)."""
        if name not in SPECTROGRAM_TRANSFORMS:
            raise ValueError(f"unknown spectrogram transform {name!r}; known: {', '.join(SPECTROGRAM_TRANSFORMS)}")
        _check_log_mel(log_mel)
        return self._run(name, log_mel, generator, getattr(self.params, name).p if p is None else p)

    def _run(self, name: str, log_mel: Tensor, g: torch.Generator, p: float) -> Tensor:
        rows = _select(g, log_mel.shape[0], p, log_mel.device)
        if rows is None:
            return log_mel
        return getattr(self, "_" + name)(log_mel, rows, g)

    def _brightness(self, log_mel: Tensor, rows: Tensor, g: torch.Generator) -> Tensor:
        gain = _uniform(g, (rows.numel(),), self.params.brightness.gain_db, log_mel.device)
        return _apply_rows(log_mel, rows, lambda x, _: brightness(x, gain))

    def _time_roll(self, log_mel: Tensor, rows: Tensor, g: torch.Generator) -> Tensor:
        limit = math.floor(self.params.time_roll.max_fraction * log_mel.shape[-1])
        shifts = _randint(g, (rows.numel(),), -limit, limit, log_mel.device)
        return _apply_rows(log_mel, rows, lambda x, _: time_roll(x, shifts))

    def _spans(
        self, g: torch.Generator, n: int, n_masks: int, max_width: int, size: int, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """SpecAugment spans: width uniform in 0..max_width, start uniform where the span fits."""
        width = _randint(g, (n, n_masks), 0, min(max_width, size), device)
        start = _randint(g, (n, n_masks), 0, size - width, device)
        return start, width

    def _frequency_mask(self, log_mel: Tensor, rows: Tensor, g: torch.Generator) -> Tensor:
        prm = self.params.frequency_mask
        start, width = self._spans(g, rows.numel(), prm.n_masks, prm.max_width, log_mel.shape[-2], log_mel.device)
        return _apply_rows(log_mel, rows, lambda x, _: frequency_mask(x, start, width))

    def _time_mask(self, log_mel: Tensor, rows: Tensor, g: torch.Generator) -> Tensor:
        prm = self.params.time_mask
        start, width = self._spans(g, rows.numel(), prm.n_masks, prm.max_width, log_mel.shape[-1], log_mel.device)
        return _apply_rows(log_mel, rows, lambda x, _: time_mask(x, start, width))

    def _cutout(self, log_mel: Tensor, rows: Tensor, g: torch.Generator) -> Tensor:
        prm = self.params.cutout
        rects = draw_rectangles(
            g,
            rows.numel(),
            prm.n_rects,
            tuple(log_mel.shape[-2:]),
            prm.mel_fraction,
            prm.frame_fraction,
            log_mel.device,
        )
        return _apply_rows(log_mel, rows, lambda x, _: mask_rectangles(x, *rects))

    def _coarse_dropout(self, log_mel: Tensor, rows: Tensor, g: torch.Generator) -> Tensor:
        prm, n = self.params.coarse_dropout, rows.numel()
        count = _randint(g, (n, 1), prm.count[0], prm.count[1], log_mel.device)
        mel_start, mel_width, frame_start, frame_width = draw_rectangles(
            g,
            n,
            max(prm.count[1], 1),
            tuple(log_mel.shape[-2:]),
            prm.mel_fraction,
            prm.frame_fraction,
            log_mel.device,
        )
        keep = torch.arange(mel_width.shape[1], device=log_mel.device) < count  # the first `count` rectangles
        mel_width = mel_width * keep
        return _apply_rows(
            log_mel, rows, lambda x, _: mask_rectangles(x, mel_start, mel_width, frame_start, frame_width)
        )


def _check_log_mel(log_mel: Tensor) -> None:
    if log_mel.ndim != 3:
        raise ValueError(f"log_mel must be [batch, n_mels, frames], got shape {tuple(log_mel.shape)}")
