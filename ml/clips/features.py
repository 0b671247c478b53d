"""Log-mel spectrograms of every segment, computed in batches on the best device and cached.

The parameters are the CRNN report's: 16 kHz, 128 mel bands, n_fft 2048, hop 512 (all in the
``features`` section of params.yaml). Power mel spectrogram (torchaudio), then decibels with the
floor ``top_db`` below each clip's own peak — per clip, so a clip's features never depend on which
clips share its batch.

The cache holds one float16 array per release and parameter set, memory-mappable::

    <data>/features/<params hash[:12]>/<release file>.<inputs>.npy      (clips, n_mels, frames) float16
    <data>/features/<params hash[:12]>/<release file>.<inputs>.ids.json  the segment id of each row

``<inputs>`` is a hash of the segment ids and of the stems each clip was cut from (the segments'
``stems`` column: separation backend, checkpoint, precision; :func:`entry_name`): a segment id
names a track, a start and the segmentation parameters, not the stems, so stems of another backend
or checkpoint give the same ids and must still give new log-mels. The array is written
(atomically) before its index, so an index always describes a complete array. Unchanged
parameters, segments and stems mean nothing is recomputed; a changed feature parameter writes a
new folder and leaves the segments alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio

from ml import config
from ml.tables import atomic_path, write_text


@dataclass(frozen=True)
class FeatureParams:
    sample_rate: int = 16000
    n_mels: int = 128
    n_fft: int = 2048
    hop_length: int = 512
    f_min: float = 0.0
    f_max: float | None = None  # None: half the sample rate
    top_db: float = 80.0
    batch_size: int = 64  # clips per batch (does not change the values)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> FeatureParams:
        section = config.section(params, "features", cls)
        return cls(**section)

    def digest(self) -> str:
        """Hash of the parameters that change the values (not the batch size)."""
        shaping = {k: v for k, v in asdict(self).items() if k != "batch_size"}
        return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


class LogMel(torch.nn.Module):
    """(batch, samples) float audio -> (batch, n_mels, frames) log-mel in dB."""

    def __init__(self, params: FeatureParams) -> None:
        super().__init__()
        self.top_db = params.top_db
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=params.sample_rate, n_fft=params.n_fft, hop_length=params.hop_length,
            n_mels=params.n_mels, f_min=params.f_min, f_max=params.f_max, power=2.0,
            # librosa's defaults (the reports' tool): Slaney mel scale and norm, zero-padded centring
            mel_scale="slaney", norm="slaney", pad_mode="constant",
        )  # fmt: skip

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        db = 10 * torch.log10(self.mel(audio).clamp_min(1e-10))
        peak = db.amax(dim=(-2, -1), keepdim=True)
        return torch.maximum(db, peak - self.top_db)


def frames_for(samples: int, params: FeatureParams) -> int:
    return samples // params.hop_length + 1  # centred frames


@dataclass
class FeatureCache:
    root: Path
    params: FeatureParams

    @property
    def directory(self) -> Path:
        return self.root / self.params.digest()[:12]

    def paths(self, name: str) -> tuple[Path, Path]:
        return self.directory / f"{name}.npy", self.directory / f"{name}.ids.json"

    def is_current(self, name: str, segment_ids: Sequence[str]) -> bool:
        array, index = self.paths(name)
        try:
            return array.exists() and json.loads(index.read_text(encoding="utf-8")) == list(segment_ids)
        except (FileNotFoundError, ValueError):
            return False

    def load(self, name: str) -> np.ndarray:
        """(clips, n_mels, frames) float16, memory-mapped."""
        return np.load(self.paths(name)[0], mmap_mode="r")


@torch.inference_mode()
def compute_log_mels(
    clips: np.ndarray, params: FeatureParams, device: torch.device, on_batch: Any = None
) -> np.ndarray:
    """Log-mels of (clips, samples) int16 or float audio, in batches on ``device``: float16 array."""
    log_mel = LogMel(params).to(device)
    out = np.empty((len(clips), params.n_mels, frames_for(clips.shape[1], params)), np.float16)
    scale = 1 / 32767 if clips.dtype == np.int16 else 1.0
    for start in range(0, len(clips), params.batch_size):
        batch = torch.from_numpy(np.asarray(clips[start : start + params.batch_size], np.float32) * scale)
        out[start : start + len(batch)] = log_mel(batch.to(device)).half().cpu().numpy()
        if on_batch:
            on_batch(start + len(batch), len(clips))
    return out


def entry_name(release_name: str, segment_ids: Sequence[str], stems: Sequence[str]) -> str:
    """A release's cache entry: named after its segments and what made the stems each was cut from
    (``stems``, the segments table's column), so other stems never reuse these log-mels and new
    segments never overwrite the array that the release's current `features` table points to."""
    if len(stems) != len(segment_ids):
        raise ValueError(f"{release_name}: {len(stems)} stem identities for {len(segment_ids)} segments")
    inputs = json.dumps([list(segment_ids), list(stems)])
    return f"{release_name}.{hashlib.sha256(inputs.encode()).hexdigest()[:10]}"


def cache_release_features(
    cache: FeatureCache, name: str, segment_ids: Sequence[str], clips: np.ndarray, device: torch.device,
    on_batch: Any = None, in_use: Sequence[Path] = (),
) -> bool:  # fmt: skip
    """Compute and store a release's log-mels (entry ``name``, see :func:`entry_name`) unless the
    cache already holds exactly these segments under these parameters; returns whether anything
    was computed. Other entries of the release not ``in_use`` (older generations) are removed."""
    release = name.rsplit(".", 1)[0]
    entry_of = lambda path: path.name.removesuffix(".ids.json").removesuffix(".npy")  # noqa: E731
    keep = {entry_of(Path(p)) for p in in_use} | {name}
    for old in cache.directory.glob(f"{release}.*"):
        if entry_of(old) not in keep:
            old.unlink()
    if cache.is_current(name, segment_ids):
        return False
    if len(segment_ids) != len(clips):
        raise ValueError(f"{name}: {len(segment_ids)} segment ids for {len(clips)} clips")
    features = compute_log_mels(clips, cache.params, device, on_batch)
    array, index = cache.paths(name)
    with atomic_path(array) as tmp, open(tmp, "wb") as f:
        np.save(f, features)
    write_text(json.dumps(list(segment_ids)), index)
    return True
