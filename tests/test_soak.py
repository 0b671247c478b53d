"""Automation for real, with albums arriving and leaving mid-run: `dagster dev` (the webserver and
the daemon, as `make ui` runs them) on 127.0.0.1 processes a small library from empty, with one album
copied in while releases are processed, another while a model trains, and one removed. Once the
daemon is idle, every run succeeded, each release was processed once, and the last model covers
exactly the releases in the library."""

import os
import shutil
import time
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml
from test_ui import _free_port, _graphql, _repository, _run_errors, _start, _stop, _wait_until_answers

from ml.catalogue.catalogue import release_states
from ml.tables import read_table, scope_filename
from pipeline.instance import DAGSTER_YAML

pytestmark = pytest.mark.slow

EXTENSIONS = ["mp3", "flac", "ogg", "m4a", "wav"]
SOAK_TIMEOUT_S = 1200  # the whole soak, a bound (it takes minutes); each wait below takes from it
ADDED_WHILE_PROCESSING = "Marla Voss/Neon Psalms"
ADDED_WHILE_TRAINING = "Kid Ferro/Night Shift Tapes"
REMOVED = "Dex Calder/Iron Meridian"  # once the album added while training is being processed
IN_PROGRESS = {"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"}

TICKS_QUERY = """
query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { ticks(limit: 1000) { status skipReason } } }
  }
}
"""


class Soak:
    """The instance the daemon works on, read as the test goes; every wait is bounded by one deadline."""

    def __init__(self, daemon, log: Path) -> None:
        self.daemon, self.log, self.deadline = daemon, log, time.monotonic() + SOAK_TIMEOUT_S

    def runs(self) -> list[dg.DagsterRun]:
        with dg.DagsterInstance.get() as instance:
            return list(instance.get_runs())

    def wait(self, what: str, condition) -> None:
        while not condition():
            assert self.daemon.poll() is None, f"dagster dev exited:\n{self.log.read_text()[-4000:]}"
            if time.monotonic() > self.deadline:
                pytest.fail(f"{SOAK_TIMEOUT_S} s passed waiting for {what}\n{self.report()}")
            time.sleep(2)

    def started(self, job: str, partition: str | None = None) -> bool:
        runs = [r for r in self.runs() if r.job_name == job and r.status.value != "QUEUED"]
        return any(partition is None or r.tags.get("dagster/partition") == partition for r in runs)

    def report(self) -> str:
        lines = [f"{r.job_name} {r.tags.get('dagster/partition', '')} {r.status.value}" for r in self.runs()[::-1]]
        failed = [r.run_id for r in self.runs() if r.status.value in ("FAILURE", "CANCELED")]
        errors = "\n".join(f"run {run_id}:\n{_run_errors(run_id)}" for run_id in failed)
        return "runs:\n" + "\n".join(lines) + f"\n{errors}\ndagster dev's log:\n{self.log.read_text()[-4000:]}"


def _latest(instance: dg.DagsterInstance, asset: str, partition: str | None = None):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    return records[0] if records else None


