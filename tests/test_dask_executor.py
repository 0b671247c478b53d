"""`orchestration.executor: dask`: a run sends its steps to the workers of a Dask cluster (dagster-dask)."""

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest
import yaml

from assets.partitions import sync_release_partitions
from assets.resources import table_path
from ml import config
from ml.tables import read_table
from tests.conftest import audio_files

pytestmark = pytest.mark.slow


def _clean_release(manifest: dict) -> str:
    """A release of the demo library with no planted problem: every file of it is a track."""
    releases: dict[str, bool] = {}
    for f in manifest["files"]:
        release = f["path"].rsplit("/", 1)[0]
        releases[release] = releases.get(release, True) and not f["expect"]
    return next(r for r, clean in sorted(releases.items()) if clean)


@contextmanager
def _dask_project(library: Path, monkeypatch):
    """A two-worker Dask cluster on this machine, and the project's params pointing the executor at
    it; yields the workers' process ids. The workers inherit this environment (the project's folders)."""
    from distributed import Client, LocalCluster

    monkeypatch.setenv("RECONET_LIBRARY", str(library))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:  # fmt: skip
        params_file = Path(os.environ["RECONET_PARAMS"])
        params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
        params["orchestration"].update(executor="dask", dask_scheduler=cluster.scheduler_address)
        params_file.write_text(yaml.safe_dump(params), encoding="utf-8")
        with dg.DagsterInstance.get() as instance:
            sync_release_partitions(instance, config.paths(params), params)
        yield set(client.run(os.getpid).values())


def _launch(job: str, tags: dict[str, str] | None = None) -> dg.DagsterRun:
    """``job`` run as the UI's run launcher runs it: in a process of its own that loads the definitions
    (with the executor params.yaml names); the run's record."""
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "job", "execute", "-m", "pipeline.definitions", "-a", "defs",
         "-j", job, "--tags", json.dumps(tags or {})],
        cwd=config.project_root(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    with dg.DagsterInstance.get() as instance:
        (run,) = instance.get_runs(dg.RunsFilter(job_name=job))
        return run


def _step_pids(run: dg.DagsterRun) -> tuple[dict[str, int], int]:
    """(step -> the process it started in, the process that ran the run)."""
    with dg.DagsterInstance.get() as instance:
        starts = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
        (run_start,) = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_START)
    return {e.dagster_event.step_key: e.dagster_event.pid for e in starts}, run_start.dagster_event.pid


def test_the_catalogue_is_cleaned_on_the_workers_of_a_dask_cluster(small_library, project_dirs, monkeypatch):
    library, manifest = small_library
    release = _clean_release(manifest)
    with _dask_project(library, monkeypatch) as worker_pids:
        assert len(worker_pids) == 2
        from pipeline.definitions import defs

        with dg.DagsterInstance.get() as instance:  # the release's tracks, read here
            assert defs.resolve_job_def("release_job").execute_in_process(instance=instance,
                                                                          partition_key=release).success  # fmt: skip
        run = _launch("catalogue_job")
    assert run.status == dg.DagsterRunStatus.SUCCESS
    steps, run_pid = _step_pids(run)
    assert "clean_tracks" in steps and set(steps.values()) <= worker_pids  # every step (its checks too) on a worker...
    assert run_pid not in worker_pids | {os.getpid()}  # ...sent there by the run's own process
    kept = read_table(project_dirs["data"] / "tables" / "clean_tracks.parquet")
    assert sorted(kept.column("path").to_pylist()) == [p for p in audio_files(library) if p.startswith(release + "/")]


def test_a_release_is_read_on_the_workers_of_a_dask_cluster(small_library, project_dirs, monkeypatch):
    library, manifest = small_library
    release = _clean_release(manifest)
    with _dask_project(library, monkeypatch) as worker_pids:
        run = _launch("release_job", {"dagster/partition": release})
    assert run.status == dg.DagsterRunStatus.SUCCESS
    steps, _ = _step_pids(run)
    assert steps["tracks"] in worker_pids
    tracks = read_table(table_path(project_dirs["data"] / "tables", "tracks", release))
    assert sorted(tracks.column("path").to_pylist()) == [p for p in audio_files(library) if p.startswith(release + "/")]
