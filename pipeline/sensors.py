"""Sensors and the schedule: new discographies are processed on their own, training follows, and
a nightly run re-materialises what a parameter or code change made stale.

* ``new_release_sensor`` looks at the library. A release folder that appeared or changed, and has
  settled (see :func:`ml.catalogue.orchestration.ready_releases`), gets its partition and a run of
  ``process_release_job`` for that release alone; a vanished one loses its partition.
* ``retrain_sensor`` follows: once no release run is in progress and every release has log-mels
  (or failed, and is listed in ``rejected``), newer data than the splits asks for ``refresh_job``;
  splits newer than those a split kind's model was trained on ask for ``training_job`` on that kind
  (one run at a time per kind). While it waits, its tick says for what (:func:`waiting_for`).
* ``nightly_reprocess`` (see :mod:`pipeline.staleness`) re-runs stale releases and training; its
  refresh and training wait as the retrain sensor does.

All three are idempotent: their decisions come from what the instance has materialised (and each
run request has a run key), so the same content never triggers twice.
"""

import json
import time
from pathlib import Path

import dagster as dg

from assets.catalogue import RELEASE_FINGERPRINT
from assets.partitions import releases
from assets.resources import ReconetSettings
from ml import config
from ml.catalogue.catalogue import release_states
from ml.catalogue.orchestration import OrchestrationParams, ready_releases
from ml.catalogue.rejected import failed_releases, forget_scope
from ml.training.training import TrainParams
from pipeline.jobs import (
    catalogue_job,
    inbox_job,
    process_release_job,
    refresh_job,
    release_job,
    segments_job,
    training_job,
    vocals_job,
)

IN_PROGRESS = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
               dg.DagsterRunStatus.STARTED]  # fmt: skip
_ORCHESTRATION = OrchestrationParams.from_params(config.load_params())
_INTERVAL = _ORCHESTRATION.sensor_interval_s
# runs that write one release's data, or clean the catalogue: the catalogue-wide steps wait for them
RELEASE_JOBS = {job.name for job in (process_release_job, release_job, vocals_job, segments_job, catalogue_job)}


def processed_fingerprints(instance: dg.DagsterInstance, keys: list[str]) -> dict[str, str]:
    """Release -> the folder fingerprint its latest `tracks` materialisation read."""
    found = {}
    for key in keys:
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("tracks"), asset_partitions=[key]), limit=1
        )
        if result.records:
            value = result.records[0].asset_materialization.metadata.get(RELEASE_FINGERPRINT)
            if value is not None:
                found[key] = value.value
    return found


@dg.sensor(jobs=[process_release_job, catalogue_job], minimum_interval_seconds=_INTERVAL,
           default_status=dg.DefaultSensorStatus.RUNNING)  # fmt: skip
def new_release_sensor(context: dg.SensorEvaluationContext, settings: ReconetSettings) -> dg.SensorResult:
    """New or changed release folders in the library: register and process each one, alone."""
    params, paths = settings.params(), settings.paths()
    orchestration = OrchestrationParams.from_params(params)
    if not paths.library.is_dir():
        return dg.SensorResult(skip_reason=f"music library not found: {paths.library}")
    states = release_states(paths.library, params["library"]["audio_extensions"])
    cursor = json.loads(context.cursor) if context.cursor else {}
    known = set(context.instance.get_dynamic_partitions(releases.name))
    # what was processed: remembered in the cursor, asked of the instance only for what changed
    done = {k: f for k, f in cursor.get("done", {}).items() if k in states and states[k].fingerprint == f}
    processed = {**done, **processed_fingerprints(context.instance, sorted((known & set(states)) - set(done)))}
    ready, settling = ready_releases(states, cursor.get("seen", {}), processed, time.time(), orchestration.settle_s)
    new = [k for k in ready if k not in known]
    removed = sorted(known - set(states))
    partition_requests = []
    if new:
        partition_requests.append(releases.build_add_request(new))
    if removed:
        partition_requests.append(releases.build_delete_request(removed))
        for key in removed:
            forget_scope(paths.rejected, key)
    what = {k: "changed" if k in processed else "new" for k in ready}  # processed before, with other content
    runs = [dg.RunRequest(partition_key=k, job_name=process_release_job.name, run_key=f"{k}@{states[k].fingerprint}",
                          tags={"reconet/trigger": f"{what[k]} release"}) for k in ready]  # fmt: skip
    if removed:  # the catalogue-wide cleaning must forget them; the retrain sensor follows
        runs.append(dg.RunRequest(job_name=catalogue_job.name, run_key="removed:" + json.dumps(removed)
                                  + f"@{time.time():.0f}", tags={"reconet/trigger": "releases removed"}))  # fmt: skip
    for key in ready:
        context.log.info(f"{what[key]} release {key}: {states[key].files} audio files")
    if settling:
        context.log.info(f"waiting for {len(settling)} release folder(s) to settle: {settling[:5]}")
    seen = {k: s.fingerprint for k, s in states.items()}
    skip = None if runs or partition_requests else f"nothing new ({len(states)} releases, {len(settling)} settling)"
    done = {k: f for k, f in processed.items() if k in states and states[k].fingerprint == f}
    return dg.SensorResult(run_requests=runs, dynamic_partitions_requests=partition_requests,
                           cursor=json.dumps({"seen": seen, "done": done}), skip_reason=skip)  # fmt: skip


