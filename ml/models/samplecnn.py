"""Seed 002's sample-level CNN on the raw waveform (Lee et al., "Sample-level Deep Convolutional
Neural Networks for Music Auto-tagging Using Raw Waveforms", as the seed's artist-recognition
report uses it).

A 3^10 = 59,049-sample segment (3.69 s at 16 kHz) → a strided convolution (kernel 3, stride 3,
``first_filters``) + batch norm + ReLU → 9 blocks of [convolution 3 (padded), batch norm, ReLU,
max-pool 3] (``filters``; the seed's model 1: 64, 128 × 6, 256 × 2) down to one step → dense
(``hidden`` units, tanh: the segment's embedding, :meth:`SampleCNN.embed`) → dropout → linear
classifier.

While training, a random 59,049-sample crop of every clip (each clip its own start); at evaluation
the clip is covered by evenly spaced crops (3 for a 10 s clip at 16 kHz, overlapping) and its
embedding is the mean of theirs, so its scores are the mean of the crops' scores (the classifier is
linear). A clip shorter than a segment is padded with silence.

``song_lstm`` (the seed's recurrent variant, at song level): evaluation also trains an LSTM over
each training song's clip embeddings, in order, and reports its song-level figures beside the mean
of the clips' probabilities (``ml/training/song_head.py``); it is not part of the network.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class SampleCNN(nn.Module):
    needs_audio = True

    def __init__(self, n_classes: int, n_mels: int = 128, first_filters: int = 64,
                 filters: tuple[int, ...] = (64, 128, 128, 128, 128, 128, 128, 256, 256), hidden: int = 512,
                 dropout: float = 0.5, segment_samples: int = 59049,
                 song_lstm: dict[str, Any] | None = None) -> None:  # fmt: skip
        # n_mels: the project's log-mel bands, passed to every model; this one reads the waveform
        super().__init__()
        if segment_samples != 3 ** (len(filters) + 1):
            raise ValueError(f"samplecnn: segment_samples must be 3^(blocks + 1) = {3 ** (len(filters) + 1)} for "
                             f"{len(filters)} blocks (the strided layer and each block divide by 3), "
                             f"not {segment_samples}")  # fmt: skip
        self.segment_samples = segment_samples
        layers: list[nn.Module] = [nn.Conv1d(1, first_filters, 3, stride=3), nn.BatchNorm1d(first_filters), nn.ReLU()]
        channels = first_filters
        for width in filters:
            layers += [nn.Conv1d(channels, width, 3, padding=1), nn.BatchNorm1d(width), nn.ReLU(), nn.MaxPool1d(3)]
            channels = width
        self.convolutions = nn.Sequential(*layers)
        self.dense = nn.Sequential(nn.Linear(channels, hidden), nn.Tanh())
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, n_classes)
        self.embedding_size = hidden
        self.song_lstm = dict(song_lstm) if song_lstm else None

    def segments(self, audio: torch.Tensor) -> torch.Tensor:
        """(batch, samples) → (batch, crops, segment_samples): one random crop per clip while
        training; evenly spaced crops covering the clip otherwise."""
        size = self.segment_samples
        if audio.shape[1] < size:
            audio = nn.functional.pad(audio, (0, size - audio.shape[1]))
        room = audio.shape[1] - size
        if self.training:
            starts = torch.randint(0, room + 1, (audio.shape[0], 1), device=audio.device)
        else:
            crops = -(-audio.shape[1] // size)
            starts = torch.linspace(0, room, crops, device=audio.device).round().long().expand(audio.shape[0], -1)
        index = starts.unsqueeze(-1) + torch.arange(size, device=audio.device)  # (batch, crops, size)
        return audio.unsqueeze(1).expand(-1, starts.shape[1], -1).gather(2, index)

    def embed(self, log_mel: torch.Tensor | None = None, audio: torch.Tensor | None = None) -> torch.Tensor:
        """The clip's embedding, (batch, hidden): the mean of its crops' dense layer."""
        if audio is None:
            raise ValueError("the samplecnn model needs the raw clip")
        crops = self.segments(audio.float())
        batch, n = crops.shape[:2]
        x = self.convolutions(crops.reshape(batch * n, 1, -1)).squeeze(-1)  # (batch·crops, channels)
        return self.dense(x).reshape(batch, n, -1).mean(dim=1)

    def forward(self, log_mel: torch.Tensor | None = None, audio: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.dropout(self.embed(log_mel, audio)))
