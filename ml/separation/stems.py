"""The vocal-stem cache: separated stems on disk, addressed by (track, backend, model), written atomically.

Layout under ``<data>/vocals/``::

    <backend>-<model sha256[:12]>[-bf16|-fp16]/<track_id[:2]>/<track_id>/
        vocals.flac          44.1 kHz stereo, 16-bit FLAC
        accompaniment.flac   the rest of the mix (kept for remix augmentation)
        activity.npy         (2, frames) float32: vocal and mix RMS in dBFS per 100 ms frame
        meta.json            written last: the entry is complete exactly when this file exists

A ``track_id`` is derived from the audio content, so the key is (audio hash, model, backend, and
``-bf16`` or ``-fp16`` when the torch backend ran in bfloat16 or float16: ``ml/device.py``).
An entry is built in a temporary folder beside its final place and renamed into place, so a
killed run leaves no partial stem; :meth:`StemCache.clean_partial` removes what it left.

This module needs only numpy, soundfile and ``ml.audio`` (numpy only): the official-Spleeter
worker imports it too, from its own environment.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from ml.audio import to_mono

STEM_SAMPLE_RATE = 44100
ACTIVITY_FRAME = 4410  # samples: 100 ms frames for the vocal-activity profile
SILENCE_DB = -120.0  # the floor of the activity profile
META = "meta.json"


def _db(energy: np.ndarray | float, count: np.ndarray | float) -> np.ndarray:
    rms = np.sqrt(np.asarray(energy, np.float64) / np.maximum(count, 1))
    return np.maximum(20 * np.log10(np.maximum(rms, 1e-12)), SILENCE_DB)


class _FrameEnergy:
    """Sum of squares of a mono signal per ACTIVITY_FRAME samples, fed in blocks of any size.

    Squares are summed in float32 within a frame (4,410 samples: a relative error near 1e-6, far
    below what a dB figure shows) and in float64 across frames."""

    def __init__(self) -> None:
        self.carry = np.zeros(0, np.float32)
        self.frames: list[np.ndarray] = []
        self.samples = 0

    def add(self, mono: np.ndarray) -> None:
        mono = np.asarray(mono, np.float32)
        x = np.concatenate([self.carry, mono]) if len(self.carry) else mono
        n = len(x) // ACTIVITY_FRAME * ACTIVITY_FRAME
        if n:
            whole = x[:n].reshape(-1, ACTIVITY_FRAME)
            self.frames.append(np.einsum("ij,ij->i", whole, whole).astype(np.float64))
        self.carry = x[n:].copy()
        self.samples += len(mono)

    def _energies(self) -> list[np.ndarray]:
        tail = [np.array([np.dot(self.carry, self.carry)], np.float64)] if len(self.carry) else []
        return self.frames + tail

    @property
    def total(self) -> float:
        return float(sum(e.sum() for e in self._energies()))

    def frame_db(self) -> np.ndarray:
        energies = self._energies()
        counts = [np.full(len(e), ACTIVITY_FRAME) for e in self.frames]
        if len(self.carry):
            counts.append(np.array([len(self.carry)]))
        if not energies:
            return np.zeros(0, np.float32)
        return _db(np.concatenate(energies), np.concatenate(counts)).astype(np.float32)


@dataclass
class StemEntry:
    """A finished cache entry."""

    directory: Path
    meta: dict[str, Any]

    @property
    def vocals(self) -> Path:
        return self.directory / "vocals.flac"

    @property
    def accompaniment(self) -> Path:
        return self.directory / "accompaniment.flac"

    def activity(self) -> np.ndarray:
        """(2, frames): vocal and mix RMS in dBFS per 100 ms."""
        return np.load(self.directory / "activity.npy")


class StemWriter:
    """Writes one entry block by block; :meth:`commit` renames it into place."""

    def __init__(self, final_dir: Path) -> None:
        self.final_dir = Path(final_dir)
        self.final_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = self.final_dir.with_name(f".{self.final_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
        self.tmp_dir.mkdir()
        self._files = {
            name: sf.SoundFile(self.tmp_dir / f"{name}.flac", "w", STEM_SAMPLE_RATE, 2, "PCM_16", format="FLAC")
            for name in ("vocals", "accompaniment")
        }
        self._vocal_energy = _FrameEnergy()
        self._mix_energy = _FrameEnergy()
        self._clipped = 0

    def write(self, vocals: np.ndarray, accompaniment: np.ndarray, mix: np.ndarray) -> None:
        for name, block in (("vocals", vocals), ("accompaniment", accompaniment)):
            self._clipped += int(np.count_nonzero(np.abs(block) > 1.0))
            self._files[name].write(np.clip(block, -1.0, 1.0))
        self._vocal_energy.add(to_mono(vocals))
        self._mix_energy.add(to_mono(mix))

    def commit(self, meta: dict[str, Any]) -> StemEntry:
        for f in self._files.values():
            f.close()
        activity = np.stack([self._vocal_energy.frame_db(), self._mix_energy.frame_db()])
        np.save(self.tmp_dir / "activity.npy", activity)
        v, m = self._vocal_energy, self._mix_energy
        meta = {
            **meta,
            "duration_s": m.samples / STEM_SAMPLE_RATE,
            "sample_rate": STEM_SAMPLE_RATE,
            "mix_dbfs": float(_db(m.total, m.samples)),
            "vocals_dbfs": float(_db(v.total, v.samples)),
            # share of the mix's energy that the vocal stem holds, in dB (−inf for silence)
            "vocal_to_mix_db": 10 * math.log10(v.total / m.total) if v.total > 0 and m.total > 0 else float("-inf"),
            "clipped_samples": self._clipped,
        }
        (self.tmp_dir / META).write_text(json.dumps(meta, indent=1, allow_nan=True), encoding="utf-8")
        if self.final_dir.exists():  # a stale or concurrent entry under the same key: replace it
            shutil.rmtree(self.final_dir, ignore_errors=True)
        try:
            os.replace(self.tmp_dir, self.final_dir)
        except OSError:  # a concurrent run landed the same key (same audio, same model) first
            if not (self.final_dir / META).exists():
                raise
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
        return StemEntry(self.final_dir, meta)

    def abort(self) -> None:
        for f in self._files.values():
            if not f.closed:
                f.close()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def __enter__(self) -> StemWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp_dir.exists():
            self.abort()


class StemCache:
    """Finished stems for one (backend, model, precision): ``root/<backend>-<model[:12]>[-bf16|-fp16]/<id[:2]>/<id>/``
    (``-bf16``, ``-fp16``: separated in bfloat16 or float16, which give other stems than float32)."""

    def __init__(self, root: str | Path, backend: str, model_sha256: str, half_precision: bool = False,
                 precision: str = "fp32") -> None:  # fmt: skip
        self.backend = backend
        self.model_sha256 = model_sha256
        self.precision = "fp16" if half_precision else precision  # fp32, bf16 or fp16 (ml/device.py)
        self.half_precision = self.precision == "fp16"
        self._suffix = "" if self.precision == "fp32" else f"-{self.precision}"
        self.directory = Path(root) / f"{backend}-{model_sha256[:12]}{self._suffix}"

    @property
    def identity(self) -> str:
        """What made these stems (backend, whole checkpoint hash, precision): recorded with every
        table and cache entry derived from them, so that other stems never pass for these."""
        return f"{self.backend}-{self.model_sha256}{self._suffix}"

    def entry_dir(self, track_id: str) -> Path:
        return self.directory / track_id[:2] / track_id

    def get(self, track_id: str) -> StemEntry | None:
        directory = self.entry_dir(track_id)
        try:
            meta = json.loads((directory / META).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        return StemEntry(directory, meta)

    def writer(self, track_id: str) -> StemWriter:
        return StemWriter(self.entry_dir(track_id))

    def clean_partial(self) -> int:
        """Remove what killed runs left (temporary entry folders); returns how many."""
        if not self.directory.is_dir():
            return 0
        stale = list(self.directory.glob("*/.*.tmp-*"))
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return len(stale)
