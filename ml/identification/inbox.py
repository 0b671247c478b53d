"""The inbox: a folder where a user drops recordings to be identified by the champion model.

Each audio file (in any sub-folder) is one Dagster partition; its key is the file's path relative
to the inbox, made a valid partition key as release keys are (:func:`ml.catalogue.catalogue.release_key`;
odd bytes shown as ``\\xNN``). A key is never turned back into a path: the asset finds its file by
listing the inbox again (:func:`inbox_files`), so nothing outside the folder can be named. A file
is identified once it has settled (the release sensor's rule, :func:`ml.catalogue.orchestration.ready_releases`),
and its result is written beside it as ``<file name>.reconet.json``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from ml.catalogue.catalogue import ReleaseState, release_key

RESULT_SUFFIX = ".reconet.json"


def inbox_files(inbox: Path, extensions: Iterable[str]) -> dict[str, Path]:
    """Every audio file under ``inbox`` (by extension, case-insensitive), by partition key."""
    wanted = {f".{e.lower().lstrip('.')}" for e in extensions}
    found: dict[str, Path] = {}
    if not inbox.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(inbox):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in wanted:
                continue
            path = Path(dirpath) / name
            relative = os.fsencode(os.path.relpath(path, inbox)).decode("utf-8", "backslashreplace")
            key = release_key(relative)
            if key in found:  # two names that differ only in characters a key cannot hold
                key = f"{key} ({hashlib.sha1(os.fsencode(path)).hexdigest()[:6]})"
            found[key] = path
    return found


def file_states(files: dict[str, Path]) -> dict[str, ReleaseState]:
    """Each file's size and modification time as a :class:`ReleaseState` (for the settling rule);
    a file that vanished meanwhile is left out."""
    states = {}
    for key, path in files.items():
        try:
            stat = path.stat()
        except OSError:
            continue
        states[key] = ReleaseState(f"{stat.st_size}:{stat.st_mtime_ns}", stat.st_mtime, 1)
    return states


def result_path(recording: Path) -> Path:
    """Where a recording's identification is written: beside it."""
    return recording.with_name(recording.name + RESULT_SUFFIX)
