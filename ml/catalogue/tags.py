"""Read tags and audio properties with mutagen, across ID3, Vorbis comments, MP4 and ASF.

Tag values are data, never paths: they are cleaned of control characters and length-capped
here, and nothing in reconet builds a file path from them.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import mutagen
from mutagen.asf import ASF
from mutagen.id3 import ID3
from mutagen.mp4 import MP4

MAX_TAG_LENGTH = 512
_YEAR = re.compile(r"(?<!\d)(1[0-9]{3}|2[0-9]{3})(?!\d)")
_LEADING_INT = re.compile(r"^\s*(\d{1,4})")


class UnreadableAudioError(Exception):
    """The file is not audio that mutagen recognises (or its header is broken)."""


@dataclass
class AudioTags:
    artists: list[str] = field(default_factory=list)
    album_artist: str | None = None
    album: str | None = None
    title: str | None = None
    track_number: int | None = None
    genre: str | None = None
    year: int | None = None
    compilation: bool = False

    @property
    def artist(self) -> str | None:
        return self.artists[0] if self.artists else None

    @property
    def has_tags(self) -> bool:
        return any([self.artists, self.album_artist, self.album, self.title, self.genre])


@dataclass
class AudioProperties:
    format: str
    codec: str | None
    duration_s: float
    sample_rate: int | None
    channels: int | None
    bitrate_kbps: int | None


def clean_tag_text(value: object) -> str | None:
    """Tag text as a plain, printable, bounded string (None when empty)."""
    if value is None:
        return None
    text = str(value)
    text = unicodedata.normalize("NFC", text)
    # Control characters (NUL, newlines, escapes...) become spaces; runs of spaces collapse.
    text = "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in text)
    text = re.sub(r"\s+", " ", text).strip()
    return text[:MAX_TAG_LENGTH] or None


def _texts(values: object) -> list[str]:
    if values is None:
        return []
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        values = [values]
    out = []
    for v in values:
        if isinstance(v, bytes):
            v = v.decode("utf-8", errors="replace")
        text = clean_tag_text(v)
        if text:
            out.append(text)
    return out


def _first(values: object) -> str | None:
    texts = _texts(values)
    return texts[0] if texts else None


def parse_year(value: object) -> int | None:
    match = _YEAR.search(str(value)) if value is not None else None
    return int(match.group(1)) if match else None


def parse_track_number(value: object) -> int | None:
    if isinstance(value, tuple):  # MP4 trkn: (number, total)
        value = value[0] if value else None
    match = _LEADING_INT.match(str(value)) if value is not None else None
    return int(match.group(1)) if match and int(match.group(1)) > 0 else None


def _truthy(value: object) -> bool:
    text = _first(value)
    return bool(text) and text.lower() in {"1", "true", "yes"}


def _from_id3(tags: ID3) -> AudioTags:
    def frame_texts(key: str) -> list[str]:
        frame = tags.get(key)
        if frame is None:
            return []
        if key == "TCON":
            return _texts(frame.genres)
        return _texts(frame.text)

    return AudioTags(
        artists=frame_texts("TPE1"),
        album_artist=_first(frame_texts("TPE2")),
        album=_first(frame_texts("TALB")),
        title=_first(frame_texts("TIT2")),
        track_number=parse_track_number(_first(frame_texts("TRCK"))),
        genre=_first(frame_texts("TCON")),
        year=parse_year(_first(frame_texts("TDRC")) or _first(frame_texts("TYER"))),
        compilation=_truthy(frame_texts("TCMP")),
    )


def _from_mp4(tags) -> AudioTags:
    genre = _first(tags.get("\xa9gen"))
    return AudioTags(
        artists=_texts(tags.get("\xa9ART")),
        album_artist=_first(tags.get("aART")),
        album=_first(tags.get("\xa9alb")),
        title=_first(tags.get("\xa9nam")),
        track_number=parse_track_number((tags.get("trkn") or [None])[0]),
        genre=genre,
        year=parse_year(_first(tags.get("\xa9day"))),
        compilation=bool(tags.get("cpil")),
    )


def _from_asf(tags) -> AudioTags:
    def get(key: str) -> list[str]:
        return _texts([getattr(v, "value", v) for v in tags.get(key, [])])

    return AudioTags(
        artists=get("Author"),
        album_artist=_first(get("WM/AlbumArtist")),
        album=_first(get("WM/AlbumTitle")),
        title=_first(get("Title")),
        track_number=parse_track_number(_first(get("WM/TrackNumber"))),
        genre=_first(get("WM/Genre")),
        year=parse_year(_first(get("WM/Year"))),
        compilation=_truthy(get("WM/IsCompilation")),
    )


def _from_vorbis(tags) -> AudioTags:
    def get(*keys: str) -> list[str]:
        for key in keys:
            values = tags.get(key)
            if values:
                return _texts(values)
        return []

    return AudioTags(
        artists=get("artist"),
        album_artist=_first(get("albumartist", "album artist", "album_artist")),
        album=_first(get("album")),
        title=_first(get("title")),
        track_number=parse_track_number(_first(get("tracknumber", "track"))),
        genre=_first(get("genre")),
        year=parse_year(_first(get("date", "year", "originaldate"))),
        compilation=_truthy(get("compilation")),
    )


def _properties(audio: mutagen.FileType) -> AudioProperties:
    info = audio.info
    kind = type(audio).__name__
    fmt = {
        "MP3": "mp3",
        "EasyMP3": "mp3",
        "FLAC": "flac",
        "OggVorbis": "ogg",
        "OggOpus": "opus",
        "OggFLAC": "ogg",
        "OggSpeex": "ogg",
        "MP4": "m4a",
        "EasyMP4": "m4a",
        "WAVE": "wav",
        "AIFF": "aiff",
        "ASF": "wma",
        "AAC": "aac",
    }.get(kind, kind.lower())
    info_kind = type(info).__name__
    if info_kind == "MPEGInfo":
        codec = f"mp{info.layer}"
    elif info_kind == "MP4Info":
        codec = "aac" if str(getattr(info, "codec", "")).startswith("mp4a.40") else getattr(info, "codec", None)
    elif info_kind in {"WaveStreamInfo", "AIFFInfo"}:
        codec = f"pcm_s{getattr(info, 'bits_per_sample', 16)}"
    else:
        codec = {"StreamInfo": "flac", "OggVorbisInfo": "vorbis", "OggOpusInfo": "opus"}.get(
            info_kind, getattr(info, "codec_name", None) or info_kind
        )
    bitrate = getattr(info, "bitrate", None)
    return AudioProperties(
        format=fmt,
        codec=codec,
        duration_s=float(getattr(info, "length", 0.0) or 0.0),
        sample_rate=getattr(info, "sample_rate", None) or None,
        channels=getattr(info, "channels", None) or None,
        bitrate_kbps=round(bitrate / 1000) if bitrate else None,
    )


def read_audio_file(path: str | Path) -> tuple[AudioTags, AudioProperties]:
    """Tags and properties of one file; :class:`UnreadableAudioError` when it is not audio."""
    try:
        audio = mutagen.File(path)
    except mutagen.MutagenError as exc:
        raise UnreadableAudioError(f"mutagen cannot parse it: {exc}") from exc
    except (ValueError, IndexError, EOFError, OSError) as exc:  # broken headers surface as these too
        raise UnreadableAudioError(f"mutagen cannot parse it: {exc!r}") from exc
    if audio is None:
        raise UnreadableAudioError("not a recognised audio format (no known audio header)")
    tags = audio.tags
    if tags is None:
        parsed = AudioTags()
    elif isinstance(tags, ID3):
        parsed = _from_id3(tags)
    elif isinstance(audio, MP4):
        parsed = _from_mp4(tags)
    elif isinstance(audio, ASF):
        parsed = _from_asf(tags)
    else:
        parsed = _from_vorbis(tags)
    return parsed, _properties(audio)
