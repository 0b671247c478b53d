"""A deterministic demo discography: real, tagged audio files with synthetic vocalists.

Each vocalist is an espeak-ng voice with its own variant, pitch, rate, vibrato and tone colour,
singing phrases of made-up lyrics (a melody is given word by word through SSML prosody) with
gaps between them, over a backing track synthesised for its genre (tempo, key, drum pattern,
bass and chord instruments differ by genre), mixed at a realistic vocal level. Files come in the
usual ``Artist/Album/NN Title.ext`` layout, in several formats, sample rates and channel counts,
with artist, album artist, album, title, track number, genre and year tags.

Planted among them are the cases the catalogue stage must catch (an interlude, an instrumental,
a duet tagged "feat.", duplicates, corrupt and non-audio files, a file without tags, hostile
tags). ``.reconet-demo.json`` at the library root lists every file, what the pipeline should do
with it, and where its vocals are.

Needs the ``espeak-ng`` and ``ffmpeg`` programs (the project's setup installs them).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile as sf
from mutagen.flac import FLAC
from mutagen.id3 import ID3, TALB, TCON, TDRC, TIT2, TPE1, TPE2, TRCK
from mutagen.mp4 import MP4
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE

MANIFEST_NAME = ".reconet-demo.json"
GENERATOR_VERSION = 1
SR = 44100  # rendering rate; files are then written at their own rates

# ----------------------------------------------------------------------------- vocalists


@dataclass(frozen=True)
class Vocalist:
    name: str
    voice: str  # espeak-ng voice + variant
    pitch: int  # espeak-ng base pitch, 0-99
    rate: int  # words per minute
    style: str  # backing style: rock, hiphop, discosoul, pop
    genres: tuple[str, str]  # tag genre of each album
    years: tuple[int, int]
    albums: tuple[str, str]
    vibrato_hz: float = 5.5
    vibrato_cents: float = 30.0
    tone: tuple[float, float] = (120.0, 7000.0)  # band-pass edges of the voice (Hz)
    level_db: float = 0.0  # vocal level relative to the backing


VOCALISTS: tuple[Vocalist, ...] = (
    Vocalist("Marla Voss", "en-us+f3", 74, 150, "pop", ("Pop", "Synthpop"), (2014, 2019),
             ("Glass Hours", "Neon Psalms"), 5.8, 40, (200, 9000), 2.0),
    Vocalist("Dex Calder", "en+m3", 30, 165, "rock", ("Rock", "Classic Rock"), (1978, 1983),
             ("Iron Meridian", "Long Way Down"), 4.8, 25, (110, 5000), 0.0),
    Vocalist("Kid Ferro", "en-us+m7", 42, 205, "hiphop", ("Hip-Hop", "Rap"), (2009, 2013),
             ("Concrete Psalms", "Night Shift Tapes"), 0.0, 0, (90, 8000), 3.0),
    Vocalist("Zoë Åkesson", "sv+f2", 62, 135, "rock", ("Alternative", "Indie Rock"), (1996, 2001),
             ("Sånger från Ödemarken", "Ljus över Älven"), 6.2, 55, (160, 6500), 1.0),
    Vocalist("Ruby Delacroix", "fr+f4", 56, 140, "discosoul", ("Soul", "Funk"), (1972, 1976),
             ("Velvet Hours", "Midnight Cathedral"), 5.2, 60, (140, 6000), 1.5),
    Vocalist("Oswin Hale", "en+m1", 38, 128, "discosoul", ("Disco", "R&B"), (1979, 1982),
             ("Mirrorball Nights", "Satin Static"), 5.0, 35, (100, 7000), 1.0),
    Vocalist("Ines Navarro", "es+f1", 68, 145, "pop", ("Pop", "Dance Pop"), (2003, 2007),
             ("Cielo de Papel", "Luz Eléctrica"), 6.0, 45, (180, 8500), 2.0),
    Vocalist("Tomasz Wren", "pl+m4", 34, 150, "rock", ("Grunge", "Hard Rock"), (1991, 1994),
             ("Rust Belt Hymns", "Static Saints"), 4.5, 20, (100, 4800), -1.0),
)  # fmt: skip


@dataclass(frozen=True)
class DemoSize:
    vocalists: int
    albums: int
    songs_per_album: int
    duration_s: tuple[float, float]


SIZES = {
    "default": DemoSize(vocalists=6, albums=2, songs_per_album=3, duration_s=(40.0, 90.0)),
    "small": DemoSize(vocalists=3, albums=2, songs_per_album=2, duration_s=(34.0, 42.0)),
}

WORDS = [
    "love",
    "night",
    "fire",
    "heart",
    "rain",
    "city",
    "light",
    "dream",
    "shadow",
    "river",
    "gold",
    "stone",
    "road",
    "home",
    "wild",
    "sky",
    "dance",
    "burn",
    "slow",
    "fall",
    "rise",
    "hold",
    "run",
    "cold",
    "sweet",
    "blue",
    "morning",
    "silver",
    "ocean",
    "storm",
    "whisper",
    "forever",
    "tonight",
    "never",
    "only",
    "open",
    "broken",
    "glass",
    "echo",
    "summer",
    "winter",
    "flame",
    "crown",
    "thunder",
    "honey",
    "velvet",
    "wire",
    "engine",
    "midnight",
    "window",
    "mirror",
    "garden",
    "desert",
    "northern",
    "southern",
    "lonely",
]

# ----------------------------------------------------------------------------- synthesis

STYLES = {
    # bpm range, drum pattern (16 steps: kick, snare, hat), chord timbre, bass timbre, mode
    "rock": dict(bpm=(118, 148), kick="x.....x.x.......", snare="....x.......x...", hat="x.x.x.x.x.x.x.x.",
                 chord="power", bass="saw", drive=2.5),
    "hiphop": dict(bpm=(82, 96), kick="x......x..x.....", snare="....x.......x...", hat="xxxxxxxxxxxxxxxx",
                   chord="pad", bass="sub", drive=1.0),
    "discosoul": dict(bpm=(106, 124), kick="x...x...x...x...", snare="....x.......x...", hat="..x...x...x...x.",
                      chord="epiano", bass="octave", drive=1.0),
    "pop": dict(bpm=(96, 122), kick="x...x...x...x...", snare="....x.......x...", hat="x.x.x.x.x.x.x.x.",
                chord="pulse", bass="sine", drive=1.2),
}  # fmt: skip
PROGRESSIONS = ([0, 5, 3, 4], [0, 3, 4, 4], [5, 3, 0, 4], [0, 4, 5, 3], [1, 4, 0, 0])
MAJOR = [0, 2, 4, 5, 7, 9, 11]
MINOR = [0, 2, 3, 5, 7, 8, 10]


def _hz(midi: float) -> float:
    return 440.0 * 2 ** ((midi - 69) / 12)


def _osc(kind: str, freq: float, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SR
    phase = 2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi)
    if kind == "sine":
        return np.sin(phase)
    harmonics = {"saw": 10, "power": 12, "pulse": 9, "pad": 6, "epiano": 4}.get(kind, 6)
    out = np.zeros(n)
    for k in range(1, harmonics + 1):
        if freq * k > SR / 2.2:
            break
        if kind == "pulse" and k % 2 == 0:
            continue
        weight = 1 / k if kind != "epiano" else 1 / k**2.5
        out += weight * np.sin(k * phase)
    return out


def _envelope(n: int, attack_s: float, decay_s: float) -> np.ndarray:
    t = np.arange(n) / SR
    env = np.exp(-t / max(decay_s, 1e-3))
    attack = max(1, int(attack_s * SR))
    env[:attack] *= np.linspace(0, 1, min(attack, n))[: len(env[:attack])]
    return env


def _drum(kind: str, rng: np.random.Generator) -> np.ndarray:
    from scipy import signal  # (imported here: the CLI imports this module for its size names)

    if kind == "kick":
        n = int(0.35 * SR)
        t = np.arange(n) / SR
        freq = 45 + 110 * np.exp(-t / 0.04)
        return np.sin(2 * np.pi * np.cumsum(freq) / SR) * np.exp(-t / 0.12)
    if kind == "snare":
        n = int(0.25 * SR)
        t = np.arange(n) / SR
        noise = signal.lfilter(*signal.butter(2, 1500 / (SR / 2), "high"), rng.standard_normal(n))
        return (0.6 * noise + 0.5 * np.sin(2 * np.pi * 185 * t)) * np.exp(-t / 0.06)
    n = int(0.06 * SR)
    noise = signal.lfilter(*signal.butter(2, 7000 / (SR / 2), "high"), rng.standard_normal(n))
    return 0.4 * noise * np.exp(-np.arange(n) / SR / 0.015)


def _place(track: np.ndarray, sound: np.ndarray, start: int, gain: float = 1.0) -> None:
    if start >= len(track):
        return
    end = min(len(track), start + len(sound))
    track[start:end] += gain * sound[: end - start]


def render_backing(style_name: str, duration_s: float, key: int, minor: bool, bpm: float, seed: int) -> np.ndarray:
    """A stereo backing track (n, 2) for one song: drums, bass and chords in the given key."""
    rng = np.random.default_rng(seed)
    style = STYLES[style_name]
    n = int(duration_s * SR)
    step = 60.0 / bpm / 4  # a 16th note
    bar = 16 * step
    scale = MINOR if minor else MAJOR
    progression = PROGRESSIONS[seed % len(PROGRESSIONS)]
    root = 45 + key  # A2 + key
    drums = np.zeros(n)
    bass = np.zeros(n)
    left, right = np.zeros(n), np.zeros(n)
    hits = {name: _drum(name, rng) for name in ("kick", "snare", "hat")}
    n_bars = int(np.ceil(duration_s / bar))
    for b in range(n_bars):
        degree = progression[b % len(progression)]
        chord_root = root + scale[degree % 7]
        for s in range(16):
            t0 = int((b * bar + s * step) * SR)
            for name in ("kick", "snare", "hat"):
                if style[name][s] == "x":
                    _place(drums, hits[name], t0, {"kick": 1.0, "snare": 0.7, "hat": 0.25}[name] * rng.uniform(0.85, 1))
        # bass: root on the beats (octave jumps for disco)
        for beat in range(4):
            t0 = int((b * bar + beat * 4 * step) * SR)
            length = int(4 * step * SR * (0.9 if style["bass"] != "sub" else 1.8))
            midi = chord_root - 12 + (12 if style["bass"] == "octave" and beat % 2 else 0)
            kind = {"sub": "sine", "octave": "saw", "saw": "saw", "sine": "sine"}[style["bass"]]
            note = _osc(kind, _hz(midi), length, rng) * _envelope(length, 0.005, 0.5 if kind == "sine" else 0.25)
            _place(bass, note, t0, 0.5)
        # chords: a triad (a fifth for rock) held for the bar, spread in stereo
        intervals = [0, 7, 12] if style["chord"] == "power" else [0, scale[2] - scale[0], 7]
        length = int(bar * SR)
        t0 = int(b * bar * SR)
        for i, iv in enumerate(intervals):
            midi = chord_root + 12 + iv
            decay = {"power": 1.5, "pad": 4.0, "epiano": 0.6, "pulse": 0.9}[style["chord"]]
            note = _osc(style["chord"], _hz(midi), length, rng) * _envelope(length, 0.02, decay)
            pan = (i - 1) * 0.6
            _place(left, note, t0, 0.18 * (1 - pan))
            _place(right, note, t0, 0.18 * (1 + pan))
    if style["drive"] > 1:
        left, right = np.tanh(style["drive"] * left), np.tanh(style["drive"] * right)
    mono = drums + bass
    stereo = np.stack([left + mono, right + mono], axis=1)
    fade = min(n, int(1.5 * SR))
    stereo[-fade:] *= np.linspace(1, 0, fade)[:, None]
    return stereo


def _espeak(ssml: str, voice: Vocalist) -> np.ndarray:
    from scipy import signal

    cmd = ["espeak-ng", "-m", "-v", voice.voice, "-p", str(voice.pitch), "-s", str(voice.rate), "--stdout", ssml]
    try:
        wav = subprocess.run(cmd, capture_output=True, check=True, timeout=60).stdout
    except FileNotFoundError:
        raise RuntimeError("espeak-ng is not installed (the project's setup installs it: see README)") from None
    audio, sr = sf.read(io.BytesIO(wav), dtype="float64")
    return signal.resample_poly(audio, SR, sr)


def sing_phrase(words: list[str], melody: list[int], voice: Vocalist, rng: np.random.Generator) -> np.ndarray:
    """One phrase: each word at its melody note (semitones from the voice's base), with vibrato."""
    from scipy import signal

    parts = [
        f'<prosody pitch="{(2 ** (semi / 12) - 1) * 100:+.0f}%">{word}</prosody>'
        for word, semi in zip(words, melody, strict=True)
    ]
    audio = _espeak("<speak>" + " ".join(parts) + "</speak>", voice)
    nonzero = np.flatnonzero(np.abs(audio) > 1e-3)
    audio = audio[nonzero[0] : nonzero[-1] + 1] if len(nonzero) else audio
    if voice.vibrato_cents > 0:  # vibrato: read the phrase at a slowly oscillating speed
        t = np.arange(len(audio)) / SR
        depth = voice.vibrato_cents / 1200 * np.log(2) / (2 * np.pi * voice.vibrato_hz)
        read = (t + depth * np.sin(2 * np.pi * voice.vibrato_hz * t + rng.uniform(0, 6.28))) * SR
        audio = np.interp(np.clip(read, 0, len(audio) - 1), np.arange(len(audio)), audio)
    low, high = voice.tone
    audio = signal.sosfilt(signal.butter(2, [low / (SR / 2), high / (SR / 2)], "band", output="sos"), audio)
    return audio


@dataclass
class SongSpec:
    path: str  # relative to the library root
    fmt: str  # mp3, flac, ogg, m4a, wav
    sample_rate: int
    channels: int
    bitrate_kbps: int | None
    duration_s: float
    seed: int
    style: str
    voices: list[int]  # indices into VOCALISTS; empty = instrumental
    tags: dict | None  # None: write no tags
    case: str = "song"
    expect: dict | None = None  # {"stage": ..., "reason": ...}; None = kept
    vocal_regions: list[tuple[float, float]] = field(default_factory=list)
    source: str | None = None  # for copies: the path this file derives from


def render_song(spec: SongSpec) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Mix of backing and vocals (n, 2) at SR, and the (start, end) seconds of each sung phrase."""
    rng = np.random.default_rng(spec.seed)
    key, minor = int(rng.integers(0, 12)), bool(rng.integers(0, 2))
    bpm = float(rng.uniform(*STYLES[spec.style]["bpm"]))
    backing = render_backing(spec.style, spec.duration_s, key, minor, bpm, spec.seed)
    n = len(backing)
    vocals = np.zeros(n)
    regions: list[tuple[float, float]] = []
    if spec.voices:
        bar = 4 * 60.0 / bpm
        t = 2 * bar  # instrumental intro
        scale = MINOR if minor else MAJOR
        phrase_index = 0
        while t < spec.duration_s - 2.5:
            voice = VOCALISTS[spec.voices[phrase_index % len(spec.voices)]]
            n_words = int(rng.integers(3, 7))
            words = list(rng.choice(WORDS, n_words))
            melody = [int(scale[int(d) % 7] + 12 * (int(d) // 7) - 5) for d in rng.integers(0, 9, n_words)]
            phrase = sing_phrase(words, melody, voice, rng)
            max_len = int((spec.duration_s - 1.5 - t) * SR)
            phrase = phrase[:max_len]
            start = int(t * SR)
            gain = 10 ** (voice.level_db / 20)
            vocals[start : start + len(phrase)] += gain * phrase / (np.sqrt(np.mean(phrase**2)) + 1e-9)
            regions.append((round(t, 3), round(t + len(phrase) / SR, 3)))
            t += len(phrase) / SR + float(rng.uniform(0.6, 2.2))  # gap between phrases
            phrase_index += 1
            if phrase_index % 6 == 0:
                t += 2 * bar  # an instrumental break
        # a realistic level: vocal RMS (where sung) near the backing's RMS, voice-dependent
        active = np.abs(vocals) > 0
        backing_rms = np.sqrt(np.mean(backing**2)) + 1e-9
        vocal_rms = np.sqrt(np.mean(vocals[active] ** 2)) if active.any() else 1.0
        vocals *= backing_rms / vocal_rms * 10 ** (float(rng.uniform(-1.5, 1.5)) / 20)
    mix = backing + vocals[:, None]
    mix *= 0.89 / (np.max(np.abs(mix)) + 1e-9)  # peak at -1 dBFS
    return mix.astype(np.float32), regions


# ----------------------------------------------------------------------------- files

CODEC_ARGS = {
    "mp3": lambda spec: ["-c:a", "libmp3lame", "-b:a", f"{spec.bitrate_kbps}k"],
    "flac": lambda spec: ["-c:a", "flac", "-sample_fmt", "s16"],
    "ogg": lambda spec: ["-c:a", "libvorbis", "-b:a", f"{spec.bitrate_kbps}k"],
    "m4a": lambda spec: ["-c:a", "aac", "-b:a", f"{spec.bitrate_kbps}k"],
    "wav": lambda spec: ["-c:a", "pcm_s16le"],
}


def encode(audio: np.ndarray, spec: SongSpec, destination: Path) -> None:
    """Encode float32 stereo at SR to ``destination`` with ffmpeg, bit-exactly (no version strings)."""
    cmd = [
        "ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y",
        "-f", "f32le", "-ar", str(SR), "-ac", "2", "-i", "pipe:0",
        "-ar", str(spec.sample_rate), "-ac", str(spec.channels), *CODEC_ARGS[spec.fmt](spec),
        "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact",
        "-f", {"m4a": "ipod"}.get(spec.fmt, spec.fmt), str(destination),
    ]  # fmt: skip
    try:
        subprocess.run(cmd, input=audio.tobytes(), capture_output=True, check=True, timeout=300)
    except FileNotFoundError:
        raise RuntimeError("ffmpeg is not installed (the project's setup installs it: see README)") from None
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"ffmpeg could not encode {destination.name}: {exc.stderr.decode()[-500:]}") from exc


def write_tags(path: Path, fmt: str, tags: dict) -> None:
    """Artist(s), album artist, album, title, track number, genre and year in the format's own tags."""
    artists = tags["artists"]
    if fmt in ("mp3", "wav"):
        if fmt == "wav":
            audio = WAVE(path)
            audio.add_tags()
            id3 = audio.tags
        else:
            id3 = ID3()
        id3.add(TPE1(encoding=3, text=artists))
        id3.add(TPE2(encoding=3, text=[tags["album_artist"]]))
        id3.add(TALB(encoding=3, text=[tags["album"]]))
        id3.add(TIT2(encoding=3, text=[tags["title"]]))
        id3.add(TRCK(encoding=3, text=[f"{tags['track_number']}/{tags['track_total']}"]))
        id3.add(TCON(encoding=3, text=[tags["genre"]]))
        id3.add(TDRC(encoding=3, text=[str(tags["year"])]))
        if fmt == "wav":
            audio.save()
        else:
            id3.save(path, v2_version=4)
    elif fmt in ("flac", "ogg"):
        audio = FLAC(path) if fmt == "flac" else OggVorbis(path)
        audio["artist"] = artists
        audio["albumartist"] = tags["album_artist"]
        audio["album"] = tags["album"]
        audio["title"] = tags["title"]
        audio["tracknumber"] = str(tags["track_number"])
        audio["genre"] = tags["genre"]
        audio["date"] = str(tags["year"])
        audio.save()
    elif fmt == "m4a":
        audio = MP4(path)
        audio["\xa9ART"] = artists
        audio["aART"] = [tags["album_artist"]]
        audio["\xa9alb"] = [tags["album"]]
        audio["\xa9nam"] = [tags["title"]]
        audio["trkn"] = [(tags["track_number"], tags["track_total"])]
        audio["\xa9gen"] = [tags["genre"]]
        audio["\xa9day"] = [str(tags["year"])]
        audio.save()
    else:
        raise ValueError(f"cannot tag format {fmt!r}")


def make_song_file(spec: SongSpec, root: str) -> SongSpec:
    """Render, encode and tag one song under ``root``; returns the spec with its vocal regions."""
    audio, regions = render_song(spec)
    destination = Path(root) / spec.path
    destination.parent.mkdir(parents=True, exist_ok=True)
    encode(audio, spec, destination)
    if spec.tags is not None:
        write_tags(destination, spec.fmt, spec.tags)
    return replace(spec, vocal_regions=regions)


# ----------------------------------------------------------------------------- the plan

_FORMATS = [  # (format, sample rate, channels, kbps): mostly mp3, every format and rate present
    ("mp3", 44100, 2, 192), ("mp3", 44100, 2, 256), ("flac", 44100, 2, None), ("mp3", 48000, 2, 192),
    ("ogg", 44100, 2, 160), ("mp3", 22050, 1, 96), ("m4a", 44100, 2, 192), ("mp3", 44100, 2, 160),
    ("wav", 22050, 2, None), ("mp3", 48000, 2, 224), ("flac", 48000, 1, None), ("ogg", 48000, 2, 128),
]  # fmt: skip
_TITLE_WORDS = (
    "Paper Moons",
    "Velvet Rain",
    "Northern Lights",
    "Broken Glass",
    "Silver River",
    "Golden Hour",
    "Midnight Engine",
    "Wild Horses",
    "Cold Summer",
    "Open Road",
    "Thunder Bay",
    "Honey Wire",
    "Lonely Crown",
    "Desert Bloom",
    "Ocean Floor",
    "Sweet Static",
    "Mirror Garden",
    "Stone Heart",
    "Falling Slow",
    "Echo Chamber",
    "Burning Sky",
    "Blue Morning",
    "Southern Storm",
    "Winter Flame",
)


def _title(v: int, n: int) -> str:
    return _TITLE_WORDS[(v * 7 + n * 5) % len(_TITLE_WORDS)] + ("" if n < len(_TITLE_WORDS) else f" {n}")


def plan_library(size: str = "default", seed: int = 0) -> list[SongSpec]:
    """Every file of the demo library, planted cases included, as specs (deterministic)."""
    if size not in SIZES:
        raise ValueError(f"unknown demo size {size!r}; choose one of {', '.join(SIZES)}")
    cfg = SIZES[size]
    rng = np.random.default_rng(seed)
    specs: list[SongSpec] = []
    fmt_i = 0

    def tags_for(v: int, album_i: int, number: int, title: str, total: int) -> dict:
        voc = VOCALISTS[v]
        return {
            "artists": [voc.name], "album_artist": voc.name, "album": voc.albums[album_i], "title": title,
            "track_number": number, "track_total": total, "genre": voc.genres[album_i], "year": voc.years[album_i],
        }  # fmt: skip

    def song(v: int, album_i: int, number: int, title: str, total: int, **overrides) -> SongSpec:
        nonlocal fmt_i
        fmt, rate, channels, kbps = _FORMATS[fmt_i % len(_FORMATS)]
        fmt_i += 1
        voc = VOCALISTS[v]
        spec = SongSpec(
            path=f"{voc.name}/{voc.albums[album_i]}/{number:02d} {title}.{fmt}",
            fmt=fmt, sample_rate=rate, channels=channels, bitrate_kbps=kbps,
            duration_s=round(float(rng.uniform(*cfg.duration_s)), 2), seed=int(rng.integers(0, 2**31)),
            style=voc.style, voices=[v], tags=tags_for(v, album_i, number, title, total),
        )  # fmt: skip
        return replace(spec, **overrides)

    n_total = cfg.songs_per_album
    for v in range(cfg.vocalists):
        for a in range(cfg.albums):
            for k in range(cfg.songs_per_album):
                specs.append(song(v, a, k + 1, _title(v, a * cfg.songs_per_album + k), n_total))

    # ---- planted cases, spread over the vocalists
    v0, v1, v2 = 0, 1 % cfg.vocalists, 2 % cfg.vocalists
    extra = n_total + 1

    def mp3(spec: SongSpec, kbps: int = 192) -> SongSpec:
        return replace(spec, fmt="mp3", sample_rate=44100, channels=2, bitrate_kbps=kbps,
                       path=spec.path.rsplit(".", 1)[0] + ".mp3")  # fmt: skip

    interlude = song(v0, 0, extra, "Interlude", n_total + 2, duration_s=18.0, case="interlude",
                     expect={"stage": "clean_tracks", "reason": "too_short"})  # fmt: skip
    instrumental = song(v1, 1, extra, "Nightfall", n_total + 1, voices=[], case="instrumental",
                        expect={"stage": "vocals", "reason": "instrumental"})  # fmt: skip
    guest = VOCALISTS[v0].name
    duet_title = f"{_title(v2, 20)} (feat. {guest})"
    duet = mp3(song(v2, 0, extra, duet_title, n_total + 1, voices=[v2, v0], case="duet",
                    expect={"stage": "clean_tracks", "reason": "multi_vocalist"}))  # fmt: skip
    # kept: its artist, album and title come from its folders and name (catalogue.names_from_layout)
    untagged = mp3(song(v1, 0, extra, "Untitled", n_total + 1, tags=None, case="no_tags"))
    hostile = song(v2, 1, extra, "Hostile Tags", n_total + 1, fmt="flac", bitrate_kbps=None, case="hostile_tags")
    hostile = replace(hostile, path=hostile.path.rsplit(".", 1)[0] + ".flac",
                      tags={**hostile.tags, "title": "../../etc/passwd", "album": "..\\..\\Windows\\System32",
                            "genre": "Rock\x1b[31m\x00"})  # fmt: skip
    non_ascii = mp3(song(v0, 1, extra, "Éternité", n_total + 1, case="non_ascii"))
    non_ascii.tags["title"] = "Éternité – 夜の歌 (Ñ)"
    # originals for the copies below: clean mp3s at 192 kbps
    truncated_src = mp3(song(v0, 0, extra + 1, "Glass Tide", n_total + 2, case="source_of_truncated"), 192)
    specs += [interlude, instrumental, duet, untagged, hostile, non_ascii, truncated_src]
    return specs


def _derived_files(specs: list[SongSpec], root: Path) -> list[SongSpec]:
    """Copies and damaged files made from already-written songs (byte copies, re-encode, corruption)."""
    from scipy import signal

    by_case = {s.case: s for s in specs}
    first = next(s for s in specs if s.case == "song" and s.fmt == "mp3")
    derived = []
    # a byte-identical duplicate, under a name that sorts after the original
    original = Path(first.path)
    copy_path = (original.parent / f"Copy of {original.name}").as_posix()
    shutil.copyfile(root / first.path, root / copy_path)
    derived.append(replace(first, path=copy_path, case="byte_duplicate", source=first.path,
                           expect={"stage": "clean_tracks", "reason": "duplicate_content"}))  # fmt: skip
    # the same song re-encoded (lower bitrate, other container) under another name and a "remaster" title
    src = next(s for s in specs if s.case == "song" and s.fmt == "mp3" and s.voices[0] == 1 and s.bitrate_kbps >= 160)
    re_path = Path(src.path).with_name(Path(src.path).stem.split(" ", 1)[1] + " (2011 Remaster).ogg").as_posix()
    audio, _ = sf.read(root / src.path, dtype="float32", always_2d=True)
    stereo = np.repeat(audio, 2, axis=1) if audio.shape[1] == 1 else audio
    if src.sample_rate != SR:
        stereo = signal.resample_poly(stereo, SR, src.sample_rate, axis=0).astype(np.float32)
    re_spec = replace(src, path=re_path, fmt="ogg", bitrate_kbps=96, case="re_encoded", source=src.path,
                      tags={**src.tags, "title": f"{src.tags['title']} (2011 Remaster)"},
                      expect={"stage": "clean_tracks", "reason": "duplicate_song"})  # fmt: skip
    encode(stereo, re_spec, root / re_path)
    write_tags(root / re_path, "ogg", re_spec.tags)
    derived.append(re_spec)
    # a truncated mp3 (the download stopped at 45 %) and a corrupt one (garbage in the middle)
    src = by_case["source_of_truncated"]
    data = (root / src.path).read_bytes()
    trunc_path = Path(src.path).with_name(Path(src.path).name.replace("Glass Tide", "Glass Tide (truncated)"))
    (root / trunc_path).write_bytes(data[: int(len(data) * 0.45)])
    derived.append(replace(src, path=trunc_path.as_posix(), case="truncated", source=src.path,
                           expect={"stage": "tracks", "reason": "truncated"}))  # fmt: skip
    garbage = np.random.default_rng(1).integers(0, 256, 48_000, dtype=np.uint8).tobytes()
    middle = len(data) // 2
    corrupt_path = trunc_path.with_name(trunc_path.name.replace("(truncated)", "(corrupt)"))
    (root / corrupt_path).write_bytes(data[:middle] + garbage + data[middle + len(garbage) :])
    derived.append(replace(src, path=corrupt_path.as_posix(), case="corrupt", source=src.path,
                           expect={"stage": "tracks", "reason": "corrupt"}))  # fmt: skip
    # a web page saved with an audio extension
    fake = Path(first.path).with_name("99 Bonus Track.mp3")
    (root / fake).write_bytes(b"<!DOCTYPE html><html><head><title>404 Not Found</title></head>"
                              b"<body><h1>Not Found</h1></body></html>\n")  # fmt: skip
    derived.append(replace(first, path=fake.as_posix(), case="not_audio", source=None, tags=None, vocal_regions=[],
                           expect={"stage": "tracks", "reason": "not_audio"}))  # fmt: skip
    return derived


def _manifest(size: str, seed: int, specs: list[SongSpec]) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "size": size,
        "seed": seed,
        "vocalists": [asdict(VOCALISTS[i]) for i in range(SIZES[size].vocalists)],
        "files": [
            {k: v for k, v in asdict(s).items() if k not in ("seed",)} for s in sorted(specs, key=lambda s: s.path)
        ],
    }


