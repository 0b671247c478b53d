"""`reconet materialize STAGE` (what each dvc.yaml stage runs) and dvc.yaml's consistency with it."""

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ml.config import load_params, project_root
from ml.tables import read_table
from pipeline.cli import STAGES

DVC_YAML = project_root() / "dvc.yaml"


def _stages() -> dict[str, dict]:
    return yaml.safe_load(DVC_YAML.read_text(encoding="utf-8"))["stages"]


def _paths(entries: list) -> list[str]:
    """Paths of a dvc.yaml deps/outs/metrics list (plain strings or {path: options})."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries]


def test_every_dvc_stage_materialises_its_own_step():
    stages = _stages()
    pipeline = {name: s for name, s in stages.items() if name != "demo_library"}
    assert set(pipeline) == set(STAGES)
    for name, stage in pipeline.items():
        assert stage["cmd"] == f"reconet materialize {name}"


def test_dvc_yaml_names_existing_code_and_params_and_one_writer_per_output():
    stages = _stages()
    params = load_params(project_root() / "params.yaml")
    written: dict[str, str] = {}
    for name, stage in stages.items():
        for out in _paths(stage.get("outs", [])) + _paths(stage.get("metrics", [])):
            for other, by in written.items():  # no output inside another, none written twice
                assert not (out == other or out.startswith(other + "/") or other.startswith(out + "/")), (
                    f"{out} ({name}) overlaps {other} ({by})"
                )
            written[out] = name
    for name, stage in stages.items():
        for dep in _paths(stage.get("deps", [])):
            if dep.startswith("${"):
                continue  # the library, from params.yaml
            if dep.startswith("data/"):
                assert dep in written and written[dep] != name, f"{name}: {dep} is no other stage's output"
            else:
                assert (project_root() / dep).exists(), f"{name}: dependency {dep} does not exist"
        for key in stage.get("params", []):
            node = params
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{name}: params.yaml has no {key}"
                node = node[part]


def _song(path: Path, artist: str, album: str, title: str, freq: float) -> None:
    """A tagged 35 s mp3 (long enough to be kept by the cleaning rules)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi",
           "-i", f"sine=frequency={freq}:sample_rate=22050:duration=35", "-c:a", "libmp3lame", "-b:a", "64k",
           "-metadata", f"artist={artist}", "-metadata", f"album={album}", "-metadata", f"title={title}",
           str(path)]  # fmt: skip
    subprocess.run(cmd, check=True)


def _materialize(stage: str, library: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "materialize", stage, "--library", str(library)],
        cwd=project_root(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_materialize_runs_one_stage_for_every_release_and_fails_clearly(tmp_path, project_dirs):
    library = tmp_path / "music"
    _song(library / "Ada Vale" / "First" / "01 Morning.mp3", "Ada Vale", "First", "Morning", 330)
    _song(library / "Ada Vale" / "First" / "02 Noon.mp3", "Ada Vale", "First", "Noon", 440)
    _song(library / "Bo Lind" / "Second" / "01 Evening.mp3", "Bo Lind", "Second", "Evening", 550)
    (library / "Bo Lind" / "Second" / "02 Broken.mp3").write_text("<html>not audio</html>")
    releases = ["Ada Vale/First", "Bo Lind/Second"]

    proc = _materialize("catalogue", library)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "materialised catalogue" in proc.stderr

    data = project_dirs["data"]
    tracks = [read_table(p) for p in sorted((data / "tables" / "tracks").glob("*.parquet"))]
    assert sorted(t.column("release")[0].as_py() for t in tracks) == releases  # one table per release
    kept = read_table(data / "tables" / "clean_tracks.parquet")
    assert sorted(kept.column("title").to_pylist()) == ["Evening", "Morning", "Noon"]
    not_audio = [r for p in (data / "rejected" / "tracks").glob("*.parquet") for r in read_table(p).to_pylist()]
    assert [(r["path"], r["reason"]) for r in not_audio] == [("Bo Lind/Second/02 Broken.mp3", "not_audio")]
    assert (data / "rejected" / "clean_tracks").is_dir()
    assert not (data / "tables" / "vocals").exists()  # only this stage's assets

    with dg.DagsterInstance.get() as instance:  # DAGSTER_HOME: the test's instance
        assert sorted(instance.get_dynamic_partitions("releases")) == releases
        for release in releases:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("tracks"), asset_partitions=[release]), limit=1
            ).records
            assert records, f"tracks of {release} not recorded as materialised"
        assert instance.fetch_materializations(dg.AssetKey("clean_tracks"), limit=1).records

    # segments before vocals: a non-zero exit naming the step, the release and what is missing
    proc = _materialize("segments", library)
    assert proc.returncode == 1
    message = " ".join(proc.stderr.split())
    assert "segments_job [segments] failed for" in message
    assert "has not been materialised yet" in message  # the reason, per release, and both releases listed
    assert "2 release(s) failed and were left out" in message and "Ada Vale/First, Bo Lind/Second" in message


def test_the_run_summary_names_the_mlflow_store_the_run_wrote_to(project_dirs, monkeypatch, capsys, tmp_path):
    from ml import config
    from ml.tables import CLEAN_TRACKS_SCHEMA, REJECTED_SCHEMA, write_table
    from pipeline.cli import _print_summary

    paths = config.paths()
    write_table(CLEAN_TRACKS_SCHEMA.empty_table(), paths.tables / "clean_tracks.parquet")
    write_table(REJECTED_SCHEMA.empty_table(), paths.tables / "rejected.parquet")
    monkeypatch.setenv("COLUMNS", "300")
    store = tmp_path / "elsewhere" / "runs.db"
    for uri, expected in ((f"sqlite:///{store}", f"mlflow ui --backend-store-uri sqlite:///{store} "),
                          ("http://mlflow.internal:5000", "MLflow:  http://mlflow.internal:5000 ")):  # fmt: skip
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        _print_summary(paths, 1.0)
        output = capsys.readouterr().err
        assert expected in output and "mlflow.db" not in output
