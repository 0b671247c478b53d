"""Log-mel features: the same values as librosa, computed in batches, cached by segment and parameters."""

import json

import librosa
import numpy as np
import pytest
import torch

from ml.clips.features import FeatureCache, FeatureParams, LogMel, cache_release_features, compute_log_mels, frames_for

CPU = torch.device("cpu")
SR = 16000


def _clips(n: int, seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    clips = [0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t) + 0.02 * rng.standard_normal(len(t)) for i in range(n)]
    return np.round(np.stack(clips) * 32767).astype(np.int16)


def test_log_mel_matches_librosa():
    params = FeatureParams()
    clip = _clips(1)[0].astype(np.float32) / 32767
    ours = LogMel(params)(torch.from_numpy(clip)[None])[0].numpy()
    mel = librosa.feature.melspectrogram(y=clip, sr=SR, n_fft=2048, hop_length=512, n_mels=128, power=2.0)
    theirs = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=80.0)
    assert ours.shape == theirs.shape == (128, frames_for(len(clip), params))
    assert np.abs(ours - theirs).max() < 0.05  # dB


def test_features_do_not_depend_on_the_batch():
    clips = _clips(5)
    clips[3] //= 100  # a much quieter clip: its floor is its own, not the batch's
    one_by_one = compute_log_mels(clips, FeatureParams(batch_size=1), CPU)
    batched = compute_log_mels(clips, FeatureParams(batch_size=4), CPU)
    assert one_by_one.dtype == np.float16 and one_by_one.shape == (5, 128, 94)
    np.testing.assert_array_equal(one_by_one, batched)
    assert batched[3].max() < batched[2].max() - 30


def test_cache_recomputes_only_when_segments_or_feature_params_change(tmp_path):
    clips = _clips(3)
    ids = ["a", "b", "c"]
    cache = FeatureCache(tmp_path, FeatureParams())
    assert cache_release_features(cache, "rel", ids, clips, CPU) is True
    array, index = cache.paths("rel")
    stamp = array.stat().st_mtime_ns
    assert cache_release_features(cache, "rel", ids, clips, CPU) is False  # unchanged: nothing recomputed
    assert array.stat().st_mtime_ns == stamp
    loaded = cache.load("rel")
    assert isinstance(loaded, np.memmap) and loaded.shape == (3, 128, 94)
    assert json.loads(index.read_text()) == ids

    assert cache_release_features(cache, "rel", ["a", "b"], clips[:2], CPU) is True  # a segment left
    smaller = FeatureCache(tmp_path, FeatureParams(n_mels=64))  # a changed parameter: a new entry
    assert smaller.directory != cache.directory
    assert cache_release_features(smaller, "rel", ["a", "b"], clips[:2], CPU) is True
    assert smaller.load("rel").shape == (2, 64, 94) and cache.load("rel").shape == (2, 128, 94)
    assert FeatureParams(batch_size=8).digest() == FeatureParams().digest()


def test_new_segments_get_a_new_entry_and_old_ones_go_once_out_of_use(tmp_path):
    from ml.clips.features import entry_name

    clips = _clips(3)
    cache = FeatureCache(tmp_path, FeatureParams())
    first, second = entry_name("rel", ["a", "b", "c"], ["s"] * 3), entry_name("rel", ["a", "b"], ["s"] * 2)
    assert first != second
    cache_release_features(cache, first, ["a", "b", "c"], clips, CPU)
    cache_release_features(cache, second, ["a", "b"], clips[:2], CPU, in_use=[cache.paths(first)[0]])
    assert cache.paths(first)[0].exists() and cache.paths(second)[0].exists()  # the current table's entry stays
    cache_release_features(cache, second, ["a", "b"], clips[:2], CPU, in_use=[cache.paths(second)[0]])
    assert not any(p.exists() for p in cache.paths(first)) and cache.load(second).shape[0] == 2


