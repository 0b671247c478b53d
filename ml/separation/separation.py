"""Vocal isolation (Spleeter 2-stems) for every clean track, and the rules that need the vocals.

Two backends produce the same stems into the same kind of cache (``ml/separation/stems.py``):

* ``torch`` (default): the official weights in the PyTorch port of ``ml/separation/unet.py``, streamed in
  512-frame chunks (memory bounded whatever the length), chunks of several tracks batched
  together, on the device ``ml/device.py`` picks;
* ``spleeter``: Deezer's own implementation in its own environment, driven by the `vocals`
  asset through Dagster Pipes (``pipeline/spleeter_worker.py``) — the reference.

Both are keyed by the official checkpoint's SHA-256, so a track is separated once per backend.
After separation, :func:`assess` applies the rules that need the vocals: empty and silent
inputs, and instrumentals (a vocal stem that stays quiet for nearly all the track).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ml.separation.stems import STEM_SAMPLE_RATE, StemCache, StemEntry
from ml.tables import REJECTED_SCHEMA, table_from_rows

log = logging.getLogger(__name__)

BACKENDS = ("torch", "spleeter")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)

VOCALS_SCHEMA = pa.schema(
    [
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("release", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),  # the source file, relative to the library
        pa.field("artist", pa.string()),
        pa.field("album", pa.string()),
        pa.field("title", pa.string()),
        pa.field("over_genre", pa.string()),
        pa.field("vocals_path", pa.string(), nullable=False),  # relative to the stem cache (data/vocals)
        pa.field("accompaniment_path", pa.string(), nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("mix_dbfs", pa.float64()),
        pa.field("vocals_dbfs", pa.float64()),
        pa.field("vocal_to_mix_db", pa.float64()),  # energy of the vocal stem relative to the mix
        pa.field("vocal_active_fraction", pa.float64()),  # share of 100 ms frames with audible vocals
        pa.field("backend", pa.string(), nullable=False),
        pa.field("model_sha256", pa.string(), nullable=False),
        pa.field("stems", pa.string(), nullable=False),  # what made the stems: StemCache.identity
    ]
)


@dataclass(frozen=True)
class SeparationParams:
    backend: str = "torch"
    batch_chunks: int = 0  # 512-frame chunks (≈ 11.9 s each) per network call; 0: by device (ml/separation/unet.py)
    half_precision: bool = False  # float16 on CUDA under compute.precision auto
    precision: str = "auto"  # compute.precision (ml/device.py): auto | fp32 | bf16
    silent_below_dbfs: float = -60.0  # a whole mix quieter than this is silence
    vocal_frame_db: float = -15.0  # a 100 ms frame has vocals when its vocal level is within this of its mix level
    vocal_frame_floor_db: float = -40.0  # ...and above the track's mix level plus this (not a fade, not a pause)
    vocal_frame_floor_dbfs: float = -50.0  # ...and above this absolute level
    min_vocal_fraction: float = 0.01  # fewer vocal frames than this: instrumental

    @classmethod
    def from_params(cls, params: dict[str, Any], backend: str | None = None) -> SeparationParams:
        section = dict(params.get("separation", {}))
        section.pop("instrumental", None)
        rule = params.get("separation", {}).get("instrumental", {})
        fields = {k: v for k, v in {**section, **rule}.items() if k in cls.__dataclass_fields__}
        if backend:
            fields["backend"] = backend
        fields["precision"] = params.get("compute", {}).get("precision") or "auto"
        settings = cls(**fields)
        if settings.backend not in BACKENDS:
            raise ValueError(f"separation.backend must be one of {BACKENDS}, not {settings.backend!r}")
        return settings

    def dtype(self, device: Any) -> Any:
        """What the network computes in on ``device`` (``ml/device.py``): float32, bfloat16 or float16
        for the torch backend; the official backend is float32."""
        import torch

        from ml.device import pick_precision

        if self.backend != "torch":
            return torch.float32
        return pick_precision(device, self.precision, cuda_half=self.half_precision)


@dataclass(frozen=True)
class SeparationInput:
    track_id: str
    path: Path  # absolute


@dataclass(frozen=True)
class Failure:
    track_id: str
    reason: str
    detail: str


def stem_cache(root: Path, settings: SeparationParams, model_sha256: str, device: Any = "cpu") -> StemCache:
    """The stem cache of ``settings.backend`` with checkpoint ``model_sha256``; bfloat16 and float16
    stems (the torch backend in reduced precision: :meth:`SeparationParams.dtype`) have their own."""
    from ml.device import precision_name

    return StemCache(root, settings.backend, model_sha256, precision=precision_name(settings.dtype(device)))


def checkpoint_sha256(model_dir: Path) -> str:
    """The official checkpoint's id: the SHA-256 of its weights file (both backends use it)."""
    from ml.separation.unet import file_sha256

    data = Path(model_dir) / "model.data-00000-of-00001"
    if not data.is_file():
        raise FileNotFoundError(f"Spleeter 2-stems checkpoint not found in {model_dir}: run `make setup`")
    return file_sha256(data)


