"""Table schemas and atomic file writes.

Every table reconet writes is Parquet with an explicit pyarrow schema, written to a temporary
file in the destination folder and renamed into place, so a killed run leaves either the old
file or the new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

TRACKS_SCHEMA = pa.schema(
    [
        pa.field("track_id", pa.string(), nullable=False),  # uuid5 of the audio content hash
        pa.field("content_sha256", pa.string(), nullable=False),  # of the encoded audio packets
        pa.field("release", pa.string(), nullable=False),  # release key: Artist/Album folder
        pa.field("path", pa.string(), nullable=False),  # relative to the library root, POSIX
        # the path's raw bytes when it is not valid UTF-8 (`path` then shows those bytes as \xNN)
        pa.field("path_bytes", pa.binary()),
        pa.field("file_size", pa.int64(), nullable=False),
        pa.field("format", pa.string(), nullable=False),  # container: mp3, flac, ogg, m4a, wav...
        pa.field("codec", pa.string()),
        pa.field("duration_s", pa.float64(), nullable=False),  # decoded duration
        pa.field("header_duration_s", pa.float64()),  # what the file's header announces
        pa.field("sample_rate", pa.int32()),
        pa.field("channels", pa.int16()),
        pa.field("bitrate_kbps", pa.int32()),
        pa.field("has_tags", pa.bool_(), nullable=False),
        pa.field("artist", pa.string()),  # first artist value
        pa.field("artists", pa.list_(pa.string())),  # every artist value in the tag
        pa.field("album_artist", pa.string()),
        pa.field("album", pa.string()),
        pa.field("title", pa.string()),
        pa.field("track_number", pa.int32()),
        pa.field("genre", pa.string()),
        pa.field("year", pa.int32()),
        pa.field("compilation", pa.bool_()),
        # the fields (artist, album, title, track_number) taken from the Artist/Album/NN Title.ext path
        # because the tags lack them (catalogue.names_from_layout); the others come from the tags
        pa.field("from_path", pa.list_(pa.string())),
    ]
)

CLEAN_TRACKS_SCHEMA = TRACKS_SCHEMA.append(pa.field("over_genre", pa.string(), nullable=False))

REJECTED_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),  # relative to the library root
        pa.field("release", pa.string()),
        pa.field("track_id", pa.string()),  # when the file was readable
        pa.field("stage", pa.string(), nullable=False),  # tracks, clean_tracks, vocals...
        pa.field("reason", pa.string(), nullable=False),  # short category, e.g. too_short
        pa.field("detail", pa.string(), nullable=False),  # a sentence a person can act on
    ]
)


_UMASK = os.umask(0)
os.umask(_UMASK)


def scope_filename(scope: str, suffix: str = ".parquet") -> str:
    """A safe, unique file name for a scope such as a release key (which may hold any character)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", scope).strip("-.")[:60] or "scope"
    return f"{slug}-{hashlib.sha1(scope.encode('utf-8')).hexdigest()[:10]}{suffix}"


def table_from_rows(rows: Iterable[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Build a table with exactly ``schema``'s columns; missing keys become nulls."""
    rows = list(rows)
    columns = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return pa.Table.from_pydict(columns, schema=schema)


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; rename it into place on success."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give them the usual mode
        os.replace(tmp_path, destination)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_table(table: pa.Table, destination: str | os.PathLike, schema: pa.Schema | None = None) -> Path:
    if schema is not None:
        table = table.select(schema.names).cast(schema)
    with atomic_path(destination) as tmp:
        pq.write_table(table, tmp)
    return Path(destination)


def write_bytes(data: bytes, destination: str | os.PathLike) -> Path:
    with atomic_path(destination) as tmp:
        tmp.write_bytes(data)
    return Path(destination)


def write_text(text: str, destination: str | os.PathLike) -> Path:
    return write_bytes(text.encode("utf-8"), destination)


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` across threads and processes: a POSIX ``flock`` on the
    ``.<name>.lock`` file beside it (not on ``path`` itself, which an atomic write replaces)."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def update_json(path: str | os.PathLike, change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """Read the JSON object at ``path`` ({} when missing or unreadable), apply ``change`` and write
    the result back atomically, all under ``path``'s lock: two writers never lose each other's update."""
    with locked(path):
        try:
            current = json.loads(Path(path).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            current = {}
        updated = change(current)
        write_text(json.dumps(updated, indent=1, sort_keys=True), path)
    return updated


def read_table(source: str | os.PathLike, schema: pa.Schema | None = None) -> pa.Table:
    table = pq.read_table(source)
    return table.select(schema.names).cast(schema) if schema is not None else table


def concat(tables: Iterable[pa.Table], schema: pa.Schema) -> pa.Table:
    tables = [t.select(schema.names).cast(schema) for t in tables]
    return pa.concat_tables(tables) if tables else schema.empty_table()
