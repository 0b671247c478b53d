"""Scan a music library: releases, tags, audio properties, content ids, and what cannot be read.

A *release* is a folder that directly holds audio files (``Artist/Album`` in the usual layout);
its key is the folder's path relative to the library root. A *track* is a readable audio file;
its ``track_id`` is a uuid5 over the SHA-256 of its encoded audio packets (``ffmpeg -c copy``,
which leaves tags out), so renaming or re-tagging a file keeps its id and two byte-identical
copies share one. Each file is also decoded once, to catch corrupt and truncated files here
rather than in the middle of separation.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import unicodedata
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ml.catalogue.tags import UnreadableAudioError, clean_tag_text, read_audio_file
from ml.tables import REJECTED_SCHEMA, TRACKS_SCHEMA, table_from_rows

log = logging.getLogger(__name__)

TRACK_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "reconet/track")
ROOT_RELEASE = "(library root)"
_INVALID_KEY_PARTS = ("...", "\a", "\b", "\f", "\n", "\r", "\t", "\v", "\0")


def track_id_for(content_sha256: str) -> str:
    return str(uuid.uuid5(TRACK_NAMESPACE, f"sha256:{content_sha256}"))


def release_key(relative_dir: str) -> str:
    """The release key (and Dagster partition key) of a folder relative to the library root."""
    key = relative_dir.replace(os.sep, "/").strip("/")
    if key in ("", "."):
        return ROOT_RELEASE
    key = key.replace("...", "\u2026")
    return "".join("_" if unicodedata.category(ch)[0] == "C" else ch for ch in key)


def stored_path(relative: str) -> tuple[str, bytes | None]:
    """How a path relative to the library is stored: its text, and its raw bytes when it is not valid
    UTF-8 (old disks, Samba shares), whose text then shows the odd bytes as ``\\xNN``."""
    raw = os.fsencode(relative)
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace"), raw


def library_file(library: Path, track: Mapping[str, Any]) -> Path:
    """The file a `tracks` row stands for (from its raw bytes, when its name is not valid UTF-8)."""
    raw = track.get("path_bytes")
    return Path(library) / (os.fsdecode(raw) if raw else track["path"])


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def find_releases(library: Path, extensions: Iterable[str]) -> dict[str, Path]:
    """Every folder under ``library`` that directly holds audio files, by release key."""
    library = Path(library)
    if not library.is_dir():
        raise FileNotFoundError(f"music library not found: {library} (set RECONET_LIBRARY or library.path)")
    exts = {e.lower().lstrip(".") for e in extensions}
    releases: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(library, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        if any(_has_extension(f, exts) and not _is_hidden(f) for f in filenames):
            key = release_key(os.path.relpath(dirpath, library))
            if key in releases:  # two folders that differ only in characters a key cannot hold
                key = f"{key} ({hashlib.sha1(os.fsencode(dirpath)).hexdigest()[:6]})"
            releases[key] = Path(dirpath)
    return dict(sorted(releases.items()))


def _has_extension(name: str, exts: set[str]) -> bool:
    return "." in name and name.rsplit(".", 1)[1].lower() in exts


def release_files(folder: Path, extensions: Iterable[str]) -> list[Path]:
    exts = {e.lower().lstrip(".") for e in extensions}
    return sorted(
        p for p in folder.iterdir() if not _is_hidden(p.name) and _has_extension(p.name, exts) and not p.is_dir()
    )


@dataclass(frozen=True)
class ReleaseState:
    """What a release folder holds now, cheaply: a digest of its audio files' names, sizes and
    modification times, and the newest of those times (to tell a folder still being copied)."""

    fingerprint: str
    newest_mtime: float
    files: int


def folder_state(folder: Path, extensions: Iterable[str]) -> ReleaseState:
    """The :class:`ReleaseState` of one release folder (no audio is read)."""
    digest = hashlib.sha256()
    newest = 0.0
    files = release_files(folder, extensions)
    for path in files:
        try:
            stat = path.stat()
        except FileNotFoundError:  # removed while we looked: the next look will see it gone
            continue
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        newest = max(newest, stat.st_mtime)
    return ReleaseState(digest.hexdigest()[:16], newest, len(files))


def release_states(library: Path, extensions: Iterable[str]) -> dict[str, ReleaseState]:
    """The state of every release folder of the library, by release key."""
    return {key: folder_state(folder, extensions) for key, folder in find_releases(library, extensions).items()}


_DISC_FOLDER = re.compile(r"^(cd|dis[ck])\s*\d+$", re.IGNORECASE)
_NUMBERED_NAME = re.compile(r"^(\d{1,3})(?:\s*[-._]\s*|\s+)(.+)$")


def names_from_layout(relative: str) -> dict[str, Any]:
    """Artist, album, title and track number as an ``Artist/Album/NN Title.ext`` path names them
    (the RecoNet report's layout; a disc folder such as ``CD1`` is passed over): those it holds."""
    *folders, name = relative.split("/")
    if folders and _DISC_FOLDER.match(folders[-1]):
        folders.pop()
    stem = name.rsplit(".", 1)[0]
    numbered = _NUMBERED_NAME.match(stem)
    values: dict[str, Any] = {"title": clean_tag_text(numbered.group(2) if numbered else stem),
                              "track_number": int(numbered.group(1)) if numbered else None}  # fmt: skip
    if len(folders) >= 2:
        values.update(artist=clean_tag_text(folders[-2]), album=clean_tag_text(folders[-1]))
    return {k: v for k, v in values.items() if v}


@dataclass
class Probe:
    content_sha256: str
    decoded_duration_s: float
    errors: list[str]


class ProbeError(Exception):
    pass


_HASH_LINE = re.compile(r"^\d+,a,SHA256=([0-9a-f]{64})$")


def probe_audio(path: Path, timeout_s: float) -> Probe:
    """Hash the first audio stream's packets and decode it once, in one ffmpeg process."""
    cmd = [
        "ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-nostats", "-progress", "pipe:1",
        "-i", str(path),
        "-map", "0:a:0", "-c:a", "copy", "-f", "streamhash", "-hash", "sha256", "pipe:1",
        "-map", "0:a:0", "-f", "null", "-",
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
    except FileNotFoundError:
        raise RuntimeError("ffmpeg is not installed (the project's setup installs it: see README)") from None
    except subprocess.TimeoutExpired:
        raise ProbeError(f"decoding took longer than {timeout_s:.0f} s") from None
    stdout = proc.stdout.decode("utf-8", "replace").splitlines()
    stderr = re.sub(r" @ 0x[0-9a-f]+", "", proc.stderr.decode("utf-8", "replace"))  # drop pointer addresses
    errors = [line.strip() for line in stderr.splitlines() if line.strip()]
    digests = [m.group(1) for line in stdout if (m := _HASH_LINE.match(line.strip()))]
    if proc.returncode != 0 or not digests:
        raise ProbeError("ffmpeg cannot decode it: " + ("; ".join(errors[-3:]) or f"exit code {proc.returncode}"))
    out_times = [
        int(line.split("=", 1)[1]) for line in stdout if line.startswith("out_time_us=") and line[12:].isdigit()
    ]
    return Probe(content_sha256=digests[0], decoded_duration_s=max(out_times, default=0) / 1e6, errors=errors)


@dataclass
class ScanResult:
    tracks: pa.Table
    rejected: pa.Table
    files_scanned: int


def _reject(rel_path: str, release: str, reason: str, detail: str, track_id: str | None = None) -> dict[str, Any]:
    return {
        "path": rel_path,
        "release": release,
        "track_id": track_id,
        "stage": "tracks",
        "reason": reason,
        "detail": detail,
    }


def scan_file(path: Path, library: Path, release: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """('track', row) for a readable audio file, ('rejected', row) otherwise. Never raises for bad input."""
    rel, rel_bytes = stored_path(path.relative_to(library).as_posix())
    if path.is_symlink() and not path.resolve().is_relative_to(library.resolve()):
        return "rejected", _reject(rel, release, "outside_library", "symbolic link to a file outside the library")
    try:
        tags, props = read_audio_file(path)
    except UnreadableAudioError as exc:
        return "rejected", _reject(rel, release, "not_audio", str(exc))
    except OSError as exc:
        return "rejected", _reject(rel, release, "unreadable", f"cannot read the file: {exc.strerror or exc}")
    catalogue = params.get("catalogue", {})
    try:
        probe = probe_audio(path, timeout_s=60 + 0.2 * max(props.duration_s, 0))
    except ProbeError as exc:
        return "rejected", _reject(rel, release, "corrupt", str(exc))
    track_id = track_id_for(probe.content_sha256)
    max_errors = int(catalogue.get("max_decode_errors", 0))
    min_fraction = float(catalogue.get("min_decoded_fraction", 0.97))
    short = props.duration_s > 0 and probe.decoded_duration_s < min_fraction * props.duration_s
    # A cut-off file decodes cleanly up to the cut (one error at most, for the partial last
    # frame); damage inside the stream shows as several errors.
    if len(probe.errors) > max(max_errors, 1) or (len(probe.errors) > max_errors and not short):
        detail = f"{len(probe.errors)} decoding error(s), first: {probe.errors[0]}"
        return "rejected", _reject(rel, release, "corrupt", detail, track_id)
    if short:
        detail = f"decodes to {probe.decoded_duration_s:.1f} s of the {props.duration_s:.1f} s its header announces"
        return "rejected", _reject(rel, release, "truncated", detail, track_id)
    if probe.decoded_duration_s <= 0:
        return "rejected", _reject(rel, release, "empty", "no decodable audio", track_id)
    names = {"artist": tags.artist, "album": tags.album, "title": tags.title, "track_number": tags.track_number}
    from_path = []  # what the tags lack, taken from the folder and file names
    if catalogue.get("names_from_layout", True):
        layout = names_from_layout(rel)
        from_path = [key for key in layout if not names[key]]
        names.update({key: layout[key] for key in from_path})
    return "track", {
        "track_id": track_id,
        "content_sha256": probe.content_sha256,
        "release": release,
        "path": rel,
        "path_bytes": rel_bytes,
        "file_size": path.stat().st_size,
        "format": props.format,
        "codec": props.codec,
        "duration_s": probe.decoded_duration_s,
        "header_duration_s": props.duration_s or None,
        "sample_rate": props.sample_rate,
        "channels": props.channels,
        "bitrate_kbps": props.bitrate_kbps,
        "has_tags": tags.has_tags,
        "artist": names["artist"],
        "artists": tags.artists or ([names["artist"]] if names["artist"] else []),
        "album_artist": tags.album_artist,
        "album": names["album"],
        "title": names["title"],
        "track_number": names["track_number"],
        "genre": tags.genre,
        "year": tags.year,
        "compilation": tags.compilation,
        "from_path": from_path,
    }


def scan_release(
    library: Path, release: str, folder: Path, params: dict[str, Any], logger: logging.Logger | Any = None
) -> ScanResult:
    """Read every audio file of one release folder; unreadable files become ``rejected`` rows."""
    logger = logger or log
    library = Path(library)
    files = release_files(folder, params.get("library", {}).get("audio_extensions", []))
    workers = max(1, int(params.get("catalogue", {}).get("workers", 2)))
    tracks, rejected = [], []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda p: scan_file(p, library, release, params), files)
        for i, (kind, row) in enumerate(results, 1):
            if kind == "track":
                tracks.append(row)
                logger.info(f"[{release}] {i}/{len(files)} {row['path']}: {row['duration_s']:.1f} s {row['format']}")
            else:
                rejected.append(row)
                logger.warning(f"[{release}] {i}/{len(files)} rejected {row['path']}: {row['reason']}: {row['detail']}")
    return ScanResult(
        tracks=table_from_rows(tracks, TRACKS_SCHEMA),
        rejected=table_from_rows(rejected, REJECTED_SCHEMA),
        files_scanned=len(files),
    )
