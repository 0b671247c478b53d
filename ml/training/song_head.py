"""A song-level head over the clip embeddings of a trained segment model: the seed 002 report's
recurrent variant, measured against the mean of the clips' probabilities.

Each song is the sequence of its clips' embeddings in the order they start; an LSTM reads it and a
linear layer on its last state names the artist. It is trained (Adam, full batch, a fixed number of
epochs, seeded) on the training songs' sequences after the segment model has been trained, and
evaluated on the test songs. ``samplecnn``'s ``song_lstm`` option asks for it
(``ml/training/model_run.py``: ``evaluate_and_log``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence

from ml import config
from ml.training.evaluation import Predictions, _scores


@dataclass(frozen=True)
class SongLSTMParams:
    units: int = 128
    epochs: int = 100
    learning_rate: float = 0.003
    seed: int = 0

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> SongLSTMParams:
        return cls(**config.section({"models.samplecnn.song_lstm": options}, "models.samplecnn.song_lstm", cls))


def song_sequences(pred: Predictions, starts: Sequence[float]) -> tuple[list[np.ndarray], np.ndarray]:
    """Per song (in order of first appearance): its clips' embeddings ordered by start time, and its label."""
    if len(starts) != len(pred.track_ids):
        raise ValueError(f"{len(starts)} clip start times for {len(pred.track_ids)} clips")
    rows: dict[str, list[int]] = defaultdict(list)
    for i, track in enumerate(pred.track_ids):
        rows[track].append(i)
    sequences, labels = [], []
    for indices in rows.values():
        ordered = sorted(indices, key=lambda i: starts[i])
        sequences.append(pred.embeddings[ordered].astype(np.float32))
        labels.append(int(pred.labels[ordered[0]]))
    return sequences, np.array(labels, dtype=np.int64)


class SongLSTM(nn.Module):
    def __init__(self, embedding_size: int, n_classes: int, units: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(embedding_size, units, batch_first=True)
        self.classifier = nn.Linear(units, n_classes)

    def forward(self, sequences: list[torch.Tensor]) -> torch.Tensor:
        _, (state, _) = self.lstm(pack_sequence(sequences, enforce_sorted=False))
        return self.classifier(state[-1])


def fit_song_lstm(sequences: list[np.ndarray], labels: np.ndarray, n_classes: int,
                  settings: SongLSTMParams) -> SongLSTM:  # fmt: skip
    """The head trained on the training songs (full batch, cross-entropy)."""
    if not sequences:
        raise ValueError("the song LSTM needs training songs")
    torch.manual_seed(settings.seed)
    head = SongLSTM(sequences[0].shape[1], n_classes, settings.units)
    optimiser = torch.optim.Adam(head.parameters(), lr=settings.learning_rate)
    inputs, targets = [torch.from_numpy(s) for s in sequences], torch.from_numpy(labels)
    head.train()
    for _ in range(settings.epochs):
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(head(inputs), targets)
        loss.backward()
        optimiser.step()
    return head.eval()


@torch.inference_mode()
def song_probabilities(head: SongLSTM, sequences: list[np.ndarray]) -> np.ndarray:
    if not sequences:
        return np.zeros((0, head.classifier.out_features), np.float32)
    return torch.softmax(head([torch.from_numpy(s) for s in sequences]), dim=1).numpy()


def song_lstm_scores(train: Predictions, train_starts: Sequence[float], test: Predictions,
                     test_starts: Sequence[float], options: dict[str, Any]) -> dict[str, float]:  # fmt: skip
    """The head trained on ``train``'s songs and scored on ``test``'s (accuracy, macro and weighted
    precision, recall, F1, count, the macro true-artist probability: as evaluation's song levels)."""
    sequences, labels = song_sequences(train, train_starts)
    head = fit_song_lstm(sequences, labels, len(train.classes), SongLSTMParams.from_options(options))
    test_sequences, truth = song_sequences(test, test_starts)
    probabilities = song_probabilities(head, test_sequences)
    return _scores(truth, probabilities.argmax(axis=1), probabilities, len(train.classes))
