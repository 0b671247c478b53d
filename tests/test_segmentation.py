"""Segments: silence detection (against pydub), clip cutting, ids, packed storage."""

import hashlib
import json

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
from pydub import AudioSegment
from pydub.silence import detect_nonsilent as pydub_detect_nonsilent
from scipy.signal import resample_poly

from ml.clips.segmentation import (
    PackedRows,
    SegmentParams,
    cut_clips,
    dbfs,
    detect_nonsilent,
    segment_id,
    segment_release,
    to_float,
)

SR = 16000
STEMS = "torch-" + "0" * 64  # what made the test stems (StemCache.identity)


def _bursts(seconds: float, sample_rate: int, regions: list[tuple[float, float]], channels: int = 1,
            seed: int = 0) -> np.ndarray:  # fmt: skip
    """Voice-like bursts (tone + noise) in the given (start, end) seconds, near-silence elsewhere."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    audio = 0.0005 * rng.standard_normal((n, channels))
    for start, end in regions:
        a, b = int(start * sample_rate), int(end * sample_rate)
        tone = 0.3 * np.sin(2 * np.pi * 220 * t[a:b]) + 0.05 * rng.standard_normal(b - a)
        audio[a:b] += tone[:, None]
    return audio.astype(np.float32)


def _pydub(audio: np.ndarray, sample_rate: int, min_silence_ms: int, thresh: float) -> list[tuple[int, int]]:
    pcm = np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16)
    segment = AudioSegment(pcm.tobytes(), frame_rate=sample_rate, sample_width=2, channels=audio.shape[1])
    return [tuple(r) for r in pydub_detect_nonsilent(segment, min_silence_len=min_silence_ms, silence_thresh=thresh)]


@pytest.mark.parametrize(
    ("sample_rate", "channels", "min_silence_ms"), [(16000, 1, 500), (44100, 2, 1000), (22050, 1, 300)]
)
def test_nonsilent_ranges_match_pydub(sample_rate, channels, min_silence_ms):
    regions = [(0.0, 1.2), (2.0, 2.35), (2.9, 6.0), (8.5, 9.05), (11.0, 13.7)]
    audio = _bursts(14.3, sample_rate, regions, channels)
    thresh = dbfs(audio) - 16
    ours = detect_nonsilent(audio, sample_rate, min_silence_ms, thresh)
    theirs = _pydub(audio, sample_rate, min_silence_ms, thresh)
    assert len(ours) == len(theirs) and len(ours) >= 3
    for (a, b), (c, d) in zip(ours, theirs, strict=True):
        assert abs(a - c) <= 10 and abs(b - d) <= 10  # within 10 ms (in practice: identical)
    assert ours == theirs


def test_nonsilent_edge_cases_match_pydub():
    silence = np.zeros((SR * 3, 1), np.float32)
    assert detect_nonsilent(silence, SR, 500, -40) == _pydub(silence, SR, 500, -40) == []
    loud = _bursts(3, SR, [(0, 3)])
    assert detect_nonsilent(loud, SR, 500, -40) == _pydub(loud, SR, 500, -40) == [(0, 3000)]
    short = _bursts(0.2, SR, [(0, 0.1)])  # shorter than min_silence_len
    assert detect_nonsilent(short, SR, 500, -40) == _pydub(short, SR, 500, -40)
    assert detect_nonsilent(np.zeros((0, 1), np.float32), SR, 500, -40) == []


@pytest.mark.parametrize("clip_s", [1.0, 3.0, 5.0, 10.0])
def test_clips_of_any_length_cover_the_sung_regions(clip_s):
    audio = _bursts(48.0, SR, [(2.0, 27.0), (35.0, 36.0 + 0.6 * clip_s)])[:, 0]
    settings = SegmentParams(clip_s=clip_s, hop_s=clip_s, min_silence_ms=1000, min_fraction=0.5, join_regions=False)
    clips, track_dbfs = cut_clips(audio, settings)
    regions = detect_nonsilent(audio, SR, 1000, track_dbfs - 16)
    assert len(regions) == 2 and regions[0][0] == pytest.approx(2000, abs=50)  # onsets found within ms
    size = settings.clip_samples
    expected = []
    for start_ms, end_ms in regions:  # back-to-back clips from each region's start; the remainder
        start, end = start_ms * SR // 1000, end_ms * SR // 1000  # becomes a padded clip if ≥ half a clip
        full, remainder = divmod(end - start, size)
        expected += [(start + i * size, size) for i in range(full)]
        if remainder >= size / 2:
            expected.append((start + full * size, remainder))
    assert [(c.start, c.length) for c in clips] == expected
    assert all(c.pieces == ((c.start, c.length),) for c in clips)  # each clip from one region
    assert any(c.length < size for c in clips)  # the second region always ends in a padded clip
    assert all(c.dbfs > track_dbfs - 16 for c in clips)


@pytest.mark.parametrize(("clip_s", "hop_s"), [(1.0, 1.0), (3.0, 3.0), (5.0, 2.5), (10.0, 10.0)])
def test_joined_regions_are_cut_as_one_stretch_of_voice(clip_s, hop_s):
    audio = _bursts(48.0, SR, [(2.0, 7.3), (12.0, 13.1), (20.0, 27.0), (35.0, 36.0 + 0.6 * clip_s)])[:, 0]
    settings = SegmentParams(clip_s=clip_s, hop_s=hop_s, min_silence_ms=1000, min_fraction=0.5)
    clips, track_dbfs = cut_clips(audio, settings)
    regions = detect_nonsilent(audio, SR, 1000, track_dbfs - 16)
    assert len(regions) == 4
    # the voice without its silences: sample indices of the track, one after the other
    voiced = np.concatenate([np.arange(a * SR // 1000, b * SR // 1000) for a, b in regions])
    size, hop = settings.clip_samples, settings.hop_samples
    expected, position = [], 0
    while len(voiced) - position >= size / 2:
        expected.append(voiced[position : position + size])
        if position + size >= len(voiced):
            break
        position += hop
    assert [(c.start, c.length, c.end) for c in clips] == [(int(e[0]), len(e), int(e[-1]) + 1) for e in expected]
    for clip, indices in zip(clips, expected, strict=True):
        np.testing.assert_array_equal(clip.audio(audio), audio[indices])
        assert sum(length for _, length in clip.pieces) == clip.length
    assert any(len(c.pieces) > 1 for c in clips)  # some clips span a silence
    assert len({c.start for c in clips}) == len(clips)  # distinct starts: distinct segment ids


def test_sparse_phrases_give_clips_only_when_joined(tmp_path):
    """Three 3 s phrases 3 s apart: no region holds half a clip, the three together do."""
    phrases = [(3.0, 6.0), (9.0, 12.0), (15.0, 18.0)]
    audio = _bursts(21.0, SR, phrases)[:, 0]
    regions = detect_nonsilent(audio, SR, 2000, dbfs(audio) - 16)
    assert [(round(a / 1000), round(b / 1000)) for a, b in regions] == [(3, 6), (9, 12), (15, 18)]
    assert cut_clips(audio, SegmentParams(join_regions=False))[0] == []

    clips, _ = cut_clips(audio, SegmentParams())
    voice = np.concatenate([audio[a * SR // 1000 : b * SR // 1000] for a, b in regions])
    assert len(clips) == 1 and clips[0].length == len(voice) and 8.5 * SR < len(voice) <= 9 * SR
    np.testing.assert_array_equal(clips[0].audio(audio), voice)

    stems = tmp_path / "stems"
    (stems / "t").mkdir(parents=True)
    sf.write(stems / "t" / "vocals.flac", audio, SR, subtype="PCM_16")
    sf.write(stems / "t" / "accompaniment.flac", 0.5 * audio[::-1], SR, subtype="PCM_16")
    table = pa.Table.from_pylist([{"track_id": "t", "release": "R", "path": "R/t.mp3", "vocals_path": "t/vocals.flac",
                                   "accompaniment_path": "t/accompaniment.flac", "stems": STEMS}])  # fmt: skip
    off = segment_release(table, stems, tmp_path / "off", "R", SegmentParams(join_regions=False))
    assert off.segments.num_rows == 0 and off.rejected.column("reason").to_pylist() == ["no_segments"]

    result = segment_release(table, stems, tmp_path / "data", "R", SegmentParams())
    assert result.rejected.num_rows == 0
    (row,) = result.segments.to_pylist()
    assert row["start_s"] == pytest.approx(3.0, abs=0.05) and row["end_s"] == pytest.approx(18.0, abs=0.05)
    assert row["voiced_s"] == pytest.approx(len(voice) / SR, abs=1e-3)
    assert row["padding_s"] == pytest.approx(10.0 - row["voiced_s"], abs=1e-6)
    # the packed clip is the three phrases back to back, then silence; the accompaniment the same stretches
    stem, _ = sf.read(stems / "t" / "vocals.flac")
    back, _ = sf.read(stems / "t" / "accompaniment.flac")
    pieces = [slice(a * SR // 1000, b * SR // 1000) for a, b in regions]
    clip = to_float(PackedRows.from_table(result.segments, tmp_path / "data")[:])[0]
    accompaniment = to_float(PackedRows.from_table(result.segments, tmp_path / "data", "accompaniment_file")[:])[0]
    n = len(voice)
    np.testing.assert_allclose(clip[:n], np.concatenate([stem[p] for p in pieces]), atol=1e-4)
    np.testing.assert_allclose(accompaniment[:n], np.concatenate([back[p] for p in pieces]), atol=1e-4)
    assert not clip[n:].any() and not accompaniment[n:].any()


def test_overlapping_windows_and_short_remainders():
    audio = _bursts(30.0, SR, [(0.0, 30.0)])[:, 0]
    overlapping, _ = cut_clips(audio, SegmentParams(clip_s=10.0, hop_s=5.0, min_silence_ms=1000))
    assert [c.start / SR for c in overlapping] == [0.0, 5.0, 10.0, 15.0, 20.0]
    clips, _ = cut_clips(audio[: int(24 * SR)], SegmentParams(clip_s=10.0, min_fraction=0.5, min_silence_ms=1000))
    assert [c.length / SR for c in clips] == [10.0, 10.0]  # 4 s left over: under half a clip, dropped
    clips, _ = cut_clips(audio[: int(26 * SR)], SegmentParams(clip_s=10.0, min_fraction=0.5, min_silence_ms=1000))
    assert [round(c.length / SR, 3) for c in clips] == [10.0, 10.0, 6.0]  # 6 s: padded into a clip


def test_silence_gives_no_clip_and_quiet_clips_are_dropped():
    assert cut_clips(np.zeros(SR * 20, np.float32), SegmentParams())[0] == []
    # a loud region and a much quieter one: the quiet one is below the track's threshold
    audio = _bursts(40.0, SR, [(0.0, 12.0)])[:, 0]
    audio[int(20 * SR) : int(32 * SR)] += 0.002 * np.sin(np.arange(int(12 * SR)) * 0.1).astype(np.float32)
    clips, _ = cut_clips(audio, SegmentParams(min_silence_ms=1000))
    assert all(c.start < 20 * SR for c in clips)


def test_segment_ids_are_stable_and_depend_on_track_start_and_params():
    a, b = SegmentParams(), SegmentParams(clip_s=5.0, hop_s=5.0)
    assert segment_id("t1", 0, a.digest()) == segment_id("t1", 0, a.digest())
    ids = {segment_id("t1", 0, a.digest()), segment_id("t2", 0, a.digest()), segment_id("t1", 16000, a.digest()),
           segment_id("t1", 0, b.digest())}  # fmt: skip
    assert len(ids) == 4
    assert SegmentParams(shard_mb=1).digest() == a.digest()  # storage settings do not change the clips
    # join_regions: false cuts what was cut before the parameter existed, under the same ids
    before = {"sample_rate": 16000, "clip_s": 10.0, "hop_s": 10.0, "silence_below_track_db": 16.0,
              "min_silence_ms": 2000, "min_fraction": 0.5}  # fmt: skip
    old_digest = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert SegmentParams(join_regions=False).digest() == old_digest != a.digest()
    with pytest.raises(ValueError, match="clip_len"):
        SegmentParams.from_params({"segments": {"clip_len": 10}})


def test_a_release_is_packed_into_shards_that_hold_exactly_the_clips(tmp_path):
    stems = tmp_path / "stems"
    rows = []
    for i, regions in enumerate([[(1.0, 25.0)], [(0.5, 12.0), (20.0, 33.0)], [], [(1.0, 25.0)]]):
        folder = stems / f"t{i}"
        folder.mkdir(parents=True)
        vocals = _bursts(36.0, 44100, regions, channels=2, seed=i) if regions else np.zeros((44100 * 36, 2))
        sf.write(folder / "vocals.flac", vocals, 44100, subtype="PCM_16")
        sf.write(folder / "accompaniment.flac", 0.1 * np.ones_like(vocals), 44100, subtype="PCM_16")
        rows.append({"track_id": f"t{i}", "release": "A/B", "path": f"A/B/{i}.mp3", "artist": "A", "album": "B",
                     "vocals_path": f"t{i}/vocals.flac", "accompaniment_path": f"t{i}/accompaniment.flac",
                     "stems": STEMS})  # fmt: skip
    (stems / "t3" / "vocals.flac").write_bytes(b"not a flac any more")  # a damaged cache entry
    settings = SegmentParams(min_silence_ms=1000, shard_mb=1)  # 1 MiB: three 10 s clips per shard
    data = tmp_path / "data"
    result = segment_release(pa.Table.from_pylist(rows), stems, data, "A-B", settings)

    table = result.segments
    # the silent track, and the damaged stem (named in the detail); the others are segmented
    assert result.rejected.column("reason").to_pylist() == ["no_segments", "unreadable_stem"]
    assert result.rejected.column("path").to_pylist() == ["A/B/2.mp3", "A/B/3.mp3"]
    assert "t3/vocals.flac" in result.rejected.column("detail").to_pylist()[1]
    assert table.num_rows == 4 and len(set(table.column("segment_id").to_pylist())) == table.num_rows
    assert len({f for f in table.column("audio_file").to_pylist()}) >= 2  # several shards
    clips = to_float(PackedRows.from_table(table, data)[:])
    accompaniment = to_float(PackedRows.from_table(table, data, column="accompaniment_file").take([0]))
    assert clips.shape == (table.num_rows, settings.clip_samples)
    joined = 0
    for row, clip in zip(table.to_pylist(), clips, strict=True):  # each row holds its stretches of the stem
        source, _ = sf.read(stems / f"{row['track_id']}/vocals.flac")
        resampled = resample_poly(source.mean(axis=1), 160, 441)  # 44.1 -> 16 kHz
        start, end, length = (round(row[k] * SR) for k in ("start_s", "end_s", "voiced_s"))
        head, tail = slice(1000, 5000), slice(length - 5000, length - 1000)
        # it begins at start_s and its voice ends at end_s (a joined clip skips the silence between)
        assert np.corrcoef(clip[head], resampled[start + 1000 : start + 5000])[0, 1] > 0.99
        assert np.corrcoef(clip[tail], resampled[end - 5000 : end - 1000])[0, 1] > 0.99
        assert not clip[length + 10 :].any()  # padding is silence
        assert row["padding_s"] == pytest.approx(10.0 - row["voiced_s"], abs=1e-3)
        joined += end - start > length + SR  # this clip spans a silence of more than a second
    assert joined == 1  # t1's second clip: the end of its first region and the start of its second
    assert np.allclose(accompaniment[0, :SR], 0.1, atol=0.01)


def test_new_clips_never_overwrite_the_files_the_current_table_points_to(tmp_path):
    stems, data = tmp_path / "stems", tmp_path / "data"
    (stems / "t").mkdir(parents=True)
    vocals = _bursts(30.0, 44100, [(1.0, 29.0)], channels=2)
    sf.write(stems / "t" / "vocals.flac", vocals, 44100, subtype="PCM_16")
    sf.write(stems / "t" / "accompaniment.flac", vocals, 44100, subtype="PCM_16")
    table = pa.Table.from_pylist([{"track_id": "t", "release": "R", "path": "R/t.mp3", "vocals_path": "t/vocals.flac",
                                   "accompaniment_path": "t/accompaniment.flac", "stems": STEMS}])  # fmt: skip
    files = lambda segments: set(segments.column("audio_file").to_pylist())  # noqa: E731
    first = segment_release(table, stems, data, "R", SegmentParams(min_silence_ms=1000)).segments
    # other parameters: new files beside the ones the current (first) table points to
    in_use = files(first) | set(first.column("accompaniment_file").to_pylist())
    second = segment_release(table, stems, data, "R", SegmentParams(clip_s=5.0, hop_s=5.0, min_silence_ms=1000),
                             in_use=in_use).segments  # fmt: skip
    assert files(first).isdisjoint(files(second))
    assert all((data / f).exists() for f in files(first) | files(second))
    assert PackedRows.from_table(first, data).shape == (first.num_rows, 160000)  # the old table still reads
    # once the second table is current, the first generation is garbage and goes
    third = segment_release(table, stems, data, "R", SegmentParams(clip_s=5.0, hop_s=5.0, min_silence_ms=1000),
                            in_use=files(second)).segments  # fmt: skip
    assert files(third) == files(second) and not any((data / f).exists() for f in files(first))
