"""Batches for training and evaluation, read from the packed clips or the cached log-mels.

A :class:`SegmentDataset` serves whole batches at once (``__getitems__``): the rows of a batch are
gathered from memory-mapped files in one vectorised read per file, so a PyTorch ``DataLoader``
needs no worker processes to keep up. Two sources:

* ``audio``: raw clips (float32, and the matching accompaniment for remix augmentation) — the
  training loop augments them on the device and computes log-mels there (:func:`model_input`);
* ``features``: the cached float16 log-mels, when augmentation is off (evaluation, fast runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler, WeightedRandomSampler

from ml.clips.segmentation import PackedRows

SOURCES = ("audio", "features")


@dataclass
class Batch:
    labels: torch.Tensor  # (B,) int64 class indices
    rows: torch.Tensor  # (B,) positions in the dataset's table
    audio: torch.Tensor | None = None  # (B, samples) float32 vocal clips
    accompaniment: torch.Tensor | None = None  # (B, samples) float32, same stretches of the accompaniment
    log_mel: torch.Tensor | None = None  # (B, n_mels, frames) float16 cached log-mels


class SegmentDataset(Dataset):
    """The segments of a table (rows of the `segments` table, joined with `features` for the
    ``features`` source), labelled by ``classes`` (e.g. artist names, in class-index order)."""

    def __init__(self, segments: pa.Table, data_dir: Path, classes: Sequence[str], source: str = "audio",
                 label_column: str = "artist", with_accompaniment: bool = True) -> None:  # fmt: skip
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, not {source!r}")
        index = {name: i for i, name in enumerate(classes)}
        names = segments.column(label_column).to_pylist()
        unknown = sorted({n for n in names if n not in index}, key=str)
        if unknown:
            raise ValueError(f"segments of unknown {label_column}: {unknown[:5]}")
        self.table = segments
        self.classes = list(classes)
        self.source = source
        self.labels = torch.tensor([index[n] for n in names], dtype=torch.int64)
        if source == "audio":
            self.audio = PackedRows.from_table(segments, data_dir)
            self.accompaniment = (
                PackedRows.from_table(segments, data_dir, column="accompaniment_file") if with_accompaniment else None
            )
        else:
            if "feature_file" not in segments.column_names:
                raise ValueError("the features source needs the segments joined with the `features` table")
            self.features = PackedRows.from_table(segments, data_dir, column="feature_file", row="feature_row")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        rows = np.asarray(indices, dtype=np.int64)
        batch = Batch(labels=self.labels[rows], rows=torch.from_numpy(rows))
        if self.source == "audio":
            batch.audio = torch.from_numpy(self.audio.take(rows).astype(np.float32) / 32767)
            if self.accompaniment is not None:
                batch.accompaniment = torch.from_numpy(self.accompaniment.take(rows).astype(np.float32) / 32767)
        else:
            batch.log_mel = torch.from_numpy(self.features.take(rows))
        return batch

    def __getitem__(self, index: int) -> Batch:
        return self.__getitems__([index])

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=len(self.classes))


def make_loader(dataset: SegmentDataset, batch_size: int, shuffle: bool = False, balanced: bool = False,
                seed: int = 0, drop_last: bool = False) -> DataLoader:  # fmt: skip
    """A DataLoader of whole batches. ``balanced`` draws rows with probability inversely
    proportional to their class's size (with replacement: an epoch is ``len(dataset)`` rows)."""
    generator = torch.Generator().manual_seed(seed)
    if balanced:
        counts = dataset.class_counts().clamp_min(1).double()
        weights = (1.0 / counts)[dataset.labels]
        sampler = WeightedRandomSampler(weights, num_samples=len(dataset), replacement=True, generator=generator)
    elif shuffle:
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      collate_fn=lambda batch: batch)  # fmt: skip


def model_input(batch: Batch, device: torch.device, log_mel: torch.nn.Module | None = None,
                audio_augment=None, spectrogram_augment=None, generator: torch.Generator | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """The batch on ``device`` as (log-mels, clips): raw clips → (audio augmentation) → log-mel
    there, or the cached log-mels (clips: None); then (spectrogram augmentation)."""
    audio = None
    if batch.log_mel is not None:
        x = batch.log_mel.to(device, non_blocking=True).float()
    else:
        if log_mel is None:
            raise ValueError("raw clips need a log-mel module (ml.clips.features.LogMel)")
        audio = batch.audio.to(device, non_blocking=True)
        if audio_augment is not None:
            accompaniment = batch.accompaniment.to(device) if batch.accompaniment is not None else None
            audio = audio_augment(audio, generator, accompaniment=accompaniment)
        x = log_mel(audio)
    if spectrogram_augment is not None:
        x = spectrogram_augment(x, generator)
    return x, audio