# --------------------------------------------------------------------------- torch backend


def _put_until(q: queue.Queue, item: Any, stopping: threading.Event, alive: Callable[[], bool] = lambda: True) -> bool:
    """Put ``item`` into the bounded ``q``, waiting while it is full; False if ``stopping`` is set
    (or ``alive()`` turns false) first."""
    while not stopping.is_set() and alive():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class _DecodeAhead(threading.Thread):
    """Decodes the tracks in order, in a background thread, a few blocks ahead of the network.

    :meth:`blocks` gives one track's stereo 44.1 kHz blocks; tracks must be read in order and to
    the end (the separator does). A track ffmpeg cannot decode ends early and is recorded in
    ``failures``."""

    def __init__(self, tracks: Sequence[SeparationInput], failures: dict[str, Failure], depth: int = 8) -> None:
        super().__init__(name="reconet-decode", daemon=True)
        self._tracks = list(tracks)
        self._queue: queue.Queue = queue.Queue(maxsize=depth)  # depth × 2^18 frames × 8 bytes: 16 MiB
        self._stopping = threading.Event()
        self._failures = failures

    def _put(self, item: tuple) -> bool:
        return _put_until(self._queue, item, self._stopping)

    def run(self) -> None:
        from ml.audio import AudioDecodeError, stream_audio, to_stereo

        for track in self._tracks:
            end: BaseException | None = None
            try:
                with contextlib.closing(stream_audio(track.path, STEM_SAMPLE_RATE)) as blocks:
                    for block in blocks:
                        if not self._put((track.track_id, to_stereo(block))):
                            return  # stopped: closing() ends ffmpeg
            except AudioDecodeError as exc:
                self._failures[track.track_id] = Failure(track.track_id, "undecodable", str(exc))
            except BaseException as exc:  # anything else is the caller's error, as without read-ahead
                end = exc
            if not self._put((track.track_id, end)):
                return

    def blocks(self, track_id: str) -> Iterator[np.ndarray]:
        while True:
            try:
                key, item = self._queue.get(timeout=1.0)
            except queue.Empty:
                if self.is_alive():
                    continue
                raise RuntimeError(f"the decoding thread ended before {track_id} was read") from None
            assert key == track_id, f"read-ahead out of order: {key} while reading {track_id}"
            if isinstance(item, np.ndarray):
                yield item
                continue
            if item is not None:
                raise item
            return

    def stop(self) -> None:
        self._stopping.set()
        self.join()