def read_manifest(library: Path) -> dict | None:
    path = Path(library) / MANIFEST_NAME
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def generate_demo_library(
    directory: str | os.PathLike,
    size: str = "default",
    seed: int = 0,
    workers: int | None = None,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> dict:
    """Write the demo library to ``directory`` (atomically: built aside, then renamed into place).

    Returns the manifest. An existing demo library of the same size, seed and generator version
    is left as it is; any other existing non-empty folder is refused.
    """
    directory = Path(directory).resolve()
    existing = read_manifest(directory)
    if existing and (existing.get("size"), existing.get("seed"), existing.get("generator_version")) == (
        size, seed, GENERATOR_VERSION,
    ):  # fmt: skip
        return existing
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} exists and is not this demo library; choose an empty or new folder")
    specs = plan_library(size, seed)
    directory.parent.mkdir(parents=True, exist_ok=True)
    for stale in directory.parent.glob(f".{directory.name}.partial-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-", dir=directory.parent))
    try:
        workers = workers or min(len(specs), os.cpu_count() or 1)
        done_specs = []
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for i, spec in enumerate(pool.map(make_song_file, specs, [str(staging)] * len(specs)), 1):
                done_specs.append(spec)
                if on_progress:
                    on_progress(i, len(specs), spec.path)
        done_specs += _derived_files(done_specs, staging)
        manifest = _manifest(size, seed, done_specs)
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; a library is an ordinary folder
        if directory.exists():
            directory.rmdir()  # empty, checked above
        os.replace(staging, directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return read_manifest(directory)


def library_digest(directory: str | os.PathLike) -> str:
    """SHA-256 over every file's relative path and bytes: equal digests, identical libraries."""
    h = hashlib.sha256()
    root = Path(directory)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()