def _separated(root, backend: str, sha: str, freq: float, half_precision: bool = False):
    """One 25 s track's stems, written to the stem cache of (backend, checkpoint, precision) as a
    separation would write them (vocals: a steady tone of ``freq``), and the vocals table of them."""
    import pyarrow as pa

    from ml.separation.separation import SeparationParams, assess
    from ml.separation.stems import STEM_SAMPLE_RATE, StemCache

    cache = StemCache(root, backend, sha, half_precision=half_precision)
    t = np.arange(25 * STEM_SAMPLE_RATE) / STEM_SAMPLE_RATE
    voice = np.repeat(0.3 * np.sin(2 * np.pi * freq * t)[:, None], 2, axis=1)
    music = 0.02 * np.random.default_rng(0).standard_normal(voice.shape)
    with cache.writer("t1") as writer:
        writer.write(voice, music, voice + music)
        writer.commit({"track_id": "t1", "backend": backend, "model_sha256": sha})
    tracks = pa.Table.from_pylist([{"track_id": "t1", "release": "A/B", "path": "A/B/01 Song.flac", "artist": "A",
                                    "album": "B", "title": "Song"}])  # fmt: skip
    return assess(tracks, cache, [], SeparationParams(), root).vocals


def test_stems_of_another_backend_checkpoint_or_precision_get_new_features(tmp_path):
    """A segment id names the track, the start and the segmentation parameters, not the stems: the
    features of clips cut from other stems are computed anew, those of the same stems reused."""
    from ml.clips.features import entry_name
    from ml.clips.segmentation import PackedRows, SegmentParams, segment_release

    stems, data = tmp_path / "stems", tmp_path / "data"
    cache = FeatureCache(data / "features", FeatureParams())

    def features_of(vocals):
        segments = segment_release(vocals, stems, data, "A-B", SegmentParams()).segments
        ids = segments.column("segment_id").to_pylist()
        name = entry_name("A-B", ids, segments.column("stems").to_pylist())
        clips = PackedRows.from_table(segments, data)
        computed = cache_release_features(cache, name, ids, clips, CPU)
        return segments, name, computed, np.array(cache.load(name)), compute_log_mels(clips[:], FeatureParams(), CPU)

    first = _separated(stems, "torch", "1" * 64, 220.0)
    segments, name, computed, features, expected = features_of(first)
    assert computed and segments.num_rows == 3
    assert set(segments.column("stems").to_pylist()) == {"torch-" + "1" * 64}
    np.testing.assert_array_equal(features, expected)
    stamp = cache.paths(name)[0].stat().st_mtime_ns
    again = features_of(first)  # the same stems: nothing recomputed
    assert again[1] == name and again[2] is False and cache.paths(name)[0].stat().st_mtime_ns == stamp
    names = {name}
    for backend, sha, half, freq in (("torch", "2" * 64, False, 330.0),  # another checkpoint
                                     ("spleeter", "1" * 64, False, 440.0),  # another backend
                                     ("torch", "1" * 64, True, 550.0)):  # float16 separation  # fmt: skip
        other, other_name, computed, other_features, expected = features_of(_separated(stems, backend, sha, freq, half))
        assert other.column("segment_id").equals(segments.column("segment_id"))  # the same clips, by id
        assert computed and other_name not in names
        names.add(other_name)
        np.testing.assert_array_equal(other_features, expected)  # the new stems' log-mels, not the old ones
        assert np.abs(other_features.astype(np.float32) - features.astype(np.float32)).max() > 10


def test_float16_stems_have_their_own_cache_only_where_float16_runs():
    from ml.separation.separation import SeparationParams, stem_cache

    half = SeparationParams(half_precision=True)
    assert not stem_cache("s", half, "1" * 64, "cpu").identity.endswith("-fp16")  # float16 is CUDA only
    assert stem_cache("s", half, "1" * 64, "cuda").identity == "torch-" + "1" * 64 + "-fp16"
    spleeter = SeparationParams(backend="spleeter", half_precision=True)
    assert stem_cache("s", spleeter, "1" * 64, "cuda").identity == "spleeter-" + "1" * 64
    assert stem_cache("s", half, "1" * 64, "cuda").directory.name == "torch-111111111111-fp16"


def test_unknown_feature_parameter_is_refused():
    with pytest.raises(ValueError, match="n_mel"):
        FeatureParams.from_params({"features": {"n_mel": 64}})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_features_match_cpu():
    clips = _clips(4)
    cpu = compute_log_mels(clips, FeatureParams(), CPU).astype(np.float32)
    gpu = compute_log_mels(clips, FeatureParams(), torch.device("cuda")).astype(np.float32)
    assert np.abs(cpu - gpu).max() < 0.1