class _WriteBehind(threading.Thread):
    """Writes the separated blocks into their cache entries, in order, in a background thread,
    and commits each finished track. An error there is raised in the caller at its next
    :meth:`put` or at :meth:`finish`."""

    def __init__(self, cache: StemCache, failures: dict[str, Failure], device: Any, depth: int = 4) -> None:
        super().__init__(name="reconet-write", daemon=True)
        self.cache, self.failures, self.device = cache, failures, device
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stopping = threading.Event()
        self.error: BaseException | None = None
        self.writers: dict[str, Any] = {}
        self.finished: queue.SimpleQueue = queue.SimpleQueue()  # (track_id, entry or None), for the caller to log

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                block = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if block is None:
                return
            try:
                self._write(block)
            except BaseException as exc:
                self.error = exc
                return

    def _write(self, block: Any) -> None:
        track_id = block.key
        if track_id not in self.writers:
            self.writers[track_id] = self.cache.writer(track_id)
        self.writers[track_id].write(block.vocals, block.accompaniment, block.mix)
        if not block.last:
            return
        writer = self.writers.pop(track_id)
        if track_id in self.failures:
            writer.abort()
            self.finished.put((track_id, None))
            return
        entry = writer.commit(
            {"track_id": track_id, "backend": "torch", "model_sha256": self.cache.model_sha256,
             "model": "spleeter 2stems (PyTorch port)", "device": str(self.device), "precision": self.cache.precision}
        )  # fmt: skip
        self.finished.put((track_id, entry))

    def _raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, block: Any) -> None:
        if not _put_until(self._queue, block, self._stopping, self.is_alive):
            self._raise_error()
            raise RuntimeError("the stem writer stopped early")

    def finish(self) -> None:
        self.put(None)
        self.join()
        self._raise_error()

    def stop(self) -> None:
        """End early (the caller failed): no partial entry is left."""
        self._stopping.set()
        self.join()
        for writer in self.writers.values():
            writer.abort()
        self.writers.clear()


def keep_freed_memory() -> None:
    """Let glibc keep freed memory for reuse instead of handing it back to the kernel at once.

    Each chunk allocates the same few tens of MB of activations and spectra; by default glibc
    maps the largest afresh (and trims the heap) every time, so each chunk pays for page faults
    again: 4.4 µs a page on this project's VM, tens of ms per chunk. With fixed thresholds those
    pages are reused (freed memory stays mapped up to 512 MB). No-op where glibc is absent."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # the largest glibc allows; above it, mmap as before
        libc.mallopt(_M_TRIM_THRESHOLD, 512 << 20)
    except (OSError, AttributeError):
        pass


def separate_with_torch(
    tracks: Sequence[SeparationInput],
    cache: StemCache,
    weights: Path,
    device: Any,
    settings: SeparationParams,
    logger: logging.Logger | Any = None,
    on_progress: Callable[[str, float], None] | None = None,
) -> list[Failure]:
    """Separate ``tracks`` into ``cache``, in the precision its stems are (``cache.precision``, which
    :func:`stem_cache` chose); a track that cannot be decoded becomes a Failure.
    ``on_progress(track_id, seconds)`` is called after each separated block with its length.

    Three stages overlap: a thread decodes the next blocks (ffmpeg), the calling thread runs the
    network, and a thread encodes and commits the stems. Each holds at most a few blocks, so
    memory stays bounded whatever the lengths."""
    import torch

    from ml.device import precision_dtype
    from ml.separation.unet import SpleeterSeparator, load_spleeter

    logger = logger or log
    if not tracks:
        return []
    if torch.device(device).type == "cpu":
        keep_freed_memory()
    model = load_spleeter(weights, device, precision=precision_dtype(cache.precision))  # the cache's stems' precision
    separator = SpleeterSeparator(model, device, batch_chunks=settings.batch_chunks)
    failures: dict[str, Failure] = {}
    by_id = {t.track_id: t for t in tracks}
    started, audio_s, done = time.perf_counter(), 0.0, 0

    def report_finished() -> None:
        nonlocal audio_s, done
        while True:
            try:
                track_id, entry = writer.finished.get_nowait()
            except queue.Empty:
                return
            done += 1
            name = by_id[track_id].path.name
            if entry is None:
                logger.warning(f"[{done}/{len(tracks)}] {name}: {failures[track_id].detail}")
                continue
            audio_s += entry.meta["duration_s"]
            elapsed = time.perf_counter() - started
            logger.info(
                f"[{done}/{len(tracks)}] {name}: {entry.meta['duration_s']:.0f} s of audio "
                f"(so far {audio_s / 60:.1f} min in {elapsed:.0f} s, {audio_s / max(elapsed, 1e-9):.1f}× realtime)"
            )

    reader = _DecodeAhead(tracks, failures)
    writer = _WriteBehind(cache, failures, device)
    reader.start()
    writer.start()
    try:
        for block in separator.separate((t.track_id, reader.blocks(t.track_id)) for t in tracks):
            writer.put(block)
            if on_progress is not None:
                on_progress(block.key, len(block.mix) / STEM_SAMPLE_RATE)
            report_finished()
        writer.finish()
        report_finished()
    finally:
        reader.stop()
        writer.stop()  # after finish(): nothing left to abort
    return list(failures.values())


# --------------------------------------------------------------------------- rules that need vocals


@dataclass
class Assessment:
    vocals: pa.Table
    rejected: pa.Table


def vocal_active_fraction(entry: StemEntry, settings: SeparationParams) -> float:
    """Share of 100 ms frames where the vocal stem is audible against the mix.

    A frame counts when the vocal stem holds a real share of that frame's mix (within
    ``vocal_frame_db`` of it) and the frame is not near-silence (above the track's level plus
    ``vocal_frame_floor_db``, and above ``vocal_frame_floor_dbfs``). Compared with the frame's own
    mix rather than the whole track's, singing a few dB under the music still counts in quiet
    passages, while what the separation leaks from instruments stays out: on MIR-1K mixes, vocals
    10 dB under the music are audible in 15-90 % of the frames, 7 of the 10 accompaniments alone
    in none (the other 3 carry voice-like leads, vocals to any rule), the demo's instrumental in none."""
    active = vocal_active_frames(entry, settings)
    return float(np.mean(active)) if len(active) else 0.0


