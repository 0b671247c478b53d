"""Seed 001's ResNet-50 + RNN: the first three stages of ResNet-50 on the log-mel, then 2 stacked GRUs.

log-mel (batch, n_mels, frames) → batch norm over the bands → ResNet-50's stem (7×7 convolution,
stride 2, on the one-channel log-mel; batch norm, ReLU, 3×3 max-pool, stride 2) → its stages
``layer1``…``layer3`` (3, 4, 6 bottleneck blocks of 64, 128, 256 → ×4 channels; strides 1, 2, 2:
torchvision's ResNet-50 v1.5, written out here so that no torchvision is needed) → the mean over
the remaining frequency bands → GRUs over the remaining time steps (1/16 of the frames) → the last
output (the clip's embedding, :meth:`ResNetGRU.embed`) → dropout → linear classifier.

``width_divisor`` divides every stage's width (1: ResNet-50's; 4: a sixteenth of its
multiply-adds, for a CPU) and ``blocks`` sets the bottleneck blocks per stage.
"""

from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck: 1×1, 3×3 (the stride), 1×1 to ``width × 4``; a projected
    shortcut where the shape changes; ReLU after the sum."""

    expansion = 4

    def __init__(self, channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out = width * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(channels, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or channels != out:
            self.downsample = nn.Sequential(nn.Conv2d(channels, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + shortcut)


class ResNetGRU(nn.Module):
    def __init__(self, n_classes: int, n_mels: int = 128, width_divisor: int = 1, blocks: tuple[int, ...] = (3, 4, 6),
                 gru_units: int = 32, gru_layers: int = 2, dropout: float = 0.3) -> None:  # fmt: skip
        super().__init__()
        if width_divisor < 1 or 64 % width_divisor:
            raise ValueError(f"resnet_gru.width_divisor must divide 64 (1, 2, 4, 8...), not {width_divisor}")
        if len(blocks) != 3 or min(blocks) < 1:
            raise ValueError(f"resnet_gru.blocks: the bottleneck blocks of stages 1-3, three counts >= 1, not {blocks}")
        self.frequency_norm = nn.BatchNorm1d(n_mels)
        stem = 64 // width_divisor
        self.stem = nn.Sequential(nn.Conv2d(1, stem, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(stem),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))  # fmt: skip
        stages, channels = [], stem
        for count, width, stride in zip(blocks, (64, 128, 256), (1, 2, 2), strict=True):
            width //= width_divisor
            layers = []
            for i in range(count):
                layers.append(Bottleneck(channels, width, stride if i == 0 else 1))
                channels = width * Bottleneck.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.gru = nn.GRU(channels, gru_units, num_layers=gru_layers, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(gru_units, n_classes)
        self.embedding_size = gru_units
        for m in self.modules():  # torchvision's ResNet initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def embed(self, log_mel: torch.Tensor) -> torch.Tensor:
        """(batch, n_mels, frames) → (batch, gru_units)."""
        x = self.frequency_norm(log_mel).unsqueeze(1)  # (B, 1, mels, frames)
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))  # (B, C, mels / 16, frames / 16)
        out, _ = self.gru(x.mean(dim=2).transpose(1, 2))  # (B, steps, C) → (B, steps, units)
        return out[:, -1]

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.embed(log_mel)))
