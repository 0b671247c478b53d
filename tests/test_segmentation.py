"""Segments: silence detection (against pydub), clip cutting, ids, packed storage."""

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
    settings = SegmentParams(clip_s=clip_s, hop_s=clip_s, min_silence_ms=1000, min_fraction=0.5)
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
    assert any(c.length < size for c in clips)  # the second region always ends in a padded clip
    assert all(c.dbfs > track_dbfs - 16 for c in clips)


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
                     "vocals_path": f"t{i}/vocals.flac", "accompaniment_path": f"t{i}/accompaniment.flac"})  # fmt: skip
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
    for row, clip in zip(table.to_pylist(), clips, strict=True):  # each row holds its stretch of the stem
        source, _ = sf.read(stems / f"{row['track_id']}/vocals.flac")
        resampled = resample_poly(source.mean(axis=1), 160, 441)  # 44.1 -> 16 kHz
        start = round(row["start_s"] * SR)
        length = round((row["end_s"] - row["start_s"]) * SR)
        middle = slice(length // 2 - 2000, length // 2 + 2000)
        expected = resampled[start : start + length][middle]
        assert np.corrcoef(clip[middle], expected)[0, 1] > 0.99
        assert not clip[length + 10 :].any()  # padding is silence
        assert row["padding_s"] == pytest.approx(10.0 - (row["end_s"] - row["start_s"]), abs=1e-3)
    assert np.allclose(accompaniment[0, :SR], 0.1, atol=0.01)


def test_new_clips_never_overwrite_the_files_the_current_table_points_to(tmp_path):
    stems, data = tmp_path / "stems", tmp_path / "data"
    (stems / "t").mkdir(parents=True)
    vocals = _bursts(30.0, 44100, [(1.0, 29.0)], channels=2)
    sf.write(stems / "t" / "vocals.flac", vocals, 44100, subtype="PCM_16")
    sf.write(stems / "t" / "accompaniment.flac", vocals, 44100, subtype="PCM_16")
    table = pa.Table.from_pylist([{"track_id": "t", "release": "R", "path": "R/t.mp3", "vocals_path": "t/vocals.flac",
                                   "accompaniment_path": "t/accompaniment.flac"}])  # fmt: skip
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
