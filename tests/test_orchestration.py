"""Sensors, schedule, asset checks and the champion rule, on the real Dagster instance and MLflow."""

import os
import shutil
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml
from mlflow.tracking import MlflowClient

from assets.resources import MlflowTracking, ReconetSettings
from ml.catalogue.catalogue import ReleaseState, release_states
from ml.catalogue.orchestration import ready_releases
from ml.tables import read_table
from ml.training.splits import split_problems
from ml.training.tracking import champion_report, promote_champion
from pipeline.definitions import defs
from pipeline.instance import cli_run_tags, release_orphaned_runs
from pipeline.sensors import SCHEDULES, new_release_sensor, retrain_sensor
from pipeline.staleness import STEP_INPUTS, reprocess_requests, stale_outputs, step_version

EXTENSIONS = ["mp3", "flac", "ogg", "m4a", "wav"]


def test_a_release_runs_once_its_folder_has_settled_and_never_twice_for_the_same_content():
    state = ReleaseState("abc", newest_mtime=1000.0, files=2)
    # first look: never seen, so it may still be copying
    assert ready_releases({"A/x": state}, {}, {}, now=2000.0, settle_s=60) == ([], ["A/x"])
    # same fingerprint at the next look and quiet for long enough: ready
    assert ready_releases({"A/x": state}, {"A/x": "abc"}, {}, now=2000.0, settle_s=60) == (["A/x"], [])
    # same fingerprint, but a file changed 10 s ago: still settling
    assert ready_releases({"A/x": state}, {"A/x": "abc"}, {}, now=1010.0, settle_s=60) == ([], ["A/x"])
    # already processed with this content: nothing, whatever the cursor says
    assert ready_releases({"A/x": state}, {}, {"A/x": "abc"}, now=2000.0, settle_s=60) == ([], [])
    # processed, then changed: settles, then runs again
    changed = ReleaseState("def", 1000.0, 3)
    assert ready_releases({"A/x": changed}, {"A/x": "abc"}, {"A/x": "abc"}, 2000.0, 60) == ([], ["A/x"])
    assert ready_releases({"A/x": changed}, {"A/x": "def"}, {"A/x": "abc"}, 2000.0, 60) == (["A/x"], [])


def test_split_problems_name_leaks_and_missing_classes():
    rows = []
    for artist in ("A", "B"):
        for i, split in enumerate(("train", "train", "val", "test")):
            rows.append({"segment_id": f"{artist}{i}", "track_id": f"{artist}t{i}", "artist": artist,
                         "album": f"{artist}-al{i // 3}", "kind": "song", "fold": 0, "split": split})  # fmt: skip
    table = pa.Table.from_pylist(rows)
    assert split_problems(table) == []
    leaked = pa.Table.from_pylist(rows + [{**rows[0], "segment_id": "A9", "split": "test"}])
    assert any("on two sides" in p for p in split_problems(leaked))
    no_b_test = pa.Table.from_pylist([r for r in rows if not (r["artist"] == "B" and r["split"] == "test")])
    assert any("no test clip" in p and "B" in p for p in split_problems(no_b_test))
    album_rows = [{**r, "kind": "album", "album": "same"} for r in rows]
    assert any("test album" in p for p in split_problems(pa.Table.from_pylist(album_rows)))


