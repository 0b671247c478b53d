"""Shared fixtures: real audio files made with ffmpeg, and the small demo library."""

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from ml.catalogue.demo_library import generate_demo_library
from ml.config import project_root

CODECS = {
    "mp3": ["-c:a", "libmp3lame", "-b:a", "128k"],
    "flac": ["-c:a", "flac"],
    "ogg": ["-c:a", "libvorbis", "-q:a", "3"],
    "m4a": ["-c:a", "aac", "-b:a", "128k", "-f", "ipod"],
    "wav": ["-c:a", "pcm_s16le"],
}


def make_tone(path: Path, fmt: str, seconds: float = 2.0, sample_rate: int = 44100, channels: int = 2,
              freq: float = 440.0) -> Path:  # fmt: skip
    """A real audio file: a sine tone encoded by ffmpeg in ``fmt``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        "ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi",
        "-i", f"sine=frequency={freq}:sample_rate={sample_rate}:duration={seconds}",
        "-ac", str(channels), *CODECS[fmt], "-fflags", "+bitexact", str(path),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    return path


@pytest.fixture(scope="session")
def small_library(tmp_path_factory) -> tuple[Path, dict]:
    """The small demo library (generated once per test session) and its manifest."""
    directory = tmp_path_factory.mktemp("library") / "demo"
    manifest = generate_demo_library(directory, size="small")
    return directory, manifest


@pytest.fixture(scope="session")
def shared_stems(tmp_path_factory) -> Path:
    """One stem cache for the session's project runs: stems are keyed by content, so runs over the
    same library separate each track once (as projects sharing RECONET_STEMS_DIR do)."""
    return tmp_path_factory.mktemp("stems")


@pytest.fixture
def project_dirs(tmp_path, monkeypatch, shared_stems) -> dict[str, Path]:
    """Data, reports and Dagster folders of a throw-away project run (stems in the session cache)."""
    dirs = {name: tmp_path / name for name in ("data", "reports", "dagster_home")}
    for d in dirs.values():
        d.mkdir()
    dirs["stems"] = shared_stems
    monkeypatch.setenv("RECONET_STEMS_DIR", str(shared_stems))
    monkeypatch.setenv("RECONET_DATA_DIR", str(dirs["data"]))
    # the project's parameters, with a short training run (the pipeline's plumbing, not its accuracy)
    params = yaml.safe_load((project_root() / "params.yaml").read_text(encoding="utf-8"))
    params["train"].update(epochs=2, split_kinds=["song"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    monkeypatch.setenv("RECONET_PARAMS", str(tmp_path / "params.yaml"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("RECONET_REPORTS_DIR", str(dirs["reports"]))
    monkeypatch.setenv("DAGSTER_HOME", str(dirs["dagster_home"]))
    monkeypatch.delenv("RECONET_LIBRARY", raising=False)
    return dirs


def audio_files(library: Path) -> list[str]:
    """Relative paths of every file the catalogue should scan (audio extensions, not hidden)."""
    exts = {"mp3", "flac", "ogg", "m4a", "wav"}
    return sorted(
        p.relative_to(library).as_posix()
        for p in library.rglob("*")
        if p.is_file() and p.suffix.lstrip(".").lower() in exts and not any(part.startswith(".") for part in p.parts)
    )


os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
