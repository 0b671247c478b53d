"""RecoNet's dual model — proposed in the RecoNet report, never built there.

Two branches look at the same clip and meet before the classifier:

* a DenseNet-style CNN on the log-mel (dense blocks of 3×3 convolutions, each layer seeing every
  earlier layer's maps; transitions halve the resolution), average-pooled to an embedding;
* a WaveNet-style stack on the raw waveform: a strided front end, then residual blocks of gated
  dilated 1-D convolutions (tanh · sigmoid, dilations 1, 2, 4, …) whose skip outputs are summed,
  average-pooled to an embedding.

The two embeddings are concatenated (the clip's embedding, :meth:`ReconetDual.embed`), then
dropout and a linear classifier. With ``voice_embedding`` a third, frozen branch joins them: the
clip's pretrained GE2E d-vector (``ml.models.voice_branch.FrozenVoiceEncoder``), scaled by √256 so
that its entries are of the order of the other branches' (a unit vector's are about 0.06). Widths
and depths are configurable; the defaults train on two CPU cores at demo scale.
"""

from __future__ import annotations

import torch
from torch import nn


class _DenseLayer(nn.Module):
    def __init__(self, channels: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, growth, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


class DenseNetBranch(nn.Module):
    def __init__(self, stem: int = 16, growth: int = 12, layers: tuple[int, ...] = (3, 3, 3)) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(1, stem, 3, padding=1), nn.MaxPool2d(2)]
        channels = stem
        for i, n in enumerate(layers):
            for _ in range(n):
                blocks.append(_DenseLayer(channels, growth))
                channels += growth
            if i < len(layers) - 1:  # transition: compress by half, halve the resolution
                blocks += [nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels // 2, 1), nn.AvgPool2d(2)]
                channels //= 2
        blocks += [nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*blocks)
        self.out_features = channels

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        return self.net(log_mel.unsqueeze(1))


class _GatedResidual(nn.Module):
    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.filter = nn.Conv1d(channels, channels, 3, dilation=dilation, padding=dilation)
        self.gate = nn.Conv1d(channels, channels, 3, dilation=dilation, padding=dilation)
        self.residual = nn.Conv1d(channels, channels, 1)
        self.skip = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.filter(x)) * torch.sigmoid(self.gate(x))
        return x + self.residual(h), self.skip(h)


class WaveNetBranch(nn.Module):
    def __init__(self, channels: int = 32, stacks: int = 2, layers_per_stack: int = 6, stride: int = 64) -> None:
        super().__init__()
        # strided front end: 16 kHz → 250 steps per second (stride 64) before the dilated stack
        self.front = nn.Sequential(nn.Conv1d(1, channels, 2 * stride, stride=stride, padding=stride // 2),
                                   nn.BatchNorm1d(channels), nn.ReLU())  # fmt: skip
        self.blocks = nn.ModuleList(
            _GatedResidual(channels, 2**i) for _ in range(stacks) for i in range(layers_per_stack)
        )
        self.out = nn.Sequential(nn.ReLU(), nn.Conv1d(channels, channels, 1), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
                                 nn.Flatten())  # fmt: skip
        self.out_features = channels

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = self.front(audio.unsqueeze(1))
        skips = 0
        for block in self.blocks:
            x, skip = block(x)
            skips = skips + skip
        return self.out(skips)


class ReconetDual(nn.Module):
    needs_audio = True

    def __init__(self, n_classes: int, n_mels: int = 128, stem: int = 16, growth: int = 12,
                 dense_layers: tuple[int, ...] = (3, 3, 3), wave_channels: int = 32, wave_stacks: int = 2,
                 wave_layers: int = 6, wave_stride: int = 64, dropout: float = 0.3,
                 voice_embedding: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.input_norm = nn.BatchNorm1d(n_mels)
        self.spectrogram = DenseNetBranch(stem, growth, dense_layers)
        self.waveform = WaveNetBranch(wave_channels, wave_stacks, wave_layers, wave_stride)
        self.embedding_size = self.spectrogram.out_features + self.waveform.out_features
        if voice_embedding:
            from ml.models.voice_branch import FrozenVoiceEncoder

            self.voice = FrozenVoiceEncoder()
            self.embedding_size += self.voice.embedding_size
        else:
            self.voice = None
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.embedding_size, n_classes)

    def embed(self, log_mel: torch.Tensor, audio: torch.Tensor | None = None) -> torch.Tensor:
        if audio is None:
            raise ValueError("the reconet model needs the raw clip as well as its log-mel")
        branches = [self.spectrogram(self.input_norm(log_mel)), self.waveform(audio)]
        if self.voice is not None:
            branches.append(self.voice(audio).to(branches[0].dtype) * self.voice.embedding_size**0.5)
        return torch.cat(branches, dim=1)

    def forward(self, log_mel: torch.Tensor, audio: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.dropout(self.embed(log_mel, audio)))
