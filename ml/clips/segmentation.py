"""Cutting vocal stems into fixed-length clips around silence (the RecoNet report, section 3.3).

For each track's vocal stem, at the model's sample rate (16 kHz mono by default):

1. find the non-silent regions: a stretch of at least ``min_silence_ms`` whose RMS is at or below
   the threshold — ``silence_below_track_db`` (16 dB) under the track's own dBFS — is silence.
   :func:`detect_nonsilent` gives exactly what ``pydub.silence.detect_nonsilent`` gives (same
   millisecond grid, same merging of overlapping silent windows), vectorised with cumulative
   sums instead of pydub's per-millisecond Python loop;
2. with ``join_regions`` (the report's split-on-silence, the default), join the non-silent
   regions end to end, dropping the silences between them, and cut the joined voice into clips
   of ``clip_s`` seconds every ``hop_s`` seconds (hop < clip gives overlapping windows): a song
   sung in short phrases between long pauses still gives clips, each holding the phrases one
   after the other. Without it, each region is cut on its own, and a region shorter than
   ``min_fraction`` of a clip gives nothing. Either way the last remainder becomes a clip padded
   with silence when it is at least ``min_fraction`` of a clip;
3. drop clips quieter than the same threshold.

A clip is taken from one or more stretches of the track (:attr:`Clip.pieces`); its ``start`` is
the first sample taken, its end the last one, and ``length`` the samples of voice it holds. Only
one clip's audio is ever copied at a time (no joined copy of the whole track).

A segment's id is a uuid5 of (track id, start sample, segmentation parameters), so it is stable
across runs and changes when the parameters do. It does not name the stems the clip was cut from:
the ``stems`` column does (the separation backend, checkpoint and precision), and the packed files
and every cache made from the clips (log-mels, embeddings) are keyed on it too, so stems of another
backend or checkpoint never reuse features of the old ones. Clips of one release are packed into one array
(int16 PCM, one row per clip, memory-mappable) indexed by the segment table, rather than one file
per clip: file systems and DVC are slow with hundreds of thousands of small files.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ml import config

SEGMENT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "reconet/segment")

SEGMENTS_SCHEMA = pa.schema(
    [
        pa.field("segment_id", pa.string(), nullable=False),  # uuid5(track_id, start sample, params)
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("release", pa.string(), nullable=False),
        pa.field("artist", pa.string()),
        pa.field("album", pa.string()),
        pa.field("title", pa.string()),
        pa.field("over_genre", pa.string()),
        pa.field("start_s", pa.float64(), nullable=False),  # first sample taken from the track
        pa.field("end_s", pa.float64(), nullable=False),  # end of the last sample taken from the track
        pa.field("voiced_s", pa.float64(), nullable=False),  # audio taken from the track (< end_s - start_s
        # when the clip joins voiced regions across the silences between them)
        pa.field("padding_s", pa.float64(), nullable=False),  # silence appended to reach the clip length
        pa.field("clip_dbfs", pa.float64(), nullable=False),
        pa.field("track_dbfs", pa.float64(), nullable=False),
        pa.field("sample_rate", pa.int32(), nullable=False),
        pa.field("audio_file", pa.string(), nullable=False),  # packed vocal clips, relative to the data folder
        pa.field("accompaniment_file", pa.string(), nullable=False),  # the same stretches of the accompaniment
        pa.field("audio_row", pa.int32(), nullable=False),  # row of this clip in both files
        pa.field("params_hash", pa.string(), nullable=False),
        pa.field("stems", pa.string(), nullable=False),  # what made the stems it was cut from (StemCache.identity)
    ]
)


@dataclass(frozen=True)
class SegmentParams:
    sample_rate: int = 16000
    clip_s: float = 10.0
    hop_s: float = 10.0  # = clip_s: no overlap; clip_s / 2: 50 % overlap
    silence_below_track_db: float = 16.0
    min_silence_ms: int = 2000
    min_fraction: float = 0.5  # the shortest padded remainder, as a fraction of a clip
    join_regions: bool = True  # cut clips from the voiced regions joined end to end (silences dropped)
    shard_mb: int = 512  # packed clips per file, at most (bounds memory while segmenting)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SegmentParams:
        section = config.section(params, "segments", cls)
        settings = cls(**section)
        if settings.clip_s <= 0 or not settings.hop_s > 0:
            raise ValueError("segments.clip_s and segments.hop_s must be positive")
        if not 0 < settings.min_fraction <= 1:
            raise ValueError("segments.min_fraction must be in (0, 1]")
        return settings

    @property
    def clip_samples(self) -> int:
        return round(self.clip_s * self.sample_rate)

    @property
    def hop_samples(self) -> int:
        return round(self.hop_s * self.sample_rate)

    def digest(self) -> str:
        """A short hash of the parameters that shape the clips: part of each segment id.
        ``join_regions: false`` hashes as before the parameter existed (the same clips, the same ids)."""
        shaping = {k: v for k, v in asdict(self).items() if k != "shard_mb"}
        if not shaping["join_regions"]:
            del shaping["join_regions"]
        return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def dbfs(audio: np.ndarray) -> float:
    """RMS level in dB relative to full scale (−inf for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    return 20 * np.log10(rms) if rms > 0 else float("-inf")


def detect_nonsilent(
    audio: np.ndarray, sample_rate: int, min_silence_ms: int, silence_thresh_dbfs: float
) -> list[tuple[int, int]]:
    """Non-silent [start, end) ranges in milliseconds, exactly as ``pydub.silence.detect_nonsilent``
    (``seek_step=1``) finds them in the same audio as 16-bit PCM; ``audio`` is float in [-1, 1],
    mono or (n, channels).

    pydub's semantics, kept here: the length is ``round(1000 * n / rate)`` ms; a window of
    ``min_silence_ms`` starting at every millisecond holds the samples [int(start·rate/1000),
    int(end·rate/1000)); it is silent when its integer RMS over all samples and channels is at or
    below the threshold; silent windows whose starts are at most ``min_silence_ms`` apart merge.
    """
    audio = audio.reshape(len(audio), -1) if audio.ndim == 1 else audio
    n_ms = round(1000 * len(audio) / sample_rate)
    if n_ms == 0:
        return []
    if n_ms < min_silence_ms:
        return [(0, n_ms)]
    channels = audio.shape[1]
    # per-sample energy (16-bit scale) summed over channels, cumulative, read at millisecond marks
    pcm = np.round(np.clip(audio, -1, 1) * 32767).astype(np.float64)
    energy = np.concatenate([[0.0], np.cumsum(np.square(pcm).sum(axis=1))])
    marks = np.minimum((np.arange(n_ms + 1) * (sample_rate / 1000.0)).astype(np.int64), len(audio))
    starts = np.arange(0, n_ms - min_silence_ms + 1)
    lo, hi = marks[starts], marks[starts + min_silence_ms]
    rms = np.floor(np.sqrt((energy[hi] - energy[lo]) / np.maximum((hi - lo) * channels, 1)))
    silent = starts[rms <= 10 ** (silence_thresh_dbfs / 20) * 32768]
    if not len(silent):
        return [(0, n_ms)]
    breaks = np.flatnonzero(np.diff(silent) > min_silence_ms)
    range_starts = np.concatenate([[silent[0]], silent[breaks + 1]]).tolist()
    range_ends = (np.concatenate([silent[breaks], [silent[-1]]]) + min_silence_ms).tolist()
    if range_starts[0] == 0 and range_ends[0] == n_ms:
        return []
    nonsilent, previous_end = [], 0
    for start, end in zip(range_starts, range_ends, strict=True):
        nonsilent.append((previous_end, start))
        previous_end = end
    if previous_end != n_ms:
        nonsilent.append((previous_end, n_ms))
    if nonsilent[0] == (0, 0):
        nonsilent.pop(0)
    return nonsilent


@dataclass
class Clip:
    start: int  # first sample taken from the track
    length: int  # samples taken from the track, all pieces together (≤ clip length; the rest is padding)
    dbfs: float
    pieces: tuple[tuple[int, int], ...] = ()  # (start, length) stretches of the track, in order; () = (start, length)

    def __post_init__(self) -> None:
        if not self.pieces:
            self.pieces = ((self.start, self.length),)

    @property
    def end(self) -> int:
        """One past the last sample taken from the track."""
        start, length = self.pieces[-1]
        return start + length

    def audio(self, track: np.ndarray) -> np.ndarray:
        """The clip's audio from ``track`` (its pieces joined), without the padding."""
        parts = [track[start : start + length] for start, length in self.pieces]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _take(run: Sequence[tuple[int, int]], offsets: Sequence[int], position: int, length: int) -> tuple:
    """The (start, length) pieces of the track that hold samples [position, position + length) of
    the regions ``run`` joined end to end (``offsets``: where each region starts in the join)."""
    i = bisect.bisect_right(offsets, position) - 1
    pieces = []
    while length > 0:
        start, end = run[i]
        begin = start + position - offsets[i]
        take = min(length, end - begin)
        pieces.append((begin, take))
        position, length, i = position + take, length - take, i + 1
    return tuple(pieces)


def cut_clips(audio: np.ndarray, settings: SegmentParams) -> tuple[list[Clip], float]:
    """The clips of one mono track at ``settings.sample_rate``; also returns the track's dBFS."""
    track_dbfs = dbfs(audio)
    if not np.isfinite(track_dbfs):
        return [], track_dbfs
    threshold = track_dbfs - settings.silence_below_track_db
    regions = []  # [start, end) in samples
    for start_ms, end_ms in detect_nonsilent(audio, settings.sample_rate, settings.min_silence_ms, threshold):
        start = min(start_ms * settings.sample_rate // 1000, len(audio))
        end = min(end_ms * settings.sample_rate // 1000, len(audio))
        if start < end:
            regions.append((start, end))
    # what is cut: all the regions joined end to end, or each region on its own
    runs = ([regions] if regions else []) if settings.join_regions else [[region] for region in regions]
    size, hop = settings.clip_samples, settings.hop_samples
    min_length = int(np.ceil(settings.min_fraction * size))
    clips = []
    for run in runs:
        offsets = np.concatenate([[0], np.cumsum([end - start for start, end in run])]).tolist()
        total, position = offsets[-1], 0
        while position < total:
            length = min(size, total - position)
            if length < min_length:
                break
            pieces = _take(run, offsets, position, length)
            clip = Clip(pieces[0][0], length, 0.0, pieces)
            level = dbfs(clip.audio(audio)) + 20 * np.log10(np.sqrt(length / size))
            if level >= threshold:  # the level of the padded clip, silence included
                clip.dbfs = float(level)
                clips.append(clip)
            if position + size >= total:
                break
            position += hop
    return clips, track_dbfs


def segment_id(track_id: str, start_sample: int, params_digest: str) -> str:
    return str(uuid.uuid5(SEGMENT_NAMESPACE, f"{track_id}:{start_sample}:{params_digest}"))


def pack(audio: np.ndarray, clips: Iterable[Clip], size: int) -> np.ndarray:
    """The clips as rows of int16 PCM, zero-padded to ``size`` samples."""
    clips = list(clips)
    packed = np.zeros((len(clips), size), np.int16)
    for row, clip in enumerate(clips):
        packed[row, : clip.length] = np.round(np.clip(clip.audio(audio), -1, 1) * 32767)
    return packed


def to_float(packed: np.ndarray) -> np.ndarray:
    return packed.astype(np.float32) / 32767


# --------------------------------------------------------------------------- one release


@dataclass
class ReleaseSegments:
    segments: pa.Table
    rejected: pa.Table
    files: list[Path]


def segment_release(
    vocals: pa.Table,
    stems_root: Path,
    data_dir: Path,
    out_stem: str,
    settings: SegmentParams,
    logger: Any = None,
    in_use: Iterable[str] = (),
) -> ReleaseSegments:
    """Cut every track of one release (rows of the `vocals` table) into clips, packed into
    ``<data_dir>/segments/<out_stem>.<inputs>.{vocals,accompaniment}.<shard>.npy``; a track without
    a single clip becomes a `rejected` row (stage `segments`).

    ``<inputs>`` is a hash of the stems (their files and ``stems`` identity) and parameters, so new
    clips never overwrite the files the release's current table points to (``in_use``, relative to
    ``data_dir``): a run killed before its table is written leaves the old table and its files intact.
    Other files of the release (older generations, leftovers of killed runs) are removed."""
    from ml.audio import AudioDecodeError, load_audio, to_mono
    from ml.tables import REJECTED_SCHEMA, atomic_path, table_from_rows

    if "stems" not in vocals.column_names:
        raise ValueError(f"{out_stem}: the vocals table has no `stems` column (what made the stems; written by an "
                         "older reconet): materialise `vocals` again")  # fmt: skip
    folder = data_dir / "segments"
    folder.mkdir(parents=True, exist_ok=True)
    stem_files = sorted(zip(*(vocals.column(c).to_pylist() for c in ("vocals_path", "accompaniment_path", "stems")),
                            strict=True))  # fmt: skip
    inputs = hashlib.sha256(json.dumps([settings.digest(), stem_files]).encode())
    out_stem = f"{out_stem}.{inputs.hexdigest()[:10]}"
    keep = {data_dir / f for f in in_use}
    for old in folder.glob(f"{out_stem.rsplit('.', 1)[0]}.*.npy"):
        if old not in keep and not old.name.startswith(out_stem + "."):
            old.unlink()
    size = settings.clip_samples
    shard_rows = max(1, settings.shard_mb * 2**20 // (2 * size))
    digest = settings.digest()
    rows: list[dict] = []
    rejected: list[dict] = []
    pending: dict[str, list[np.ndarray]] = {"vocals": [], "accompaniment": []}
    files: list[Path] = []
    shard = 0

    def flush() -> None:
        nonlocal shard
        if not pending["vocals"]:
            return
        for stem in ("vocals", "accompaniment"):
            path = folder / f"{out_stem}.{stem}.{shard:03d}.npy"
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.save(f, np.concatenate(pending[stem]))
            files.append(path)
            pending[stem].clear()
        shard += 1

    rows_in_shard = 0
    for track in vocals.to_pylist():

        def reject(reason: str, detail: str, track: dict = track) -> None:
            rejected.append({"path": track["path"], "release": track["release"], "track_id": track["track_id"],
                             "stage": "segments", "reason": reason, "detail": detail})  # fmt: skip

        try:
            vocal = to_mono(load_audio(stems_root / track["vocals_path"], settings.sample_rate, stereo=False))
            accompaniment = load_audio(stems_root / track["accompaniment_path"], settings.sample_rate, stereo=False)
        except AudioDecodeError as exc:  # a damaged stem cache entry: this track only
            reject("unreadable_stem", f"{exc} (delete the entry under the stem cache to separate it again)")
            continue
        clips, track_dbfs = cut_clips(vocal, settings)
        if not clips:
            enough = (f"no {settings.min_fraction * settings.clip_s:g} s of voice (all its sung stretches together)"
                      if settings.join_regions else "no sung stretch long and")  # fmt: skip
            reject("no_segments", f"{enough} loud enough for a {settings.clip_s:g} s clip "
                                  f"(track at {track_dbfs:.1f} dBFS)")  # fmt: skip
            continue
        if rows_in_shard + len(clips) > shard_rows and rows_in_shard:
            flush()
            rows_in_shard = 0
        accompaniment = to_mono(accompaniment)
        pending["vocals"].append(pack(vocal, clips, size))
        pending["accompaniment"].append(pack(accompaniment, clips, size))
        vocals_file = (folder / f"{out_stem}.vocals.{shard:03d}.npy").relative_to(data_dir).as_posix()
        accompaniment_file = vocals_file.replace(".vocals.", ".accompaniment.")
        for i, clip in enumerate(clips):
            rows.append(
                {
                    "segment_id": segment_id(track["track_id"], clip.start, digest),
                    **{k: track.get(k) for k in ("track_id", "release", "artist", "album", "title", "over_genre")},
                    "start_s": clip.start / settings.sample_rate,
                    "end_s": clip.end / settings.sample_rate,
                    "voiced_s": clip.length / settings.sample_rate,
                    "padding_s": (size - clip.length) / settings.sample_rate,
                    "clip_dbfs": clip.dbfs,
                    "track_dbfs": track_dbfs,
                    "sample_rate": settings.sample_rate,
                    "audio_file": vocals_file,
                    "accompaniment_file": accompaniment_file,
                    "audio_row": rows_in_shard + i,
                    "params_hash": digest,
                    "stems": track["stems"],
                }
            )
        rows_in_shard += len(clips)
        if logger:
            logger.info(f"{track['path']}: {len(clips)} clips")
    flush()
    return ReleaseSegments(table_from_rows(rows, SEGMENTS_SCHEMA), table_from_rows(rejected, REJECTED_SCHEMA), files)


class PackedRows:
    """Rows of packed arrays (clips, or cached log-mels), in the order of a table, read from their
    memory-mapped files: ``rows[i:j]`` and :meth:`take` return arrays in table order however the
    rows are spread over files; nothing is read until asked for."""

    def __init__(self, files: Sequence[str], rows: Sequence[int], data_dir: Path) -> None:
        self.files = np.asarray(files, dtype=object)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.data_dir = Path(data_dir)
        self._maps: dict[str, np.ndarray] = {}

    @classmethod
    def from_table(cls, table: pa.Table, data_dir: Path, column: str = "audio_file", row: str = "audio_row"):
        return cls(table.column(column).to_pylist(), table.column(row).to_pylist(), data_dir)

    def _map(self, name: str) -> np.ndarray:
        if name not in self._maps:
            self._maps[name] = np.load(self.data_dir / name, mmap_mode="r")
        return self._maps[name]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self._map(self.files[0]).shape[1:]) if len(self) else (0,)

    @property
    def dtype(self) -> np.dtype:
        return self._map(self.files[0]).dtype if len(self) else np.dtype(np.int16)

    def take(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), *self.shape[1:]), self.dtype)
        files = self.files[indices]
        for name in dict.fromkeys(files.tolist()):
            where = np.flatnonzero(files == name)
            rows = self.rows[indices[where]]
            order = np.argsort(rows)  # ascending reads from the memory map
            out[where[order]] = self._map(name)[rows[order]]
        return out

    def __getitem__(self, index: slice) -> np.ndarray:
        return self.take(np.arange(len(self))[index])