def test_champion_alias_moves_only_to_a_model_that_is_not_worse(tmp_path):
    """Each candidate is compared with the champion it was scored against, on the same clips (both
    scores given); equal is "not below"; a champion that was not scored (its files gone) is replaced;
    a comparison with a champion that has changed since does not count."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_registered_model("voices")
    versions = [client.create_model_version("voices", source=str(tmp_path)).version for _ in range(6)]
    comparisons = [(0.8, None, None), (0.7, 0.75, "1"), (0.9, 0.85, "1"), (0.9, 0.9, "3"), (0.99, 0.5, "3"),
                   (0.6, None, "4")]  # (candidate, champion on the candidate's clips, champion scored)  # fmt: skip
    decisions = [promote_champion(uri, "voices", v, "song", candidate, champion, compared_with)
                 for v, (candidate, champion, compared_with) in zip(versions, comparisons, strict=True)]  # fmt: skip
    assert [d["promoted"] for d in decisions] == [True, False, True, True, False, True]
    assert decisions[1]["champion"] == "1" and "changed" in decisions[4]["note"]  # v3 had replaced v4's rival
    tags = client.get_model_version("voices", "2").tags
    assert (tags["champion_rule_candidate_val_macro_f1"], tags["champion_rule_champion_val_macro_f1"],
            tags["champion_rule_compared_with"]) == ("0.700000", "0.750000", "1")  # fmt: skip
    assert str(client.get_model_version_by_alias("voices", "champion").version) == "6"
    assert champion_report(uri, "voices", "song")["consistent"]
    assert champion_report(uri, "voices", "album") is None  # nothing evaluated on that split
    client.set_registered_model_alias("voices", "champion", "2")  # by hand, against the rule
    report = champion_report(uri, "voices", "song")
    assert not report["consistent"] and report["promoted_after_champion"] == [3, 4, 6]


def test_step_versions_follow_params_and_code(tmp_path):
    params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    before = {asset: step_version(asset, params) for asset in STEP_INPUTS}
    params["features"]["n_mels"] += 1
    after = {asset: step_version(asset, params) for asset in STEP_INPUTS}
    assert {a for a in STEP_INPUTS if before[a] != after[a]} == {"features", "model", "evaluation"}
    # keys that only change speed make nothing stale (as for DVC)
    params["features"]["batch_size"] *= 2
    params["separation"]["batch_chunks"] += 3
    params["catalogue"]["workers"] += 1
    assert {asset: step_version(asset, params) for asset in STEP_INPUTS} == after
    # a stale release re-runs that release; a stale training, its split kinds
    stale = {"features": ["B/y"], "model": ["song"]}
    requests = reprocess_requests(stale, ["A/x", "B/y"])
    assert [(r.job_name, r.partition_key) for r in requests] == [("process_release_job", "B/y")]
    requests = reprocess_requests({"model": ["song"], "evaluation": ["song"]}, ["A/x"])
    assert [(r.job_name, r.partition_key) for r in requests] == [("training_job", "song")]


def _tick(sensor, instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    resources = {"settings": ReconetSettings(), "mlflow_tracking": MlflowTracking()}
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    return sensor(context)


def _apply(result: dg.SensorResult, instance: dg.DagsterInstance) -> list[dg.RunRequest]:
    """What the daemon does with a tick's result: partitions first, then the runs (in process here)."""
    for request in result.dynamic_partitions_requests or []:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
    for run in result.run_requests or []:
        job = defs.resolve_job_def(run.job_name)
        outcome = job.execute_in_process(instance=instance, partition_key=run.partition_key, tags=cli_run_tags(),
                                         raise_on_error=False)  # fmt: skip
        assert outcome.success, f"{run.job_name} {run.partition_key} failed"
    return list(result.run_requests or [])


