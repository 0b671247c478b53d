"""Materialising the catalogue assets on the small demo library, through the real Dagster."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import soundfile as sf
from mlflow.tracking import MlflowClient

from assets.partitions import releases
from ml.clips.segmentation import PackedRows
from ml.config import project_root
from ml.tables import read_table
from pipeline.definitions import defs
from tests.conftest import audio_files

pytestmark = pytest.mark.slow


def _expected(manifest: dict) -> tuple[dict[str, tuple[str, str]], set[str], set[str]]:
    """(path -> (stage, reason)) for every planted case; paths cleaning keeps; paths with vocals."""
    rejected, clean, sung = {}, set(), set()
    for f in manifest["files"]:
        expect = f["expect"]
        if expect:
            rejected[f["path"]] = (expect["stage"], expect["reason"])
        if not expect or expect["stage"] == "vocals":  # the instrumental is caught from its stems
            clean.add(f["path"])
        if not expect:
            sung.add(f["path"])
    return rejected, clean, sung


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], cwd=project_root(), capture_output=True, text=True, timeout=600
    )


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def test_main_job_catalogues_the_demo_library(small_library, project_dirs):
    library, manifest = small_library
    before = _snapshot(library)
    proc = _run_cli("run", "--library", str(library))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tracks with vocals" in proc.stdout and "rejected: vocals / instrumental" in proc.stdout
    assert "segments (clips)" in proc.stdout and "test set: accuracy / macro-F1" in proc.stdout

    data = project_dirs["data"]
    kept = read_table(data / "tables" / "clean_tracks.parquet")
    rejected = read_table(data / "tables" / "rejected.parquet")
    vocals = _vocals_table(data)
    kept_paths = set(kept.column("path").to_pylist())
    sung_paths = set(vocals.column("path").to_pylist())
    got = {r["path"]: (r["stage"], r["reason"]) for r in rejected.to_pylist()}

    expected_rejected, expected_clean, expected_sung = _expected(manifest)
    assert got == expected_rejected  # every planted case, with the right stage and reason
    assert kept_paths == expected_clean  # every good track survives cleaning
    assert sung_paths == expected_sung  # every sung track has vocals; the instrumental does not
    scanned = audio_files(library)
    assert sorted(sung_paths | set(got)) == scanned and len(sung_paths) + len(got) == len(scanned)  # nothing lost
    assert len(set(kept.column("track_id").to_pylist())) == kept.num_rows
    for row in vocals.to_pylist():  # real stems, as long as their source
        info = sf.info(project_dirs["stems"] / row["vocals_path"])
        assert info.samplerate == 44100 and info.channels == 2
        assert abs(info.duration - row["duration_s"]) < 0.01
        source = next(t for t in kept.to_pylist() if t["track_id"] == row["track_id"])
        assert abs(row["duration_s"] - source["duration_s"]) < 0.1
        assert row["vocal_active_fraction"] > 0.2 and row["backend"] == "torch"

    segments = _release_tables(data, "segments")
    ids = segments.column("segment_id").to_pylist()
    assert len(ids) == len(set(ids)) > 0
    # every track with vocals has clips, or a rejection that says why
    no_segments = {p for p, (stage, _) in got.items() if stage == "segments"}
    assert set(segments.column("track_id").to_pylist()) | {
        r["track_id"] for r in rejected.to_pylist() if r["stage"] == "segments"
    } == set(vocals.column("track_id").to_pylist())
    assert not no_segments  # the demo's songs all have sung stretches
    clips = PackedRows.from_table(segments, data)
    assert clips.shape == (len(ids), 160000)  # 10 s at 16 kHz
    assert all(0 <= r["padding_s"] <= 5.0 for r in segments.to_pylist())  # remainders ≥ half a clip
    features = _release_tables(data, "features")
    assert features.column("segment_id").to_pylist() == ids
    log_mels = PackedRows.from_table(features, data, column="feature_file", row="feature_row")
    assert log_mels.shape == (len(ids), 128, 313) and log_mels.dtype == np.float16
    assert np.isfinite(log_mels[:].astype(np.float32)).all()

    # training and evaluation: a registered model, its run in MLflow, the reports
    summary = json.loads((project_dirs["reports"] / "metrics.json").read_text())
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.get_run(summary["song"]["mlflow_run_id"])
    assert run.data.tags["split_kind"] == "song" and "val_loss" in run.data.metrics
    assert "test_segment_accuracy" in run.data.metrics
    assert client.get_registered_model("reconet-vocalist").latest_versions
    assert (project_dirs["reports"] / "evaluation" / "song" / "confusion.png").exists()
    # predictions: every test song of the song split, answered as `reconet identify` answers
    import pyarrow.compute as pc

    from assets.resources import table_path

    splits = read_table(data / "tables" / "splits.parquet")
    in_test = pc.and_(pc.equal(splits.column("kind"), "song"), pc.equal(splits.column("split"), "test"))
    song_split = splits.filter(in_test)
    classes = set(json.loads(run.data.params["classes"]))
    artist_of = dict(zip(segments.column("track_id").to_pylist(), segments.column("artist").to_pylist(), strict=True))
    test_songs = {t for t in song_split.column("track_id").to_pylist() if artist_of[t] in classes}
    answers = read_table(table_path(data / "tables", "predictions", "song")).to_pylist()
    assert {r["track_id"] for r in answers} == test_songs and len(answers) == len(test_songs)
    for r in answers:
        assert r["truth"] == artist_of[r["track_id"]] and r["correct"] == (r["singer"] == r["truth"])
        assert r["top_k_probabilities"] == sorted(r["top_k_probabilities"], reverse=True)
        assert (r["truth"] in r["top_k"]) == (r["truth_rank"] <= len(r["top_k"]))
    assert sum(r["correct"] for r in answers) / len(answers) >= 2 / len(classes)  # twice chance
    hostile = next(r for r in kept.to_pylist() if r["title"] == "../../etc/passwd")
    assert hostile["album"] == "..\\..\\Windows\\System32"
    assert _snapshot(library) == before  # the library is read, never written

    eda = project_dirs["reports"] / "eda"
    pngs = sorted(p.name for p in eda.glob("*.png"))
    assert len(pngs) >= 6 and all((eda / p).read_bytes().startswith(b"\x89PNG") for p in pngs)
    assert "Marla Voss" in (eda / "summary.md").read_text()

    with dg.DagsterInstance.get() as instance:  # the runs are on the persistent instance the UI reads
        keys = instance.get_dynamic_partitions(releases.name)
        assert sorted(keys) == sorted({p.rsplit("/", 1)[0] for p in scanned})
        eda_event = instance.get_latest_materialization_event(dg.AssetKey("metadata_eda"))
        metadata = eda_event.asset_materialization.metadata
        assert any(k.startswith("plot_") and "data:image/png;base64," in v.value for k, v in metadata.items())
        tracks_parts = instance.get_materialized_partitions(dg.AssetKey("tracks"))
        assert tracks_parts == set(keys)
        assert instance.get_materialized_partitions(dg.AssetKey("vocals")) == set(keys)


def _release_tables(data: Path, asset: str):
    import pyarrow as pa

    return pa.concat_tables(read_table(p) for p in sorted((data / "tables" / asset).glob("*.parquet")))


def _vocals_table(data: Path):
    return _release_tables(data, "vocals")


def _vocals_metadata(instance: dg.DagsterInstance, key: str) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("vocals"), asset_partitions=[key]), limit=1
    ).records
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def test_rerun_is_idempotent_and_a_new_album_is_one_new_partition(small_library, project_dirs, tmp_path):
    source, _ = small_library
    library = tmp_path / "library"
    subprocess.run(["cp", "-r", str(source), str(library)], check=True)
    assert _run_cli("run", "--library", str(library)).returncode == 0
    data = project_dirs["data"] / "tables"
    first_rejected = read_table(data / "rejected.parquet")
    first_kept = read_table(data / "clean_tracks.parquet")

    first_vocals = _vocals_table(project_dirs["data"])
    first_segments = _release_tables(project_dirs["data"], "segments")

    assert _run_cli("run", "--library", str(library)).returncode == 0  # same input, same tables
    assert read_table(data / "rejected.parquet").equals(first_rejected)
    assert read_table(data / "clean_tracks.parquet").equals(first_kept)
    assert _vocals_table(project_dirs["data"]).equals(first_vocals)
    assert _release_tables(project_dirs["data"], "segments").equals(first_segments)  # same ids, same clips
    with dg.DagsterInstance.get() as instance:  # the second run separated nothing: all from the cache
        for key in instance.get_dynamic_partitions(releases.name):
            meta = _vocals_metadata(instance, key)
            assert meta["separated_now"] == 0 and meta["from_cache"] == meta["clean_tracks"]

    # a new album arrives: one new partition; the other releases' tables are untouched
    new_album = library / "Dex Calder" / "Brand New Album"
    new_album.mkdir()
    donor = next(p for p in (library / "Marla Voss" / "Neon Psalms").iterdir() if p.suffix == ".flac")
    subprocess.run(["cp", str(donor), str(new_album / "01 New Song.flac")], check=True)
    untouched = {p: p.stat().st_mtime_ns for p in (data / "tracks").glob("*.parquet")}
    with dg.DagsterInstance.get() as instance:
        from assets.partitions import sync_release_partitions
        from ml import config

        added, removed = sync_release_partitions(instance, config.paths(library=library), config.load_params())
        assert (added, removed) == (["Dex Calder/Brand New Album"], [])
        result = defs.resolve_job_def("release_job").execute_in_process(
            instance=instance, partition_key=added[0], resources={"settings": _settings(library)}
        )
        assert result.success
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched
    assert len(list((data / "tracks").glob("*.parquet"))) == len(untouched) + 1


def _settings(library: Path):
    from assets.resources import ReconetSettings

    return ReconetSettings(library=str(library))


def test_definitions_validate(project_dirs):
    # DAGSTER_HOME points at a fresh, empty folder (project_dirs): validation must not need `make setup`
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=project_root(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Validation successful" in proc.stdout + proc.stderr


def test_a_failed_release_leaves_the_catalogue_wide_assets_to_the_others(small_library, project_dirs, tmp_path,
                                                                          capsys, monkeypatch):  # fmt: skip
    from ml import config
    from ml.catalogue.rejected import failed_releases
    from pipeline.cli import _main_phases, _print_summary, prepare_dagster_home, run_phases
    from pipeline.jobs import MAIN_JOB_PHASES

    source, _ = small_library
    library = tmp_path / "library"
    artists = sorted(p.name for p in source.iterdir() if p.is_dir())[:2]
    gone = library / "Gone Artist" / "Lost Album"  # moved away while the pipeline runs
    gone.parent.mkdir(parents=True)
    for artist in artists:
        subprocess.run(["cp", "-r", str(source / artist), str(library / artist)], check=True)
    subprocess.run(["cp", "-r", str(next((library / artists[0]).iterdir())), str(gone)], check=True)
    monkeypatch.setenv("RECONET_LIBRARY", str(library))
    paths, params = config.paths(library=library), config.load_params()
    prepare_dagster_home(paths)
    with dg.DagsterInstance.get() as instance:
        from assets.partitions import sync_release_partitions

        sync_release_partitions(instance, paths, params)
        subprocess.run(["rm", "-r", str(gone)], check=True)
        phases = _main_phases()[: len(MAIN_JOB_PHASES)]  # up to the splits: training is not the point here
        failed = run_phases(instance, phases, instance.get_dynamic_partitions(releases.name), [])
        assert list(failed) == ["Gone Artist/Lost Album"] and "release_job failed" in failed["Gone Artist/Lost Album"]
        (run,) = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": "Gone Artist/Lost Album"}))
        assert run.status == dg.DagsterRunStatus.FAILURE  # the UI's run list shows why, as a tag
        why = run.tags["reconet/failure"]
        assert why.startswith("tracks: ") and "no longer in the library" in why, why
        good = set(instance.get_dynamic_partitions(releases.name)) - set(failed)
        assert instance.get_materialized_partitions(dg.AssetKey("features")) == good  # the others went on
        for asset in ("clean_tracks", "rejected", "metadata_eda", "splits"):  # the catalogue-wide assets ran
            assert instance.get_latest_materialization_event(dg.AssetKey(asset)) is not None, asset
    tables = project_dirs["data"] / "tables"
    kept = read_table(tables / "clean_tracks.parquet")
    assert {r.split("/")[0] for r in kept.column("release").to_pylist()} == set(artists)
    assert read_table(tables / "splits.parquet").num_rows > 0
    rows = [r for r in read_table(tables / "rejected.parquet").to_pylist() if r["release"] == "Gone Artist/Lost Album"]
    assert [(r["stage"], r["reason"]) for r in rows] == [("tracks", "release_failed")]
    assert "no longer in the library" in rows[0]["detail"]
    capsys.readouterr()
    monkeypatch.setenv("COLUMNS", "300")  # one table row per line
    _print_summary(paths, 1.0)
    summary = " ".join(capsys.readouterr().out.split())
    assert "failed releases" in summary and "Gone Artist/Lost Album" in summary and "no longer in the" in summary

    # the release comes back: its next run succeeds and its failure is forgotten
    subprocess.run(["cp", "-r", str(next((library / artists[0]).iterdir())), str(gone)], check=True)
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def("release_job").execute_in_process(instance=instance,
                                                                        partition_key="Gone Artist/Lost Album")
        assert result.success
    assert failed_releases(paths.rejected) == set()


def test_stems_of_another_separation_give_the_next_runs_new_features(project_dirs, tmp_path, monkeypatch):
    """The segments and features assets, run through Dagster on stems that a separation backend wrote:
    stems of another checkpoint or backend keep the segment ids and still get their own log-mels."""
    from assets.resources import ParquetTableIOManager, ReconetSettings, table_path
    from assets.segments import features, segments
    from ml import config
    from ml.separation.separation import VOCALS_SCHEMA
    from ml.tables import write_table
    from tests.test_features import _separated

    monkeypatch.setenv("RECONET_STEMS_DIR", str(tmp_path / "stems"))
    paths = config.paths()
    release = "A/B"
    # the `vocals` asset's table, written here instead of by a separation
    vocals = dg.AssetSpec("vocals", partitions_def=releases).with_io_manager_key("table_io_manager")

    def run(backend: str, sha: str, freq: float) -> tuple[dict, np.ndarray]:
        write_table(_separated(paths.vocals, backend, sha, freq), table_path(paths.tables, "vocals", release),
                    VOCALS_SCHEMA)  # fmt: skip
        result = dg.materialize([vocals, segments, features], selection=[segments, features], partition_key=release,
                                instance=instance, resources={"settings": ReconetSettings(),
                                                              "table_io_manager": ParquetTableIOManager()})  # fmt: skip
        assert result.success
        (event,) = result.asset_materializations_for_node("features")
        table = read_table(table_path(paths.tables, "features", release))
        (file,) = set(table.column("feature_file").to_pylist())
        return {k: v.value for k, v in event.metadata.items()}, np.array(np.load(paths.data / file))

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(releases.name, [release])
        first, first_features = run("torch", "1" * 64, 220.0)
        assert first["computed"] is True and first["clips"] == 3
        again, _ = run("torch", "1" * 64, 220.0)  # the same stems: the cache
        assert again["computed"] is False and again["file"] == first["file"]
        ids = read_table(table_path(paths.tables, "segments", release)).column("segment_id")
        for backend, sha, freq in (("torch", "2" * 64, 330.0), ("spleeter", "2" * 64, 440.0)):
            other, other_features = run(backend, sha, freq)
            segments_now = read_table(table_path(paths.tables, "segments", release))
            assert segments_now.column("segment_id").equals(ids)  # the same clips by id...
            assert other["computed"] is True and other["file"] != first["file"]  # ...get their own log-mels
            assert set(segments_now.column("stems").to_pylist()) == {f"{backend}-{sha}"}  # (what they were cut from)
            assert np.abs(other_features.astype(np.float32) - first_features.astype(np.float32)).max() > 10
