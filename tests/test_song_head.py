"""The song-level LSTM over clip embeddings (samplecnn's song_lstm): it reads each song's clips in
the order they start, so it tells apart songs that the mean of their clips cannot."""

import numpy as np
import pytest

from ml.training.evaluation import Predictions, song_level
from ml.training.song_head import SongLSTMParams, song_lstm_scores, song_sequences


def _songs(seed: int, songs_per_artist: int = 6):
    """Two artists whose songs hold the same two clip embeddings, A then B or B then A: the same
    mean, told apart only by their order. The rows are shuffled; ``start_s`` gives the order."""
    rng = np.random.default_rng(seed)
    a, b = np.array([1.0, 0.0, 0.5]), np.array([0.0, 1.0, -0.5])
    rows = []
    for artist, order in ((0, (a, b)), (1, (b, a))):
        for s in range(songs_per_artist):
            start = rng.uniform(0, 100)
            for k, vector in enumerate(order):
                rows.append((f"{seed}-{artist}-{s}", artist, start + 10 * k, vector + 0.05 * rng.standard_normal(3)))
    rows = [rows[i] for i in rng.permutation(len(rows))]
    embeddings = np.stack([r[3] for r in rows]).astype(np.float32)
    labels = np.array([r[1] for r in rows])
    probabilities = np.full((len(rows), 2), 0.5)  # the segment model cannot tell them apart either
    pred = Predictions(probabilities, embeddings, labels, [r[0] for r in rows], [None] * len(rows), ["X", "Y"])
    return pred, [r[2] for r in rows]


def test_song_sequences_order_each_songs_clips_by_start():
    pred, starts = _songs(0)
    sequences, labels = song_sequences(pred, starts)
    assert len(sequences) == 12 and sorted(labels.tolist()) == [0] * 6 + [1] * 6
    for sequence, label in zip(sequences, labels, strict=True):
        first = sequence[0]
        assert (first[0] > first[1]) == (label == 0)  # artist 0's songs open with A
    with pytest.raises(ValueError, match="start times"):
        song_sequences(pred, starts[:-1])


def test_the_song_lstm_tells_apart_songs_whose_clip_mean_is_the_same():
    train, train_starts = _songs(0)
    test, test_starts = _songs(1)
    scores = song_lstm_scores(train, train_starts, test, test_starts, {"units": 8, "epochs": 150})
    assert scores["count"] == 12 and scores["accuracy"] == 1.0 and scores["macro_f1"] == 1.0
    mean = song_level(test)  # the mean of the clips' probabilities: chance
    assert np.mean(mean["mean_probability"] == mean["truth"]) == 0.5
    with pytest.raises(ValueError, match="models.samplecnn.song_lstm"):
        SongLSTMParams.from_options({"unit": 8})