def _storage_id(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> int:
    record = _latest(instance, asset, partition)
    return record.storage_id if record else 0


def _splits_trained_on(instance: dg.DagsterInstance) -> int:
    """The storage id of the splits the latest song model read (as Dagster recorded it)."""
    record = _latest(instance, "model", "song")
    return int(record.asset_materialization.tags["dagster/input_event_pointer/splits"]) if record else 0


def _settled(library: Path, quiet_since: list[float]) -> bool:
    """Idle: no run in progress for 20 s, every release of the library processed, the splits newer
    than the data, the model trained on the latest splits and evaluated after."""
    with dg.DagsterInstance.get() as instance:
        if any(r.status.value in IN_PROGRESS for r in instance.get_runs(limit=50)):
            quiet_since[0] = time.monotonic()
            return False
        keys = set(instance.get_dynamic_partitions("releases"))
        data = max(_storage_id(instance, "clean_tracks"), _storage_id(instance, "features"))
        split = _storage_id(instance, "splits")
        evaluated = _storage_id(instance, "evaluation", "song") > _storage_id(instance, "model", "song")
        processed = keys <= instance.get_materialized_partitions(dg.AssetKey("features"))
        done = keys == set(release_states(library, EXTENSIONS)) and processed and split > data
        done = done and _splits_trained_on(instance) == split and evaluated
    return done and time.monotonic() - quiet_since[0] > 20


@pytest.mark.timeout(SOAK_TIMEOUT_S + 300)
def test_the_daemon_processes_a_changing_library_with_every_run_successful(small_library, project_dirs, tmp_path,
                                                                            monkeypatch):  # fmt: skip
    source, _ = small_library
    library = tmp_path / "library"
    later = (ADDED_WHILE_PROCESSING, ADDED_WHILE_TRAINING)
    shutil.copytree(source, library, ignore=lambda d, names: names if Path(d).relative_to(source).as_posix() in later
                    else [])  # fmt: skip
    for key in later:
        shutil.rmtree(library / key)
    monkeypatch.setenv("RECONET_LIBRARY", str(library))
    monkeypatch.setenv("RECONET_INBOX", str(tmp_path / "inbox"))  # none: the inbox sensor has nothing to do
    params_file = Path(os.environ["RECONET_PARAMS"])
    params = yaml.safe_load(params_file.read_text())
    params["orchestration"].update(sensor_interval_s=1, retrain_interval_s=2, settle_s=2, executor="in_process",
                                   reprocess_cron="0 3 1 1 *")  # fmt: skip
    params["train"].update(model="voice_embedding")
    params["models"]["voice_embedding"]["encoder"] = "ge2e"  # a fast encoder: automation is the point here
    params_file.write_text(yaml.safe_dump(params))
    settings = yaml.safe_load(DAGSTER_YAML)  # the project's instance, two runs at a time on 2 cores
    settings["concurrency"]["runs"]["max_concurrent_runs"] = 2
    (project_dirs["dagster_home"] / "dagster.yaml").write_text(yaml.safe_dump(settings))

    started = time.monotonic()
    port, log = _free_port(), tmp_path / "dagster-dev.log"
    dev = _start("dagster", ["dev", "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"], log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answers(url, dev, log)
        soak = Soak(dev, log)
        soak.wait("a release run to start", lambda: soak.started("process_release_job"))
        shutil.copytree(source / ADDED_WHILE_PROCESSING, library / ADDED_WHILE_PROCESSING)
        soak.wait("a training run to start", lambda: soak.started("training_job"))
        shutil.copytree(source / ADDED_WHILE_TRAINING, library / ADDED_WHILE_TRAINING)
        soak.wait("its release run to start", lambda: soak.started("process_release_job", ADDED_WHILE_TRAINING))
        shutil.rmtree(library / REMOVED)
        quiet_since = [time.monotonic()]
        soak.wait("the daemon to be idle", lambda: _settled(library, quiet_since))
        selector = {**_repository(url), "sensorName": "retrain_sensor"}
        ticks = _graphql(f"{url}/graphql", TICKS_QUERY, {"selector": selector})["sensorOrError"]
    finally:
        _stop(dev)
    seconds = time.monotonic() - started

    runs = soak.runs()
    statuses = {r.status.value for r in runs}
    print(f"\nsoak: {len(runs)} runs in {seconds:.0f} s, statuses {sorted(statuses)}")
    assert statuses == {"SUCCESS"}, soak.report()
    jobs = [r.job_name for r in runs]
    assert jobs.count("training_job") >= 2 and "catalogue_job" in jobs, jobs  # a retraining, and the removal
    # each release processed once for its content (the removed one before it left)
    processed = [r.tags["dagster/partition"] for r in runs if r.job_name == "process_release_job"]
    now = sorted(release_states(library, EXTENSIONS))
    assert sorted(set(processed)) == sorted(now + [REMOVED]) and len(processed) == len(set(processed)), processed
    with dg.DagsterInstance.get() as instance:
        assert sorted(instance.get_dynamic_partitions("releases")) == now
        reads = [r.asset_materialization.partition for r in
                 instance.fetch_materializations(dg.AssetKey("tracks"), limit=1000).records]  # fmt: skip
        assert sorted(reads) == sorted(now + [REMOVED])
        classes = _latest(instance, "model", "song").asset_materialization.metadata["classes"]
        excluded = {e["artist"] for e in _latest(instance, "splits").asset_materialization.metadata["excluded"].value}
        assert _splits_trained_on(instance) == _storage_id(instance, "splits")  # the last model read the last splits

    # the final splits cover exactly the releases in the library (an artist with too few songs left
    # out, and listed in the splits' metadata); the final model, their artists
    tables = project_dirs["data"] / "tables"
    segments = pa.concat_tables([read_table(tables / "segments" / scope_filename(k)) for k in now])
    splits = read_table(tables / "splits.parquet")
    assert set(splits.column("segment_id").to_pylist()) <= set(segments.column("segment_id").to_pylist())
    in_splits = segments.filter(pc.is_in(segments.column("segment_id"), splits.column("segment_id")))
    artists = set(splits.column("artist").to_pylist())
    assert set(segments.column("artist").to_pylist()) - artists <= excluded
    expected = {r["release"] for r in segments.select(["release", "artist"]).to_pylist() if r["artist"] in artists}
    assert sorted(set(in_splits.column("release").to_pylist())) == sorted(expected)
    assert {ADDED_WHILE_PROCESSING, ADDED_WHILE_TRAINING} <= expected  # the albums that came mid-run
    song = splits.filter(pc.equal(splits.column("kind"), "song"))
    train = song.filter(pc.equal(song.column("split"), "train"))
    assert classes.value == sorted(set(train.column("artist").to_pylist()))

    # the retrain sensor's ticks (the UI's Automation page) said what it waited for
    assert ticks["__typename"] == "Sensor", ticks
    reasons = [t["skipReason"] or "" for t in ticks["sensorState"]["ticks"]]
    assert any(r.startswith("waiting for") and ADDED_WHILE_TRAINING in r for r in reasons), sorted(set(reasons))