def vocal_active_frames(entry: StemEntry, settings: SeparationParams) -> np.ndarray:
    """Per 100 ms frame, whether the vocal stem is audible against the mix (see
    :func:`vocal_active_fraction`)."""
    vocal_db, mix_db = entry.activity()
    floor = max(entry.meta["mix_dbfs"] + settings.vocal_frame_floor_db, settings.vocal_frame_floor_dbfs)
    return (vocal_db - mix_db > settings.vocal_frame_db) & (vocal_db > floor)


def assess(
    tracks: pa.Table,
    cache: StemCache,
    failures: Sequence[Failure],
    settings: SeparationParams,
    stems_root: Path,
) -> Assessment:
    """Every clean track of a release ends up either in the vocals table or rejected (stage `vocals`)."""
    failed = {f.track_id: f for f in failures}
    kept, rejected = [], []
    for row in tracks.to_pylist():

        def reject(reason: str, detail: str, row: dict = row) -> None:
            rejected.append({"path": row["path"], "release": row["release"], "track_id": row["track_id"],
                             "stage": "vocals", "reason": reason, "detail": detail})  # fmt: skip

        if row["track_id"] in failed:
            f = failed[row["track_id"]]
            reject(f.reason, f.detail)
            continue
        entry = cache.get(row["track_id"])
        if entry is None:
            reject("not_separated", f"no {cache.backend} stems were produced for it (see the run's log)")
            continue
        meta = entry.meta
        if meta["duration_s"] <= 0:
            reject("empty", "decodes to no audio")
            continue
        if meta["mix_dbfs"] < settings.silent_below_dbfs:
            reject("silent", f"the whole track is at {meta['mix_dbfs']:.0f} dBFS (silence)")
            continue
        active = vocal_active_fraction(entry, settings)
        if active < settings.min_vocal_fraction:
            reject(
                "instrumental",
                f"vocals audible in {active:.1%} of the track (< {settings.min_vocal_fraction:.1%}); "
                f"vocal stem at {meta['vocal_to_mix_db']:.1f} dB of the mix",
            )
            continue
        kept.append(
            {
                **{k: row.get(k) for k in ("track_id", "release", "path", "artist", "album", "title", "over_genre")},
                "vocals_path": entry.vocals.relative_to(stems_root).as_posix(),
                "accompaniment_path": entry.accompaniment.relative_to(stems_root).as_posix(),
                "duration_s": meta["duration_s"],
                "mix_dbfs": meta["mix_dbfs"],
                "vocals_dbfs": meta["vocals_dbfs"],
                "vocal_to_mix_db": meta["vocal_to_mix_db"],
                "vocal_active_fraction": active,
                "backend": cache.backend,
                "model_sha256": cache.model_sha256,
                "stems": cache.identity,
            }
        )
    return Assessment(table_from_rows(kept, VOCALS_SCHEMA), table_from_rows(rejected, REJECTED_SCHEMA))
