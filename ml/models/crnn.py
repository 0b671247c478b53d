"""The CRNN of Nasrullah & Zhao ("Music Artist Classification with Convolutional Recurrent Neural
Networks", as replicated in the CRNN and Neural Music Classification reports).

log-mel (batch, n_mels, frames) → batch norm over the frequency bands → 4 × [3×3 convolution
(64, 128, 128, 128 filters), ELU, batch norm, max-pool (2,2) (4,2) (4,2) (4,2), dropout 0.1] →
the remaining time steps through 2 stacked GRUs of 32 units → dropout 0.3 → linear classifier.
The GRU's last output is the clip's embedding (:meth:`CRNN.embed`).
"""

from __future__ import annotations

import torch
from torch import nn


class CRNN(nn.Module):
    def __init__(self, n_classes: int, n_mels: int = 128, filters: tuple[int, ...] = (64, 128, 128, 128),
                 pools: tuple[tuple[int, int], ...] = ((2, 2), (4, 2), (4, 2), (4, 2)), gru_units: int = 32,
                 gru_layers: int = 2, conv_dropout: float = 0.1, dropout: float = 0.3) -> None:  # fmt: skip
        super().__init__()
        if len(filters) != len(pools):
            raise ValueError("crnn: one pool size per convolution block")
        self.frequency_norm = nn.BatchNorm1d(n_mels)
        blocks, channels, bands = [], 1, n_mels
        for width, pool in zip(filters, pools, strict=True):
            blocks += [nn.Conv2d(channels, width, 3, padding=1), nn.ELU(), nn.BatchNorm2d(width),
                       nn.MaxPool2d(pool, ceil_mode=True), nn.Dropout(conv_dropout)]  # fmt: skip
            channels, bands = width, -(-bands // pool[0])
        self.convolutions = nn.Sequential(*blocks)
        self.gru = nn.GRU(channels * bands, gru_units, num_layers=gru_layers, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(gru_units, n_classes)
        self.embedding_size = gru_units

    def embed(self, log_mel: torch.Tensor) -> torch.Tensor:
        """(batch, n_mels, frames) → (batch, gru_units)."""
        x = self.frequency_norm(log_mel).unsqueeze(1)  # (B, 1, mels, frames)
        x = self.convolutions(x)  # (B, C, bands, steps)
        x = x.flatten(1, 2).transpose(1, 2)  # (B, steps, C·bands)
        out, _ = self.gru(x)
        return out[:, -1]

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.embed(log_mel)))
