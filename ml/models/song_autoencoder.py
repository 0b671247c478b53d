"""The fingerprint report's (seed 003) autoencoder on 64 × 64 log-mel excerpt images, with its
auxiliary genre classifier on the embedding. The report's encoder is a ResNet18 with a 1024-d
embedding (27 M parameters, 10 h on a GPU); this one is four strided convolutions and a linear
bottleneck of ``embedding_size`` (params.yaml ``song_index``), small enough to train on a CPU in
minutes. The decoder mirrors the encoder with upsampling and convolutions; ``encode`` is the
embedding the song index uses."""

from __future__ import annotations

from torch import Tensor, nn


def _down(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out),
                         nn.ReLU())  # fmt: skip


class SongAutoencoder(nn.Module):
    """(n, 1, 64, 64) in [0, 1] -> embedding (n, embedding_size); decoded back to (n, 1, 64, 64)."""

    def __init__(self, embedding_size: int = 128, n_genres: int = 1, width: int = 16) -> None:
        super().__init__()
        w = width
        self.encoder = nn.Sequential(_down(1, w), _down(w, 2 * w), _down(2 * w, 4 * w), _down(4 * w, 4 * w),
                                     nn.Flatten(), nn.Linear(4 * w * 16, embedding_size))  # fmt: skip
        self.expand = nn.Linear(embedding_size, 4 * w * 16)
        self.decoder = nn.Sequential(_up(4 * w, 4 * w), _up(4 * w, 2 * w), _up(2 * w, w), nn.Upsample(scale_factor=2),
                                     nn.Conv2d(w, 1, 3, padding=1), nn.Sigmoid())  # fmt: skip
        self.classifier = nn.Sequential(nn.Linear(embedding_size, 64), nn.ReLU(), nn.Linear(64, max(1, n_genres)))
        self.width = w

    def encode(self, images: Tensor) -> Tensor:
        return self.encoder(images)

    def decode(self, embedding: Tensor) -> Tensor:
        return self.decoder(self.expand(embedding).view(-1, 4 * self.width, 4, 4))

    def genre(self, embedding: Tensor) -> Tensor:
        return self.classifier(embedding)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        embedding = self.encode(images)
        return self.decode(embedding), self.genre(embedding)
