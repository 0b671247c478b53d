"""The training loader: batches from packed clips and cached log-mels, seeded, class-balanced."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from ml.clips.features import FeatureParams, LogMel, compute_log_mels
from ml.clips.loader import SegmentDataset, make_loader, model_input

SAMPLES = 16000


@pytest.fixture
def packed(tmp_path):
    """100 one-second clips in two shards: 90 of artist A, 10 of B; their log-mels cached."""
    rng = np.random.default_rng(0)
    clips = np.round(rng.uniform(-0.5, 0.5, (100, SAMPLES)) * 32767).astype(np.int16)
    accompaniment = (clips // 2).astype(np.int16)
    rows = []
    for shard in (0, 1):
        part = slice(shard * 60, 60 + shard * 40)
        np.save(tmp_path / f"v{shard}.npy", clips[part])
        np.save(tmp_path / f"a{shard}.npy", accompaniment[part])
        for i in range(part.stop - part.start):
            rows.append({"audio_file": f"v{shard}.npy", "accompaniment_file": f"a{shard}.npy", "audio_row": i})
    features = compute_log_mels(clips, FeatureParams(), torch.device("cpu"))
    np.save(tmp_path / "f.npy", features)
    for i, row in enumerate(rows):
        row.update(artist="A" if i < 90 else "B", feature_file="f.npy", feature_row=i, segment_id=f"s{i}")
    return tmp_path, pa.Table.from_pylist(rows), clips, features


def test_audio_batches_hold_the_packed_clips(packed):
    data, table, clips, _ = packed
    dataset = SegmentDataset(table, data, ["A", "B"])
    batch = dataset.__getitems__([95, 3, 61, 59])  # across both shards, in any order
    assert batch.audio.shape == (4, SAMPLES) and batch.audio.dtype == torch.float32
    np.testing.assert_allclose(batch.audio.numpy(), clips[[95, 3, 61, 59]] / 32767, atol=1e-6)
    np.testing.assert_allclose(batch.accompaniment.numpy(), (clips[[95, 3, 61, 59]] // 2) / 32767, atol=1e-6)
    assert batch.labels.tolist() == [1, 0, 0, 0]


def test_feature_batches_hold_the_cached_log_mels(packed):
    data, table, _, features = packed
    batch = SegmentDataset(table, data, ["A", "B"], source="features").__getitems__([7, 99])
    assert batch.audio is None and batch.log_mel.dtype == torch.float16
    np.testing.assert_array_equal(batch.log_mel.numpy(), features[[7, 99]])
    # the on-device path computes the same log-mels from the raw clips
    raw = SegmentDataset(table, data, ["A", "B"]).__getitems__([7, 99])
    on_device, clips = model_input(raw, torch.device("cpu"), log_mel=LogMel(FeatureParams()))
    assert torch.allclose(on_device, batch.log_mel.float(), atol=0.1) and torch.equal(clips, raw.audio)


def test_shuffling_is_seeded_and_every_row_comes_once_per_epoch(packed):
    data, table, _, _ = packed
    dataset = SegmentDataset(table, data, ["A", "B"], source="features")
    order = lambda seed: torch.cat([b.rows for b in make_loader(dataset, 16, shuffle=True, seed=seed)])  # noqa: E731
    assert torch.equal(order(1), order(1)) and not torch.equal(order(1), order(2))
    assert sorted(order(1).tolist()) == list(range(100))


def test_balanced_sampling_evens_out_the_classes(packed):
    data, table, _, _ = packed
    dataset = SegmentDataset(table, data, ["A", "B"], source="features")
    labels = torch.cat([b.labels for epoch in range(20) for b in make_loader(dataset, 25, balanced=True, seed=epoch)])
    share_b = labels.float().mean().item()
    assert 0.4 < share_b < 0.6  # 10 % of the rows, half of the draws


def test_unknown_labels_and_sources_are_refused(packed):
    data, table, _, _ = packed
    with pytest.raises(ValueError, match="unknown artist"):
        SegmentDataset(table, data, ["A"])
    with pytest.raises(ValueError, match="source"):
        SegmentDataset(table, data, ["A", "B"], source="video")
