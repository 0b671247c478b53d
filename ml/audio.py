"""Decoding audio with ffmpeg (any format, streamed in blocks) and writing stems atomically.

Decoding follows Spleeter's own audio adapter — ``ffmpeg -f f32le -ar RATE`` with the file's own
channel count, then mono duplicated to stereo and extra channels dropped — so both separation
backends see the same samples.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np


class AudioDecodeError(Exception):
    """ffmpeg could not decode a file; the message names the file and ffmpeg's reason."""


def _ffmpeg_missing() -> RuntimeError:
    return RuntimeError("ffmpeg is not installed (the project's setup installs it: see README)")


def _ffmpeg_reason(stderr: str, path: str | Path, default: str) -> str:
    """The last line ffmpeg/ffprobe wrote, without the file name it starts with."""
    lines = stderr.strip().splitlines()
    if not lines:
        return default
    return lines[-1].removeprefix(f"{path}: ").strip() or default


def probe_channels(path: str | Path) -> int:
    """Channel count of the first audio stream."""
    cmd = ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries", "stream=channels", "-of", "json",
           str(path)]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    except FileNotFoundError:
        raise _ffmpeg_missing() from None
    try:
        channels = int(json.loads(proc.stdout)["streams"][0]["channels"])
    except (ValueError, KeyError, IndexError):
        reason = _ffmpeg_reason(proc.stderr.decode("utf-8", "replace"), path, "no audio stream")
        raise AudioDecodeError(f"{path}: cannot read its audio stream: {reason}") from None
    if channels < 1:  # what ffprobe reports for some damaged files
        raise AudioDecodeError(f"{path}: its audio stream has no channels (damaged file)")
    return channels


def probe_duration(path: str | Path) -> float | None:
    """The duration its container announces, in seconds (None when it announces none)."""
    cmd = ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", str(path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
        return float(json.loads(proc.stdout)["format"]["duration"])
    except FileNotFoundError:
        raise _ffmpeg_missing() from None
    except (ValueError, KeyError, TypeError):
        return None


def to_stereo(block: np.ndarray) -> np.ndarray:
    """(n, channels) -> (n, 2): mono duplicated, channels beyond the second dropped (as Spleeter)."""
    if block.shape[1] == 1:
        return np.repeat(block, 2, axis=1)
    return block[:, :2]


def to_mono(audio: np.ndarray) -> np.ndarray:
    """(n, channels) -> (n,): the channels' mean (column sums: ``mean(axis=1)`` over a two-wide
    axis is 20x slower in numpy)."""
    total = audio[:, 0].copy()
    for c in range(1, audio.shape[1]):
        total += audio[:, c]
    total /= audio.shape[1]
    return total


def stream_audio(
    path: str | Path, sample_rate: int, block_frames: int = 1 << 18, channels: int | None = None
) -> Iterator[np.ndarray]:
    """Yield the decoded audio as float32 blocks of shape (≤ block_frames, channels).

    Memory stays at one block whatever the file's length. Raises :class:`AudioDecodeError` when
    ffmpeg fails (after the blocks it could decode).
    """
    channels = channels or probe_channels(path)
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-f", "f32le",
           "-ar", str(sample_rate), "pipe:1"]  # fmt: skip
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise _ffmpeg_missing() from None
    frame_bytes = 4 * channels
    try:
        pending = b""
        while chunk := proc.stdout.read(block_frames * frame_bytes - len(pending)):
            pending += chunk
            if len(pending) == block_frames * frame_bytes:
                yield np.frombuffer(pending, dtype="<f4").reshape(-1, channels)
                pending = b""
        usable = len(pending) - len(pending) % frame_bytes
        if usable:
            yield np.frombuffer(pending[:usable], dtype="<f4").reshape(-1, channels)
        stderr = proc.stderr.read().decode("utf-8", "replace")
        if proc.wait() != 0:
            reason = _ffmpeg_reason(stderr, path, f"exit code {proc.returncode}")
            raise AudioDecodeError(f"{path}: ffmpeg cannot decode it: {reason}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def load_audio(path: str | Path, sample_rate: int, stereo: bool = True) -> np.ndarray:
    """The whole file as float32 (n, channels) — (n, 2) when ``stereo`` — for short files and tests."""
    blocks = list(stream_audio(path, sample_rate))
    audio = np.concatenate(blocks) if blocks else np.zeros((0, 2 if stereo else 1), np.float32)
    return to_stereo(audio) if stereo else audio