def _materialisations(instance: dg.DagsterInstance, asset: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in instance.fetch_materializations(dg.AssetKey(asset), limit=1000).records:
        key = record.asset_materialization.partition
        counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.slow
def test_a_new_album_dropped_into_the_library_is_processed_alone_and_training_follows(
    small_library, project_dirs, tmp_path, monkeypatch
):
    source, _ = small_library
    library = tmp_path / "library"
    held_back = sorted(release_states(source, EXTENSIONS))[-1]  # the album that arrives later
    shutil.copytree(source, library, ignore=lambda d, names: names if Path(d) == source / held_back else [])
    monkeypatch.setenv("RECONET_LIBRARY", str(library))
    params_file = Path(os.environ["RECONET_PARAMS"])
    params = yaml.safe_load(params_file.read_text())
    params["orchestration"]["settle_s"] = 0.5
    params_file.write_text(yaml.safe_dump(params))
    instance = dg.DagsterInstance.get()
    first = sorted(release_states(library, EXTENSIONS))

    # first look: every release is new, none has settled yet
    result = _tick(new_release_sensor, instance, None)
    assert not result.run_requests and not result.dynamic_partitions_requests
    time.sleep(0.6)
    result = _tick(new_release_sensor, instance, result.cursor)
    assert sorted(r.partition_key for r in result.run_requests) == first
    assert {r.job_name for r in result.run_requests} == {"process_release_job"}
    _apply(result, instance)
    cursor = result.cursor
    assert not _tick(new_release_sensor, instance, cursor).run_requests  # the same content never runs twice

    # training follows: the splits first, then one training run per split kind
    refresh = _tick(retrain_sensor, instance, None)
    assert [r.job_name for r in refresh.run_requests] == ["refresh_job"]
    _apply(refresh, instance)
    train = _tick(retrain_sensor, instance, None)
    assert [(r.job_name, r.partition_key) for r in train.run_requests] == [("training_job", "song")]
    _apply(train, instance)
    assert not _tick(retrain_sensor, instance, None).run_requests
    before = {asset: _materialisations(instance, asset) for asset in ("tracks", "vocals", "segments", "features")}

    # an album is being copied in: half of it, then the rest; it waits until the folder settles
    src = source / held_back
    files = sorted(p for p in src.iterdir() if p.is_file())
    (library / held_back).mkdir(parents=True, exist_ok=True)  # copytree left it empty
    shutil.copy2(files[0], library / held_back / files[0].name)
    result = _tick(new_release_sensor, instance, cursor)
    assert not result.run_requests
    for f in files[1:]:
        shutil.copy2(f, library / held_back / f.name)
    os.utime(library / held_back / files[-1].name)  # just written
    result = _tick(new_release_sensor, instance, result.cursor)
    assert not result.run_requests  # changed since the last look
    time.sleep(0.6)
    result = _tick(new_release_sensor, instance, result.cursor)
    assert [(r.job_name, r.partition_key) for r in result.run_requests] == [("process_release_job", held_back)]
    assert list(result.dynamic_partitions_requests[0].partition_keys) == [held_back]
    _apply(result, instance)

    after = {asset: _materialisations(instance, asset) for asset in before}
    for asset, counts in after.items():
        assert counts.pop(held_back) == 1, asset
        assert counts == before[asset], f"{asset}: other releases were materialised again"
    checks = {e.check_name: e.passed for e in _check_evaluations(instance)}
    assert checks and all(checks.values()), checks
    expected = {"unique_track_ids", "unique_segment_ids", "every_kept_track_accounted_for", "finite_log_mels"}
    assert expected <= set(checks)

    # and the model is trained again on the new data
    refresh = _tick(retrain_sensor, instance, None)
    assert [r.job_name for r in refresh.run_requests] == ["refresh_job"]
    _apply(refresh, instance)
    assert [r.partition_key for r in _tick(retrain_sensor, instance, None).run_requests] == ["song"]

    # nothing is stale for the nightly schedule... until a feature parameter changes
    assert "features" not in stale_outputs(instance, params)
    params["features"]["n_mels"] = 64
    stale = stale_outputs(instance, params)
    assert stale["features"] == sorted(first + [held_back]) and "segments" not in stale
    # the nightly schedules, as the daemon evaluates them: the releases first, training after them
    params_file.write_text(yaml.safe_dump(params))
    schedules = {s.name: s for s in SCHEDULES}
    context = dg.build_schedule_context(instance=instance, resources={"settings": ReconetSettings()})
    requests = schedules["nightly_process_release"](context)
    assert sorted(r.partition_key for r in requests) == sorted(first + [held_back])
    assert isinstance(schedules["nightly_training"](context), dg.SkipReason)


@pytest.mark.slow
def test_training_with_a_release_in_flight_uses_the_processed_ones_and_automation_waits_naming_it(
    small_library, project_dirs, monkeypatch
):
    from pipeline.cli import _main_phases, run_phases
    from pipeline.jobs import MAIN_JOB_PHASES

    library, _ = small_library
    monkeypatch.setenv("RECONET_LIBRARY", str(library))
    instance = dg.DagsterInstance.get()
    keys = sorted(release_states(library, EXTENSIONS))
    in_flight = "Marla Voss/Neon Psalms"
    instance.add_dynamic_partitions("releases", keys)  # all registered, as the new-release sensor does
    assert run_phases(instance, _main_phases()[: len(MAIN_JOB_PHASES)], [k for k in keys if k != in_flight], []) == {}
    # that release's run is half-way: its clips are cut, their log-mels not computed yet
    cut = ("tracks", "clean_tracks", "vocals", "segments")
    assert defs.resolve_job_def("process_release_job").execute_in_process(
        instance=instance, partition_key=in_flight, asset_selection=[dg.AssetKey(a) for a in cut]).success  # fmt: skip
    tick = _tick(retrain_sensor, instance, None)
    assert not tick.run_requests and f"not processed yet: [{in_flight!r}]" in tick.skip_reason.skip_message

    # a training that runs now (queued before the release arrived, or `reconet run`) does not fail:
    # it trains on the processed releases and says which it left out
    training = defs.resolve_job_def("training_job").execute_in_process(instance=instance, partition_key="song",
                                                                       raise_on_error=False)  # fmt: skip
    assert training.success, _failure_messages(training)
    warnings = [e.message for e in instance.all_logs(training.run_id) if e.level == 30 and e.message]
    assert any("without log-mels yet" in m and in_flight in m for m in warnings), warnings
    splits = read_table(project_dirs["data"] / "tables" / "splits.parquet")
    song = splits.filter(pc.equal(splits.column("kind"), "song"))
    trained = instance.get_latest_materialization_event(dg.AssetKey("model")).asset_materialization.metadata
    assert trained["classes"].value == sorted(set(song.column("artist").to_pylist()))

    # the release finishes: the sensor splits again; a release run started meanwhile holds it back
    assert defs.resolve_job_def("process_release_job").execute_in_process(
        instance=instance, partition_key=in_flight, asset_selection=[dg.AssetKey("features")]).success  # fmt: skip
    assert [r.job_name for r in _tick(retrain_sensor, instance, None).run_requests] == ["refresh_job"]
    release_run = defs.resolve_job_def("process_release_job")
    running = instance.create_run_for_job(release_run, status=dg.DagsterRunStatus.STARTED,
                                          tags={"dagster/partition": keys[0]})  # fmt: skip
    tick = _tick(retrain_sensor, instance, None)
    assert not tick.run_requests and f"in progress: [{keys[0]!r}]" in tick.skip_reason.skip_message
    # the nightly refresh and training (stale after a training parameter changed) wait the same way
    params_file = Path(os.environ["RECONET_PARAMS"])
    params = yaml.safe_load(params_file.read_text())
    params["train"]["batch_size"] += 1
    params_file.write_text(yaml.safe_dump(params))
    context = dg.build_schedule_context(instance=instance, resources={"settings": ReconetSettings()})
    for schedule in (s for s in SCHEDULES if s.name in ("nightly_refresh", "nightly_training")):
        skipped = schedule(context)
        assert isinstance(skipped, dg.SkipReason) and f"in progress: [{keys[0]!r}]" in skipped.skip_message, skipped
    instance.delete_run(running.run_id)
    nightly = {s.name: s for s in SCHEDULES}["nightly_training"](context)  # runs (or lets the releases go first)
    assert not isinstance(nightly, dg.SkipReason) or "waiting" not in nightly.skip_message, nightly


def _failure_messages(result) -> str:
    return "\n".join(str(e.step_failure_data.error.message) for e in result.get_step_failure_events())


def _check_evaluations(instance: dg.DagsterInstance) -> list:
    records = instance.get_records_for_run(run_id=instance.get_runs(limit=1)[0].run_id,
                                           of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records  # fmt: skip
    return [r.event_log_entry.dagster_event.event_specific_data for r in records]


@pytest.mark.slow
def test_a_nan_in_the_log_mels_fails_the_blocking_check(small_library, project_dirs, monkeypatch):
    library, _ = small_library
    monkeypatch.setenv("RECONET_LIBRARY", str(library))
    instance = dg.DagsterInstance.get()
    key = sorted(release_states(library, EXTENSIONS))[0]
    instance.add_dynamic_partitions("releases", sorted(release_states(library, EXTENSIONS)))
    for job in ("release_job",):
        for k in instance.get_dynamic_partitions("releases"):
            assert defs.resolve_job_def(job).execute_in_process(instance=instance, partition_key=k).success
    assert defs.resolve_job_def("process_release_job").execute_in_process(instance=instance, partition_key=key).success
    features = read_table(next((project_dirs["data"] / "tables" / "features").glob("*.parquet")))
    array = np.load(project_dirs["data"] / features.column("feature_file")[0].as_py(), mmap_mode="r+")
    array[0, 0, 0] = np.nan
    array.flush()
    del array
    result = defs.resolve_job_def("segments_job").execute_in_process(instance=instance, partition_key=key,
                                                                     raise_on_error=False)  # fmt: skip
    assert not result.success
    failed = [e for e in _check_evaluations(instance) if not e.passed]
    assert [e.check_name for e in failed] == ["finite_log_mels"]
    assert failed[0].metadata["non_finite"].value == 1


def test_a_killed_run_gives_its_gpu_slot_back(tmp_path, monkeypatch):
    (tmp_path / "dagster.yaml").write_text("concurrency:\n  pools:\n    default_limit: 1\n")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        # a run whose process is gone (a pid that cannot exist) while it held the slot
        run = instance.create_run_for_job(defs.resolve_job_def("register_releases_job"),
                                          status=dg.DagsterRunStatus.STARTED,
                                          tags={**cli_run_tags(), "reconet/pid": "999999999"})  # fmt: skip
        storage = instance.event_log_storage
        storage.set_concurrency_slots("gpu", 1)
        assert storage.claim_concurrency_slot("gpu", run.run_id, "vocals").is_claimed
        alive = instance.create_run_for_job(defs.resolve_job_def("register_releases_job"),
                                            status=dg.DagsterRunStatus.STARTED, tags=cli_run_tags())  # fmt: skip
        assert release_orphaned_runs(instance) == [run.run_id]
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        assert storage.get_concurrency_info("gpu").claimed_slots == []
        assert instance.get_run_by_id(alive.run_id).status == dg.DagsterRunStatus.STARTED  # this process lives


def test_executor_comes_from_params_and_a_missing_plugin_names_its_extra():
    from ml.catalogue.orchestration import OrchestrationParams
    from pipeline.executors import executor_for

    assert executor_for(OrchestrationParams()).name == "multiprocess"
    assert executor_for(OrchestrationParams(executor="in_process")).name == "in_process"
    configured = executor_for(OrchestrationParams(max_concurrent=2))
    assert configured.name == "multiprocess" and configured is not dg.multiprocess_executor
    try:  # setup installs the dask extra (tests/test_dask_executor.py), not celery's
        import dagster_celery  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match=r"pip install -e '\.\[celery\]'"):
            executor_for(OrchestrationParams(executor="celery"))
    with pytest.raises(ValueError, match="orchestration.executor"):
        OrchestrationParams.from_params({"orchestration": {"executor": "ray-on-mars"}})