def waiting_for(instance: dg.DagsterInstance, rejected_dir: Path) -> str | None:
    """Why splitting and training should wait, naming the releases (None: they need not): runs of
    releases (or of the catalogue's cleaning) in progress, or releases registered and not processed
    yet. A release whose run failed is listed in `rejected` and not waited for."""
    busy = [r for r in instance.get_runs(dg.RunsFilter(statuses=IN_PROGRESS)) if r.job_name in RELEASE_JOBS]
    if busy:
        names = sorted({r.tags.get("dagster/partition") or r.job_name for r in busy})
        return f"waiting for {len(busy)} run(s) in progress: {names[:5]}"
    keys = instance.get_dynamic_partitions(releases.name)
    processed = instance.get_materialized_partitions(dg.AssetKey("features"))
    unprocessed = sorted(set(keys) - processed - failed_releases(rejected_dir))
    if unprocessed:
        return f"waiting for {len(unprocessed)} release(s) registered, not processed yet: {unprocessed[:5]}"
    return None


def _latest_record(instance: dg.DagsterInstance, asset: str, partition: str | None = None):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    return records[0] if records else None


def _latest_storage_id(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> int:
    record = _latest_record(instance, asset, partition)
    return record.storage_id if record else 0


def _storage_id_read(instance: dg.DagsterInstance, asset: str, upstream: str, partition: str | None = None) -> int:
    """The storage id of the ``upstream`` materialisation that ``asset``'s latest one read (Dagster
    records it as a tag; 0: none). A model trained while newer splits were made read the older ones."""
    record = _latest_record(instance, asset, partition)
    pointer = record.asset_materialization.tags.get(f"dagster/input_event_pointer/{upstream}", "") if record else ""
    return int(pointer) if pointer.isdigit() else 0


@dg.sensor(jobs=[refresh_job, training_job], minimum_interval_seconds=_ORCHESTRATION.retrain_interval_s,
           default_status=dg.DefaultSensorStatus.RUNNING)  # fmt: skip
def retrain_sensor(context: dg.SensorEvaluationContext, settings: ReconetSettings) -> dg.SensorResult:
    """After new data, split again; after new splits, train and evaluate each split kind again."""
    instance = context.instance
    if not instance.get_dynamic_partitions(releases.name):
        return dg.SensorResult(skip_reason="no releases")
    if reason := waiting_for(instance, settings.paths().rejected):
        return dg.SensorResult(skip_reason=reason)
    clean, features = _latest_storage_id(instance, "clean_tracks"), _latest_storage_id(instance, "features")
    split = _latest_storage_id(instance, "splits")
    if features > split or clean > _storage_id_read(instance, "splits", "clean_tracks"):
        data = max(clean, features)
        if failed := sorted(failed_releases(settings.paths().rejected)):
            context.log.info(f"left out, their runs failed (see `rejected`): {failed[:5]}")
        return dg.SensorResult(run_requests=[dg.RunRequest(job_name=refresh_job.name, run_key=f"refresh@{data}",
                                                           tags={"reconet/trigger": "new data"})])  # fmt: skip
    if instance.get_runs(dg.RunsFilter(job_name=refresh_job.name, statuses=IN_PROGRESS)):
        return dg.SensorResult(skip_reason="splits are being refreshed")
    kinds = TrainParams.from_params(settings.params()).split_kinds
    stale = [k for k in kinds if _storage_id_read(instance, "model", "splits", k) < split]
    training = {r.tags.get("dagster/partition") for r in
                instance.get_runs(dg.RunsFilter(job_name=training_job.name, statuses=IN_PROGRESS))}  # fmt: skip
    runs = [dg.RunRequest(job_name=training_job.name, partition_key=k, run_key=f"train-{k}@{split}",
                          tags={"reconet/trigger": "new splits"}) for k in stale if k not in training]  # fmt: skip
    busy = [k for k in stale if k in training]  # trained again once that run ends
    skip = f"waiting for the training of {busy} in progress" if busy else "every model was trained on the latest splits"
    return dg.SensorResult(run_requests=runs, skip_reason=None if runs else skip)


def _nightly(job) -> dg.ScheduleDefinition:
    """A nightly schedule (``orchestration.reprocess_cron``) running ``job`` where outputs are stale.
    The three share one decision (:func:`pipeline.staleness.reprocess_requests`), which asks for one
    job only: the stages downstream follow through ``retrain_sensor``."""
    orchestration = OrchestrationParams.from_params(config.load_params())

    @dg.schedule(name=f"nightly_{job.name.removesuffix('_job')}", job=job,
                 cron_schedule=orchestration.reprocess_cron, execution_timezone=orchestration.timezone,
                 default_status=dg.DefaultScheduleStatus.RUNNING)  # fmt: skip
    def nightly(context: dg.ScheduleEvaluationContext, settings: ReconetSettings):
        from pipeline.staleness import reprocess_requests, stale_outputs

        if job is not process_release_job and (reason := waiting_for(context.instance, settings.paths().rejected)):
            return dg.SkipReason(reason)
        stale = stale_outputs(context.instance, settings.params())
        wanted = reprocess_requests(stale, context.instance.get_dynamic_partitions(releases.name))
        mine = [r for r in wanted if r.job_name == job.name]
        if not mine:
            return dg.SkipReason(f"nothing stale for {job.name}" if not wanted else
                                 f"{wanted[0].job_name} goes first")  # fmt: skip
        context.log.info(f"stale: {json.dumps({a: len(p) for a, p in stale.items()})}")
        return [dg.RunRequest(partition_key=r.partition_key, tags=r.tags) for r in mine]

    nightly.__doc__ = f"Re-run {job.name} where a parameter or code change made outputs stale."
    return nightly


SCHEDULES = [_nightly(job) for job in (process_release_job, refresh_job, training_job)]


def _has_champion(settings: ReconetSettings) -> bool:
    from ml.training.tracking import current_champion, tracking_uri

    return current_champion(tracking_uri(settings.paths().root), "reconet-vocalist") is not None


@dg.sensor(jobs=[inbox_job], minimum_interval_seconds=_INTERVAL, default_status=dg.DefaultSensorStatus.RUNNING)
def inbox_sensor(context: dg.SensorEvaluationContext, settings: ReconetSettings) -> dg.SensorResult:
    """Recordings dropped in the inbox (``identify.inbox``): each file that has settled (unchanged
    for ``orchestration.settle_s``, as a release folder) gets a partition of `inbox_identification`
    and a run that identifies it with the champion model; a changed file runs again, a removed one
    loses its partition. Nothing runs before there is a champion."""
    from assets.identification import inbox_recordings
    from ml.identification.inbox import file_states, inbox_files

    params, paths = settings.params(), settings.paths()
    if not paths.inbox.is_dir():
        return dg.SensorResult(skip_reason=f"no inbox folder ({paths.inbox})")
    states = file_states(inbox_files(paths.inbox, params["library"]["audio_extensions"]))
    cursor = json.loads(context.cursor) if context.cursor else {}
    known = set(context.instance.get_dynamic_partitions(inbox_recordings.name))
    done = {k: f for k, f in cursor.get("done", {}).items() if k in states}
    ready, settling = ready_releases(states, cursor.get("seen", {}), done, time.time(),
                                     OrchestrationParams.from_params(params).settle_s)  # fmt: skip
    removed = sorted(known - set(states))
    requests = [inbox_recordings.build_delete_request(removed)] if removed else []
    runs = []
    if ready and not _has_champion(settings):
        context.log.info(f"{len(ready)} recording(s) wait for a champion model: train one first")
        ready = []
    if ready:
        if new := [k for k in ready if k not in known]:
            requests.append(inbox_recordings.build_add_request(new))
        runs = [dg.RunRequest(partition_key=k, job_name=inbox_job.name, run_key=f"inbox:{k}@{states[k].fingerprint}",
                              tags={"reconet/trigger": "inbox"}) for k in ready]  # fmt: skip
        done.update({k: states[k].fingerprint for k in ready})
    skip = None if runs or requests else (f"{len(states)} recording(s) in the inbox, {len(settling)} settling"
                                          if states else "the inbox is empty")  # fmt: skip
    return dg.SensorResult(run_requests=runs, dynamic_partitions_requests=requests, skip_reason=skip,
                           cursor=json.dumps({"seen": {k: s.fingerprint for k, s in states.items()}, "done": done}))


SENSORS = [new_release_sensor, retrain_sensor, inbox_sensor]
