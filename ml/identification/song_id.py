"""Which song is this? Song re-identification and genre from embeddings of short excerpts of the
library's mixes, searched in an approximate-nearest-neighbour index (the fingerprint report, seed 003).

* **Excerpts**: every library song (its mix, decoded with :func:`ml.audio.load_audio`, mono) as a
  log-mel spectrogram of ``f_min``–``f_max``; an excerpt is ``excerpt_s`` of it, one every
  ``hop_s``, and the same again at each of ``pitch_shifts`` semitones (:func:`song_entries`).
* **Embedding** (``song_index.embedding``): ``pooled_log_mel`` — the excerpt's mel power pooled
  over a coarse grid of bands × time steps, as each band's contour and the spectral envelope
  (:class:`PooledLogMel`; no training); or
  ``autoencoder`` — the bottleneck of the report's autoencoder with an auxiliary genre head
  (``ml/models/song_autoencoder.py``), trained on the library's excerpts. Which is the default is
  the benchmark's answer (README, "Song re-identification").
* **Index**: one file of embeddings per release (``releases/<release>.npz``, with the songs, the
  excerpts' offsets and the excerpts' 30 Tzanetakis features), and a merged hnswlib view for
  queries, updated in place: a changed or added release's entries are added, a removed or changed
  release's old entries are marked deleted (:func:`sync_view`). Each view is written as a new
  generation folder and ``current.json`` is switched to it atomically.
* **Query** (:func:`identify_song`): the excerpt's windows (one every ``query_hop_s``) each look up
  their ``k`` nearest entries; the song is the one with the highest sum over windows of its best
  cosine similarity; its offset is the most supported alignment (entry offset − window start); the
  k-nearest vote's confidence is the share of all neighbours that are of that song. A mean best
  similarity's margin over the next song's below the calibrated threshold answers "not in the
  library". The threshold is the ``1 − false_accept_rate`` quantile of that margin for excerpts
  of the index with their own song left out (a sample of its entries).
* **Duplicates**: songs that are one recording (a remaster, a re-encoded or damaged copy, one track
  on an album and a compilation) are found at index time (:func:`duplicate_groups`). The
  calibration leaves a song's copies out with it, a query's margin is over the best song that is
  not a copy of its best, and the answer names the copies (``same_recording_as``).
* **Genre**: a vote of the neighbours' songs' genres (seed 003), and seed 004's SVM on the 30
  Tzanetakis features of the excerpt (trained on the library's excerpts) beside it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml import config
from ml.tables import atomic_path, locked, scope_filename, write_text

EMBEDDINGS = ("pooled_log_mel", "autoencoder")


@dataclass(frozen=True)
class SongIndexParams:
    embedding: str = "pooled_log_mel"  # or autoencoder (see the module's docstring)
    sample_rate: int = 16000
    n_mels: int = 64
    n_fft: int = 1024
    hop_length: int = 256
    top_db: float = 80.0
    f_min: float = 300.0  # the mel bands' range: the telephone band, where a song survives most transforms
    f_max: float = 3400.0
    excerpt_s: float = 3.0  # the length of an indexed excerpt (the report's ~3 s)
    hop_s: float = 0.5  # one indexed excerpt every hop_s of a song
    query_hop_s: float = 0.125  # one window every query_hop_s of a query (an entry is then at most 1/16 s off)
    pool_mels: int = 16  # pooled_log_mel: mel bands x time steps of the grid
    pool_steps: int = 8
    envelope_weight: float = 0.3  # pooled_log_mel: the spectral envelope's share (the rest: the bands' contours)
    contour_floor_db: float = 16.0  # pooled_log_mel: a cell is raised to this far below its band's loudest step
    pitch_shifts: tuple[float, ...] = (-1.0, 1.0)  # semitones: each song is indexed at these pitches too
    k: int = 10  # neighbours per window (the report's K = 10)
    false_accept_rate: float = 0.01  # the calibrated threshold's target on excerpts of other songs
    calibration_entries: int = 2000  # entries sampled for the calibration
    calibration_query_s: float = 5.0  # the calibration's queries: this long (their windows' mean, as a query)
    duplicate_probes: int = 8  # queries per song (calibration_query_s long, spread over it) looking for its duplicates
    duplicate_margin: float = 0.8  # a probe whose best other song stands out this much has found a copy of itself
    duplicate_share: float = 0.3  # two songs are one recording when this share of one's probes find the other
    hnsw_m: int = 16
    hnsw_ef_construction: int = 100
    hnsw_ef_search: int = 64
    svm_excerpt_s: float = 5.0  # the genre SVM's training excerpts (one every svm_excerpt_s)
    # autoencoder
    embedding_size: int = 128  # the report's 1024; smaller trains in minutes on a CPU
    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 0.001
    genre_loss_scale: float = 0.1
    train_hop_s: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:  # a list from params.yaml or a manifest
        object.__setattr__(self, "pitch_shifts", tuple(float(x) for x in self.pitch_shifts))

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SongIndexParams:
        settings = cls(**config.section(params, "song_index", cls))
        if settings.embedding not in EMBEDDINGS:
            raise ValueError(f"song_index.embedding must be one of {', '.join(EMBEDDINGS)}, not {settings.embedding!r}")
        if settings.query_hop_s <= 0 or settings.hop_s <= 0 or settings.excerpt_s <= 0:
            raise ValueError("song_index.excerpt_s, hop_s and query_hop_s must be positive")
        return settings

    @property
    def calibration_run(self) -> int:
        """Entries in a row that make one calibration_query_s query (of excerpt_s windows, hop_s apart)."""
        return max(1, round((self.calibration_query_s - self.excerpt_s) / self.hop_s) + 1)

    @property
    def window_frames(self) -> int:
        return round(self.excerpt_s * self.sample_rate / self.hop_length)

    def frames(self, seconds: float) -> int:
        return max(1, round(seconds * self.sample_rate / self.hop_length))

    def digest(self) -> str:
        """What changes the embeddings (not the index's search settings, nor the calibration)."""
        keys = ("embedding", "sample_rate", "n_mels", "n_fft", "hop_length", "top_db", "f_min", "f_max", "excerpt_s",
                "pool_mels", "pool_steps", "envelope_weight", "contour_floor_db", "pitch_shifts", "embedding_size",
                "epochs", "batch_size", "learning_rate", "genre_loss_scale", "train_hop_s", "seed")  # fmt: skip
        shaping = {k: getattr(self, k) for k in keys}
        return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def song_log_mel(audio: np.ndarray, p: SongIndexParams, semitones: float = 0.0) -> np.ndarray:
    """(samples,) mono float audio at ``p.sample_rate`` -> (n_mels, frames) float32 log-mel in dB, its
    bands from ``p.f_min`` to ``p.f_max``. With ``semitones``, what the bands would see were the audio
    pitch-shifted by that much: each filter reads the spectrum at its frequencies divided by the
    shift's ratio (how a song is indexed at other pitches, ``p.pitch_shifts``)."""
    from ml.clips.features import FeatureParams, LogMel

    log_mel = LogMel(FeatureParams(sample_rate=p.sample_rate, n_mels=p.n_mels, n_fft=p.n_fft, hop_length=p.hop_length,
                                   f_min=p.f_min, f_max=p.f_max, top_db=p.top_db))  # fmt: skip
    if semitones:
        bank = log_mel.mel.mel_scale.fb.numpy()  # (frequencies, bands)
        freqs = np.linspace(0, p.sample_rate / 2, len(bank))
        ratio = 2 ** (semitones / 12)
        # a shifted song's power at f·ratio is the song's at f: its band sees the song's power through fb(f·ratio)
        warped = np.stack([np.interp(freqs * ratio, freqs, bank[:, m], right=0.0) for m in range(bank.shape[1])], 1)
        log_mel.mel.mel_scale.fb.copy_(torch.from_numpy(warped * ratio))
    with torch.inference_mode():
        return log_mel(torch.from_numpy(np.ascontiguousarray(audio, np.float32))[None])[0].numpy()


def decode_mono(path: Path, sample_rate: int) -> np.ndarray:
    """A file's audio as mono float32 at ``sample_rate`` (raises AudioDecodeError naming the file)."""
    from ml.audio import load_audio, to_mono

    return to_mono(load_audio(path, sample_rate, stereo=False))


def window_starts(n_frames: int, window: int, hop: int) -> np.ndarray:
    """Start frames of the windows of ``window`` frames every ``hop`` frames; one window (at 0) when
    the audio is shorter than a window (it is padded)."""
    if n_frames <= window:
        return np.zeros(1, np.int64)
    return np.arange(0, n_frames - window + 1, hop, dtype=np.int64)


def _padded(log_mel: np.ndarray, window: int) -> np.ndarray:
    if log_mel.shape[1] >= window:
        return log_mel
    floor = log_mel.min() if log_mel.size else -100.0
    return np.pad(log_mel, ((0, 0), (0, window - log_mel.shape[1])), constant_values=floor)


class PooledLogMel:
    """An excerpt's mel power pooled over a grid of ``pool_mels`` bands × ``pool_steps`` time steps
    (the log of each cell's mean power: a loud cell is barely changed by noise that fills the quiet
    ones), each band's steps at most ``contour_floor_db`` below its loudest, as two unit parts
    weighted by ``envelope_weight``: each band's contour (its level over the steps, the band's mean
    removed: what an equaliser or a telephone line leaves) and the spectral envelope (the bands'
    means, their mean removed).

    Measured in benchmarks/song_id.py's songs (73 indexed, 5 s excerpts): averaging the dB values
    instead over the full band found the right song first in 0.301 of the excerpts under pink noise at
    10 dB and 0.068 through a telephone band-pass; the power pooling, the 300–3400 Hz bands and the
    contours took that to 0.973 and 0.986 (README, "Song re-identification")."""

    name = "pooled_log_mel"

    def __init__(self, p: SongIndexParams) -> None:
        self.p = p
        self.dim = p.pool_mels * (p.pool_steps + 1)
        self.identity = p.digest()

    def embed(self, log_mel: np.ndarray, starts: np.ndarray) -> np.ndarray:
        p, window = self.p, self.p.window_frames
        power = 10 ** (_padded(log_mel, window).astype(np.float64) / 10)
        bands = np.array_split(np.arange(power.shape[0]), p.pool_mels)
        pooled = np.stack([power[b].mean(axis=0) for b in bands])  # (pool_mels, frames)
        cumulative = np.concatenate([np.zeros((p.pool_mels, 1)), np.cumsum(pooled, axis=1)], axis=1)
        edges = np.linspace(0, window, p.pool_steps + 1).round().astype(np.int64)
        lo, hi = starts[:, None] + edges[None, :-1], starts[:, None] + edges[None, 1:]
        grid = (cumulative[:, hi] - cumulative[:, lo]) / np.maximum(hi - lo, 1)  # (pool_mels, n, steps)
        grid = 10 * np.log10(np.maximum(grid, 1e-10)).transpose(1, 0, 2)  # (n, pool_mels, steps) in dB
        # the quiet steps of a band are where noise lands first: cut off below the floor in both
        grid = np.maximum(grid, grid.max(axis=2, keepdims=True) - p.contour_floor_db)
        envelope = grid.mean(axis=2, keepdims=True)
        contour = _unit((grid - envelope).reshape(len(starts), -1))
        envelope = _unit((envelope - envelope.mean(axis=1, keepdims=True)).reshape(len(starts), -1))
        w = p.envelope_weight
        return _unit(np.concatenate([contour * np.sqrt(1 - w), envelope * np.sqrt(w)], axis=1))


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class AutoencoderEmbedder:
    """The bottleneck of a trained :class:`ml.models.song_autoencoder.SongAutoencoder`, unit length."""

    name = "autoencoder"

    def __init__(self, p: SongIndexParams, model, identity: str) -> None:
        self.p, self.model, self.identity = p, model.eval(), identity
        self.dim = p.embedding_size

    def inputs(self, log_mel: np.ndarray, starts: np.ndarray) -> torch.Tensor:
        x = _padded(log_mel, self.p.window_frames)
        windows = np.stack([x[:, s : s + self.p.window_frames] for s in starts])
        return excerpt_images(torch.from_numpy(windows), self.p.top_db)

    @torch.inference_mode()
    def embed(self, log_mel: np.ndarray, starts: np.ndarray) -> np.ndarray:
        images = self.inputs(log_mel, starts)
        return _unit(torch.cat([self.model.encode(b) for b in images.split(256)]).numpy())


def excerpt_images(windows: torch.Tensor, top_db: float) -> torch.Tensor:
    """(n, n_mels, frames) log-mel excerpts -> (n, 1, 64, 64) in [0, 1] (each excerpt's own peak is 1;
    ``top_db`` below it is 0), the autoencoder's input (the report's 64 × 64 images)."""
    x = windows.float()
    x = (x - x.amax(dim=(1, 2), keepdim=True) + top_db) / top_db
    return torch.nn.functional.adaptive_avg_pool2d(x.clamp(0, 1)[:, None], (64, 64))


def train_autoencoder(log_mels: list[np.ndarray], genres: list[str], p: SongIndexParams, logger=None):
    """The report's autoencoder with its auxiliary genre classifier, trained on excerpts (one every
    ``train_hop_s``) of the songs' log-mels: the input is augmented (time roll, frequency and time
    masks, a shift of the mel bands, noise), the target the clean excerpt; the loss the
    reconstruction's mean absolute error plus ``genre_loss_scale`` × the genre's cross-entropy."""
    from ml.models.song_autoencoder import SongAutoencoder

    torch.manual_seed(p.seed)
    generator = torch.Generator().manual_seed(p.seed)
    names = sorted(set(genres))
    windows, labels = [], []
    for log_mel, genre in zip(log_mels, genres, strict=True):
        x = _padded(log_mel, p.window_frames)
        starts = window_starts(x.shape[1], p.window_frames, p.frames(p.train_hop_s))
        windows.append(excerpt_images(torch.from_numpy(np.stack([x[:, s : s + p.window_frames] for s in starts])),
                                      p.top_db))  # fmt: skip
        labels += [names.index(genre)] * len(starts)
    images, targets = torch.cat(windows), torch.tensor(labels)
    model = SongAutoencoder(p.embedding_size, len(names))
    optimiser = torch.optim.Adam(model.parameters(), lr=p.learning_rate)
    for epoch in range(p.epochs):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for start in range(0, len(order), p.batch_size):
            batch = order[start : start + p.batch_size]
            clean = images[batch]
            embedding = model.encode(augment_images(clean, generator))
            loss = (model.decode(embedding) - clean).abs().mean()
            if len(names) > 1:
                loss = loss + p.genre_loss_scale * torch.nn.functional.cross_entropy(model.genre(embedding),
                                                                                     targets[batch])  # fmt: skip
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        if logger:
            logger.info(f"song autoencoder epoch {epoch + 1}/{p.epochs}: loss {total / len(images):.4f}")
    return model.eval(), names


def augment_images(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The report's augmentations on (n, 1, 64, 64) excerpt images: a time roll of up to 4 steps, a
    shift of up to 2 mel bands (a pitch change), one frequency and one time mask of up to 8, noise."""
    from ml.clips.augment.spectrogram import frequency_mask, time_mask, time_roll

    n = len(images)
    x = time_roll(images[:, 0], torch.randint(-4, 5, (n,), generator=generator))
    shifted = torch.randint(-2, 3, (n,), generator=generator)
    x = torch.stack([torch.roll(row, int(s), dims=0) for row, s in zip(x, shifted, strict=True)])
    draw = lambda high: torch.randint(0, high, (n, 1), generator=generator)  # noqa: E731 - one mask per excerpt
    x = time_mask(frequency_mask(x, draw(56), draw(9), 0.0), draw(56), draw(9), 0.0)
    x = x + 0.05 * torch.rand(n, 1, 1, generator=generator) * torch.randn(x.shape, generator=generator)
    return x.clamp(0, 1)[:, None]


def save_autoencoder(model, genres: list[str], p: SongIndexParams, path: Path) -> str:
    """The weights (safetensors, atomically) with the genres and parameters; returns its identity."""
    from safetensors.torch import save_file

    meta = {"genres": json.dumps(genres), "params": json.dumps(asdict(p))}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=meta)
    return autoencoder_identity(path)


def autoencoder_identity(path: Path) -> str:
    with open(path, "rb") as f:
        return f"autoencoder-{hashlib.file_digest(f, 'sha256').hexdigest()[:16]}"


def load_embedder(p: SongIndexParams, autoencoder: Path | None = None):
    """The embedder of ``p.embedding`` (the autoencoder's weights file for ``autoencoder``)."""
    if p.embedding == "pooled_log_mel":
        return PooledLogMel(p)
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ml.models.song_autoencoder import SongAutoencoder

    if autoencoder is None or not Path(autoencoder).is_file():
        raise FileNotFoundError(f"{autoencoder}: no trained song autoencoder (materialise song_embedder first)")
    with safe_open(str(autoencoder), "pt") as f:
        genres = json.loads(f.metadata()["genres"])
    model = SongAutoencoder(p.embedding_size, len(genres))
    model.load_state_dict(load_file(str(autoencoder)))
    return AutoencoderEmbedder(p, model, autoencoder_identity(Path(autoencoder)))


# ---------------------------------------------------------------- one release's entries


@dataclass
class ReleaseEntries:
    """One release's songs and their excerpts' embeddings (what ``releases/<release>.npz`` holds)."""

    release: str
    embedder: str  # the embedder's identity: entries of another embedder are stale
    songs: list[dict[str, Any]]  # track_id, artist, title, album, path, genre
    vectors: np.ndarray  # (n, dim) float32 unit vectors
    song: np.ndarray  # (n,) int32: index into songs
    offset_s: np.ndarray  # (n,) float32: the excerpt's start in its song
    timbre: np.ndarray  # (m, 30) float32: Tzanetakis features of the genre SVM's excerpts
    timbre_song: np.ndarray  # (m,) int32

    def save(self, path: Path) -> Path:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, vectors=self.vectors, song=self.song, offset_s=self.offset_s, timbre=self.timbre,
                     timbre_song=self.timbre_song,
                     meta=np.array(json.dumps({"release": self.release, "embedder": self.embedder,
                                               "songs": self.songs})))  # fmt: skip
        return path

    @classmethod
    def load(cls, path: Path) -> ReleaseEntries:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            return cls(meta["release"], meta["embedder"], meta["songs"], z["vectors"], z["song"], z["offset_s"],
                       z["timbre"], z["timbre_song"])  # fmt: skip


def song_entries(audio: np.ndarray, embedder, p: SongIndexParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One song's excerpts: (embeddings, offsets in seconds, the genre SVM's Tzanetakis features). The
    embeddings are the excerpts' as the song is, then again at each of ``p.pitch_shifts`` (the same
    offsets): a query sung or played a semitone off meets its own pitch in the index, and the
    calibration, which queries the index with its own entries, counts them as it counts the rest."""
    from ml.models.classical import tzanetakis_features

    vectors = []
    for semitones in (0.0, *p.pitch_shifts):  # the song as it is, then at each of the other pitches
        log_mel = song_log_mel(audio, p, semitones)
        starts = window_starts(log_mel.shape[1], p.window_frames, p.frames(p.hop_s))
        vectors.append(embedder.embed(log_mel, starts))
    offsets = np.tile(starts * p.hop_length / p.sample_rate, len(vectors)).astype(np.float32)
    clip = round(p.svm_excerpt_s * p.sample_rate)
    clips = [audio[s : s + clip] for s in range(0, max(1, len(audio) - clip + 1), clip)]
    clips = np.stack([np.pad(c, (0, clip - len(c))) for c in clips]).astype(np.float32)
    timbre = tzanetakis_features(torch.from_numpy(clips), p.sample_rate).numpy()
    return np.concatenate(vectors), offsets, timbre


def release_entries(release: str, songs: list[dict[str, Any]], files: list[Path], embedder,
                    p: SongIndexParams, on_song=None) -> tuple[ReleaseEntries, list[tuple[dict, str]]]:  # fmt: skip
    """A release's entries from its songs' files, and the songs that could not be decoded (with the reason)."""
    from ml.audio import AudioDecodeError

    kept, vectors, song_of, offsets, timbre, timbre_song, failed = [], [], [], [], [], [], []
    for song, path in zip(songs, files, strict=True):
        try:
            audio = decode_mono(path, p.sample_rate)
            if len(audio) == 0:
                raise AudioDecodeError(f"{path}: decodes to no audio")
        except AudioDecodeError as exc:
            failed.append((song, str(exc)))
            continue
        v, o, t = song_entries(audio, embedder, p)
        vectors.append(v), offsets.append(o), timbre.append(t)
        song_of.append(np.full(len(v), len(kept), np.int32))
        timbre_song.append(np.full(len(t), len(kept), np.int32))
        kept.append(song)
        if on_song:
            on_song(len(kept), len(songs))
    dim = embedder.dim
    cat = lambda parts, shape, dtype: np.concatenate(parts) if parts else np.zeros(shape, dtype)  # noqa: E731
    entries = ReleaseEntries(release, embedder.identity, kept, cat(vectors, (0, dim), np.float32),
                             cat(song_of, (0,), np.int32), cat(offsets, (0,), np.float32),
                             cat(timbre, (0, 30), np.float32), cat(timbre_song, (0,), np.int32))  # fmt: skip
    return entries, failed


def index_folder(paths: config.Paths) -> Path:
    """Where the song index lives: ``<data>/song_index``."""
    return paths.data / "song_index"


def release_file(folder: Path, release: str) -> Path:
    return folder / "releases" / scope_filename(release, ".npz")


# ---------------------------------------------------------------- the merged view


def _file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def sync_view(folder: Path, releases: list[str], p: SongIndexParams, embedder_identity: str,
              logger=None) -> dict[str, Any]:  # fmt: skip
    """Bring the merged query view of ``folder`` up to date with the release files of ``releases``
    (others' files are deleted): a release whose file is new or changed gets its entries added (its
    old ones, if any, marked deleted); a release no longer listed has its entries marked deleted.
    Writes a new generation and switches ``current.json`` to it; returns its manifest."""
    import hnswlib

    folder = Path(folder)
    with locked(folder / "current.json"):
        started = time.perf_counter()
        wanted = {scope_filename(r, ".npz"): r for r in releases}
        for stray in (folder / "releases").glob("*.npz") if (folder / "releases").is_dir() else []:
            if stray.name not in wanted:
                stray.unlink()
        current = _read_manifest(folder)
        fresh = current is None or current["embedder"] != embedder_identity or current["dim"] is None
        present = {r: release_file(folder, r) for r in releases if release_file(folder, r).is_file()}
        digests = {r: _file_digest(f) for r, f in present.items()}
        loaded = {r: ReleaseEntries.load(f) for r, f in present.items()}
        loaded = {r: e for r, e in loaded.items() if e.embedder == embedder_identity}
        dim = next((e.vectors.shape[1] for e in loaded.values()), current["dim"] if not fresh else None)
        old = {} if fresh else current["releases"]
        changed = [r for r in loaded if r not in old or old[r]["sha"] != digests[r]]
        gone = [r for r in old if r not in loaded or r in changed]
        songs = [] if fresh else list(current["songs"])
        entry_song = np.zeros(0, np.int32) if fresh else _load_entries(folder, current)["song"]
        entry_offset = np.zeros(0, np.float32) if fresh else _load_entries(folder, current)["offset_s"]
        index = None
        if not fresh and current["live"] > 0 and (folder / current["generation"] / "index.hnsw").is_file():
            index = hnswlib.Index("ip", dim)
            index.load_index(str(folder / current["generation"] / "index.hnsw"), allow_replace_deleted=True)
        live = 0 if fresh else current["live"]
        removed = sum(old[r]["stop"] - old[r]["start"] for r in gone)
        added = sum(len(loaded[r].vectors) for r in changed)
        deleted_after = len(entry_song) - live + removed
        rebuild = index is None or deleted_after > live - removed + added  # more deleted slots than entries
        if rebuild:
            index, songs, entry_song, entry_offset, manifest_releases = None, [], [], [], {}
            changed, gone = sorted(loaded), []
        else:
            manifest_releases = {r: v for r, v in old.items() if r not in gone}
            for r in gone:
                for label in range(old[r]["start"], old[r]["stop"]):
                    index.mark_deleted(label)
                entry_song[old[r]["start"] : old[r]["stop"]] = -1
            entry_song, entry_offset = [entry_song], [entry_offset]
        next_label = sum(len(x) for x in entry_song)
        total_live = sum(len(loaded[r].vectors) for r in loaded)
        if index is None and total_live:
            index = hnswlib.Index("ip", dim)
            index.init_index(max(total_live, 16), p.hnsw_m, p.hnsw_ef_construction, p.seed, allow_replace_deleted=True)
        for r in changed:
            e = loaded[r]
            labels = np.arange(next_label, next_label + len(e.vectors))
            if len(labels):
                need = index.get_current_count() + len(labels)  # deleted slots may be reused
                if need > index.get_max_elements():
                    index.resize_index(max(need, 2 * index.get_max_elements()))
                index.add_items(e.vectors, labels, replace_deleted=True)
            entry_song.append(np.asarray(e.song + len(songs), np.int32))
            entry_offset.append(e.offset_s)
            manifest_releases[r] = {"sha": digests[r], "start": int(next_label), "stop": int(next_label + len(labels)),
                                    "songs": len(e.songs)}  # fmt: skip
            songs += [{**s, "release": r} for s in e.songs]
            next_label += len(labels)
        entry_song = np.concatenate(entry_song) if entry_song else np.zeros(0, np.int32)
        entry_offset = np.concatenate(entry_offset) if entry_offset else np.zeros(0, np.float32)
        live = int((entry_song >= 0).sum())
        generation = f"view-{uuid.uuid4().hex[:12]}"
        target = folder / generation
        target.mkdir(parents=True)
        if index is not None and live:
            index.save_index(str(target / "index.hnsw"))
        np.savez(target / "entries.npz", song=entry_song, offset_s=entry_offset)
        vectors = np.concatenate([loaded[r].vectors for r in loaded]) if loaded else np.zeros((0, dim or 1))
        owner = np.concatenate([_global_songs(loaded[r], songs, r) for r in loaded]) if loaded else np.zeros(0, int)
        groups = duplicate_groups(index if live else None, entry_song, vectors, owner, p)
        threshold = calibrate_threshold(vectors, owner, p, groups)
        svm_genres = _train_genre_svm(loaded, target / "genre_svm.skops")
        manifest = {"generation": generation, "embedder": embedder_identity, "embedding": p.embedding, "dim": dim,
                    "params": asdict(p), "releases": manifest_releases, "songs": songs, "live": live,
                    "threshold": threshold, "duplicates": groups, "svm_genres": svm_genres,
                    "build_s": round(time.perf_counter() - started, 3),
                    "rebuilt": bool(rebuild), "added_releases": sorted(changed),
                    "deleted_releases": sorted(set(gone) - set(changed)),
                    "audio_hours": round(float(sum(s.get("duration_s") or 0 for s in songs)) / 3600, 4)}  # fmt: skip
        manifest["index_bytes"] = sum(f.stat().st_size for f in target.iterdir())
        write_text(json.dumps(manifest, indent=1), target / "manifest.json")
        write_text(json.dumps({"generation": generation}), folder / "current.json")
        for old_generation in folder.glob("view-*"):
            if old_generation.name != generation:
                shutil.rmtree(old_generation, ignore_errors=True)
        if logger:
            logger.info(f"song index: {live} entries of {len(songs)} songs in {len(manifest_releases)} releases "
                        f"({'rebuilt' if rebuild else 'updated'} in {manifest['build_s']:.2f} s)")  # fmt: skip
        return manifest


def _global_songs(e: ReleaseEntries, songs: list[dict], release: str) -> np.ndarray:
    index = {(s["release"], s["track_id"]): i for i, s in enumerate(songs)}
    return np.array([index[(release, e.songs[i]["track_id"])] for i in e.song], np.int64)


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        generation = json.loads((Path(folder) / "current.json").read_text(encoding="utf-8"))["generation"]
        return json.loads((Path(folder) / generation / "manifest.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError, KeyError):
        return None


def _load_entries(folder: Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    with np.load(Path(folder) / manifest["generation"] / "entries.npz") as z:
        return {"song": z["song"].copy(), "offset_s": z["offset_s"].copy()}


def margin(best: np.ndarray | float, second: np.ndarray | float) -> np.ndarray | float:
    """How far the best song stands out: 1 − (its cosine distance / the next song's), in [0, 1]
    (a ratio test: near-duplicate songs are both close, a matching excerpt is much closer)."""
    return 1 - np.maximum(1 - best, 0) / np.maximum(1 - second, 1e-6)


def best_per_song(labels: np.ndarray, sims: np.ndarray, entry_song: np.ndarray) -> dict[int, np.ndarray]:
    """Each song among the windows' neighbours: its best cosine similarity in each window. A song
    absent from a window's neighbours scores that window's k-th similarity (at most that, there).
    The one scoring rule of queries (:meth:`SongIndex.identify`) and duplicate probes."""
    kth = sims[:, -1].astype(np.float64)
    best: dict[int, np.ndarray] = defaultdict(lambda: kth.copy())
    for w, (row, row_sims) in enumerate(zip(labels, sims, strict=True)):
        for label, sim in zip(row, row_sims, strict=True):
            song = int(entry_song[label])
            if song >= 0:
                best[song][w] = max(best[song][w], float(sim))
    return best


def duplicate_groups(index, entry_song: np.ndarray, vectors: np.ndarray, owner: np.ndarray,
                     p: SongIndexParams) -> list[list[int]]:  # fmt: skip
    """Songs that are one recording (a remaster, a re-encoded or damaged copy, the same track on an
    album and a compilation): groups of two or more song numbers. Each song sends
    ``duplicate_probes`` queries (runs of its own entries, spread over it) to the index; when
    ``duplicate_share`` of them find another song standing out from the rest by
    ``duplicate_margin`` (their own song left out), the two are linked, and linked songs form a group.

    Why: the "not in the library" threshold is calibrated on the index's own songs with their song
    left out; a song with a copy in the index then looks like an unknown excerpt that matches
    perfectly, and a few such copies set the threshold above every true match (measured in
    benchmarks/song_id.py: 73 songs, two planted demo copies and one game tune shipped twice put the
    margin's 99 % quantile at 0.976 while true 5 s excerpts had a median margin of 0.70)."""
    if index is None or not len(vectors):
        return []
    index.set_ef(max(p.hnsw_ef_search, 2 * p.k))
    order = np.argsort(owner, kind="stable")
    vectors, owner = vectors[order], owner[order]
    songs, first = np.unique(owner, return_index=True)
    last = np.concatenate([first[1:], [len(owner)]])
    run = p.calibration_run
    live = int((entry_song >= 0).sum())
    parent = {int(s): int(s) for s in songs}

    def root(song: int) -> int:
        while parent[song] != song:
            parent[song] = parent[parent[song]]
            song = parent[song]
        return song

    for song, lo, hi in zip(songs.tolist(), first.tolist(), last.tolist(), strict=True):
        starts = np.unique(np.linspace(lo, max(lo, hi - run), min(p.duplicate_probes, hi - lo)).astype(int))
        runs = [vectors[np.minimum(np.arange(a, a + run), hi - 1)] for a in starts]
        found: Counter = Counter()
        # the probe's own entries are filtered out of the search: with smooth embeddings (overlapping
        # excerpts, repeated choruses) they would fill every neighbour slot and hide the copy
        others_only = lambda label, own=song: entry_song[label] != own  # noqa: E731
        k = min(2 * p.k, live - int((entry_song == song).sum()))
        for windows in runs if k > 0 else []:
            try:
                labels, distances = index.knn_query(windows, k, num_threads=1, filter=others_only)
            except RuntimeError:  # hnswlib found fewer than k entries passing the filter
                continue
            scores = best_per_song(labels, 1.0 - distances, entry_song)
            others = sorted(((v.mean(), s) for s, v in scores.items() if s != song), reverse=True)
            if len(others) >= 2 and margin(others[0][0], others[1][0]) >= p.duplicate_margin:
                found[others[0][1]] += 1
        for other, n in found.items():
            if n >= p.duplicate_share * len(starts):
                parent[root(song)] = root(other)
    groups: dict[int, list[int]] = defaultdict(list)
    for song in parent:
        groups[root(song)].append(song)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def calibrate_threshold(vectors: np.ndarray, owner: np.ndarray, p: SongIndexParams,
                        groups: list[list[int]] | None = None) -> float | None:  # fmt: skip
    """The threshold on the margin (best song's similarity − the next song's): the ``1 −
    false_accept_rate`` quantile of that margin for sampled entries with their own song, and the
    songs of its duplicate group (:func:`duplicate_groups`), left out, as an excerpt of a song not
    in the library meets the index; samples whose passage another song holds too (a margin of at
    least ``duplicate_margin``, as a copy has) are not counted. (A margin, not the similarity
    itself: quiet or plain passages are alike in every song.) None with fewer than three songs."""
    order = np.argsort(owner, kind="stable")
    vectors, owner = vectors[order], owner[order]
    songs, first = np.unique(owner, return_index=True)
    if len(songs) < 3:
        return None
    column = {int(s): i for i, s in enumerate(songs)}
    group_columns = {column[s]: [column[m] for m in g if m in column] for g in groups or [] for s in g if s in column}
    rng = np.random.default_rng(p.seed)
    sample = rng.choice(len(vectors), min(len(vectors), p.calibration_entries), replace=False)
    run = p.calibration_run
    last = np.concatenate([first[1:], [len(owner)]])[np.searchsorted(songs, owner)] - 1  # each song's last entry
    margins = []
    for chunk in np.array_split(sample, max(1, len(sample) // 256)):
        rows = np.minimum(chunk[:, None] + np.arange(run)[None], last[chunk][:, None])  # consecutive excerpts
        per_song = np.maximum.reduceat(vectors[rows.ravel()] @ vectors.T, first, axis=1)
        per_song = per_song.reshape(len(chunk), run, len(songs)).mean(axis=1)  # the query's mean best per song
        own = np.searchsorted(songs, owner[chunk])
        per_song[np.arange(len(chunk)), own] = -np.inf  # leave its song out, and its copies
        for i, c in enumerate(own):
            per_song[i, group_columns.get(int(c), [])] = -np.inf
        per_song = per_song[np.isfinite(per_song).sum(axis=1) >= 2]  # two other songs to compare
        top = -np.partition(-per_song, 1, axis=1)[:, :2]
        margins.append(margin(top[:, 0], top[:, 1]))
    margins = np.concatenate(margins)
    # a passage that another song holds too (standing out as a copy does: duplicate_margin) is in the
    # library, not a stranger's excerpt: e.g. a game tune and its variation sharing a section, which
    # put the quantile at 0.70 against 0.2-0.3 without them (benchmarks/song_id.py)
    margins = margins[margins < p.duplicate_margin]
    return float(np.quantile(margins, 1 - p.false_accept_rate)) if len(margins) else None


def _train_genre_svm(loaded: dict[str, ReleaseEntries], path: Path) -> list[str]:
    """Seed 004's SVM on the 30 Tzanetakis features of every song's excerpts, with the songs'
    genres; saved at ``path`` (skops). Returns its genres ([] and no file with fewer than two)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from ml.identification.backend import save_backend

    x = [e.timbre for e in loaded.values()]
    y = [[e.songs[i].get("genre") or "Other" for i in e.timbre_song] for e in loaded.values()]
    y = [g for part in y for g in part]
    if len(set(y)) < 2:
        return sorted(set(y))
    svm = make_pipeline(StandardScaler(), SVC(C=10.0, gamma="scale"))
    svm.fit(np.concatenate(x), y)
    save_backend(svm, path)
    return sorted(set(y))


# ---------------------------------------------------------------- queries


class SongIndex:
    """The current merged view of a song index folder, loaded once for queries."""

    def __init__(self, folder: Path, embedder=None, autoencoder: Path | None = None) -> None:
        import hnswlib

        self.folder = Path(folder)
        manifest = _read_manifest(self.folder)
        if manifest is None:
            raise FileNotFoundError(f"{self.folder}: no song index (materialise song_index first)")
        self.manifest = manifest
        self.p = SongIndexParams(**manifest["params"])
        self.embedder = embedder or load_embedder(self.p, autoencoder)
        if self.embedder.identity != manifest["embedder"]:
            raise ValueError(f"{self.folder}: the index was built with embedder {manifest['embedder']}, "
                             f"this one is {self.embedder.identity} (materialise song_index again)")  # fmt: skip
        self.songs = manifest["songs"]
        # song -> the songs of its duplicate group (itself included): one recording in several places
        self.copies = {s: group for group in manifest.get("duplicates", []) for s in group}
        entries = _load_entries(self.folder, manifest)
        self.entry_song, self.entry_offset = entries["song"], entries["offset_s"]
        self.index = None
        if manifest["live"]:
            self.index = hnswlib.Index("ip", manifest["dim"])
            self.index.load_index(str(self.folder / manifest["generation"] / "index.hnsw"))
            self.index.set_ef(max(self.p.hnsw_ef_search, self.p.k))
            self.index.set_num_threads(1)
        self.svm = None
        if (self.folder / manifest["generation"] / "genre_svm.skops").is_file():
            from ml.identification.backend import load_backend

            self.svm = load_backend(self.folder / manifest["generation"] / "genre_svm.skops")

    @property
    def threshold(self) -> float | None:
        return self.manifest["threshold"]

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(labels, cosine similarities) of each vector's ``k`` nearest live entries."""
        k = min(k, self.manifest["live"])
        labels, distances = self.index.knn_query(vectors, k)
        return labels, 1.0 - distances

    def identify(self, audio: np.ndarray, k: int | None = None) -> dict[str, Any]:
        """The answer for an excerpt (mono float32 at the index's sample rate)."""
        from ml.models.classical import HOP, N_FFT, tzanetakis_features

        started = time.perf_counter()
        p, k = self.p, k or self.p.k
        result: dict[str, Any] = {"in_library": False, "song": None, "offset_s": None, "confidence": 0.0,
                                  "score": None, "margin": None, "threshold": self.threshold, "candidates": [],
                                  "genre": None, "genre_confidence": None, "genre_svm": None, "windows": 0,
                                  "same_recording_as": []}  # fmt: skip
        if self.index is None or len(audio) == 0:
            result["query_ms"] = (time.perf_counter() - started) * 1e3
            return result
        log_mel = song_log_mel(audio, p)
        starts = window_starts(log_mel.shape[1], p.window_frames, p.frames(p.query_hop_s))
        labels, sims = self.search(self.embedder.embed(log_mel, starts), k)
        window_s = starts * p.hop_length / p.sample_rate
        kth = sims[:, -1].astype(np.float64)
        best = best_per_song(labels, sims, self.entry_song)
        votes: Counter = Counter()
        alignments: dict[int, Counter] = defaultdict(Counter)
        genres: Counter = Counter()
        for w, (row, row_sims) in enumerate(zip(labels, sims, strict=True)):
            for label, sim in zip(row, row_sims, strict=True):
                song = int(self.entry_song[label])
                if song < 0:
                    continue
                votes[song] += 1
                align = round(float(self.entry_offset[label] - window_s[w]) / p.query_hop_s) * p.query_hop_s
                alignments[song][round(align, 3)] += float(sim)
                genres[self.songs[song].get("genre") or "Other"] += 1
        ranked = sorted(best, key=lambda s: -best[s].sum())
        total = sum(votes.values()) or 1
        result["candidates"] = [{**self._song(s), "score": float(best[s].mean()), "votes": votes[s] / total,
                                 "offset_s": max(0.0, alignments[s].most_common(1)[0][0])}
                                for s in ranked[:3]]  # fmt: skip
        result["windows"] = len(starts)
        if ranked:
            top = result["candidates"][0]
            copies = self.copies.get(ranked[0], [])  # its duplicates: the margin is over the best other recording
            rivals = [s for s in ranked[1:] if s not in copies]
            second = float(best[rivals[0]].mean()) if rivals else float(kth.mean())
            result["same_recording_as"] = [self._song(s) for s in copies if s != ranked[0]]
            result.update(score=top["score"], margin=float(margin(top["score"], second)), confidence=top["votes"],
                          offset_s=top["offset_s"])  # fmt: skip
            result["in_library"] = self.threshold is None or result["margin"] >= self.threshold
            result["song"] = {k: top[k] for k in ("track_id", "artist", "title", "album", "release", "path", "genre")
                              if k in top} if result["in_library"] else None  # fmt: skip
            genre, count = genres.most_common(1)[0]
            result.update(genre=genre, genre_confidence=count / sum(genres.values()))
        if self.svm is not None and len(audio) >= N_FFT + HOP:
            features = tzanetakis_features(torch.from_numpy(np.ascontiguousarray(audio, np.float32))[None],
                                           p.sample_rate).numpy()  # fmt: skip
            result["genre_svm"] = str(self.svm.predict(features)[0])
        result["query_ms"] = (time.perf_counter() - started) * 1e3
        return result

    def _song(self, song: int) -> dict[str, Any]:
        return dict(self.songs[song])


def identify_song(index: SongIndex, source: Path | bytes, name: str | None = None) -> dict[str, Any]:
    """An excerpt (a path, or an encoded file's bytes) looked up: a result with ``status`` ``ok`` or
    ``error`` (with the reason, naming the file); never raises for a bad file."""
    import tempfile

    from ml.audio import AudioDecodeError

    started = time.perf_counter()
    label = name or (str(source) if not isinstance(source, bytes | bytearray) else "upload")
    result: dict[str, Any] = {"file": label, "status": "ok", "error": None}
    try:
        with tempfile.TemporaryDirectory(prefix="reconet-song-") as tmp:
            path = Path(source) if not isinstance(source, bytes | bytearray) else Path(tmp) / "excerpt"
            if isinstance(source, bytes | bytearray):
                path.write_bytes(source)
            if not path.is_file():
                raise FileNotFoundError(f"{label}: no such file")
            audio = decode_mono(path, index.p.sample_rate)
            if len(audio) == 0:
                raise ValueError(f"{label}: empty: decodes to no audio")
        result.update(index.identify(audio), duration_s=len(audio) / index.p.sample_rate)
    except (OSError, ValueError, AudioDecodeError) as exc:
        message = str(exc).replace(str(Path(tempfile.gettempdir())), "")
        result.update(status="error", error=message if message.startswith(label) else f"{label}: {message}")
    result["seconds"] = time.perf_counter() - started
    return result


def song_result_text(result: dict[str, Any]) -> str:
    """``reconet identify --song``'s plain-text report of one result."""
    name = result["file"]
    if result["status"] == "error":
        return f"{name}: error: {result['error'].removeprefix(f'{name}: ')}"
    rule = f"margin {result['margin']:.3f}" if result["margin"] is not None else "no index entries"
    if result["threshold"] is not None and result["margin"] is not None:
        rule += f" {'>=' if result['in_library'] else '<'} threshold {result['threshold']:.3f}"
    if result["in_library"]:
        s = result["song"]
        head = (f"{name}: {s.get('artist')} - {s.get('title')} ({s.get('release')}) at {_clock(result['offset_s'])}, "
                f"{rule}, vote {result['confidence']:.2f}")  # fmt: skip
    else:
        closest = result["candidates"][0] if result["candidates"] else None
        nearest = f"; closest: {closest.get('artist')} - {closest.get('title')}" if closest else ""
        head = f"{name}: not in the library ({rule}{nearest})"
    lines = [head]
    if result["in_library"] and result.get("same_recording_as"):
        copies = "; ".join(f"{c.get('artist')} - {c.get('title')} ({c.get('release')})"
                           for c in result["same_recording_as"])  # fmt: skip
        lines.append(f"  the same recording in the library as: {copies}")
    if result["genre"] is not None:
        svm = f", SVM on the 30 Tzanetakis features: {result['genre_svm']}" if result["genre_svm"] else ""
        lines.append(f"  genre: {result['genre']} (kNN vote {result['genre_confidence']:.2f}){svm}")
    for c in result["candidates"]:
        lines.append(f"    {c.get('artist')} - {c.get('title')}: score {c['score']:.3f}, vote {c['votes']:.2f}, "
                     f"at {_clock(c['offset_s'])}")  # fmt: skip
    return "\n".join(lines)


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"
