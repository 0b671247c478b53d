"""Sensors and the schedule: new discographies are processed on their own, training follows, and
a nightly run re-materialises what a parameter or code change made stale.

* ``new_release_sensor`` looks at the library. A release folder that appeared or changed, and has
  settled (see :func:`ml.catalogue.orchestration.ready_releases`), gets its partition and a run of
  ``process_release_job`` for that release alone; a vanished one loses its partition.
* ``retrain_sensor`` follows: once no release run is in progress and every release has log-mels
  (or failed, and is listed in ``rejected``), newer data than the splits asks for ``refresh_job``;
  splits newer than a split kind's model ask for ``training_job`` on that kind.
* ``nightly_reprocess`` (see :mod:`pipeline.staleness`) re-runs stale releases and training.

All three are idempotent: their decisions come from what the instance has materialised (and each
run request has a run key), so the same content never triggers twice.
"""


import json
import time

import dagster as dg

from assets.catalogue import RELEASE_FINGERPRINT
from assets.partitions import releases
from assets.resources import ReconetSettings
from ml import config
from ml.catalogue.catalogue import release_states
from ml.catalogue.orchestration import OrchestrationParams, ready_releases
from ml.catalogue.rejected import failed_releases, forget_scope
from ml.training.training import TrainParams
from pipeline.jobs import catalogue_job, process_release_job, refresh_job, training_job

IN_PROGRESS = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
               dg.DagsterRunStatus.STARTED]  # fmt: skip
_INTERVAL = OrchestrationParams.from_params(config.load_params()).sensor_interval_s


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


def _latest_storage_id(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> int:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    return records[0].storage_id if records else 0


@dg.sensor(jobs=[refresh_job, training_job], minimum_interval_seconds=max(_INTERVAL, 60),
           default_status=dg.DefaultSensorStatus.RUNNING)  # fmt: skip
def retrain_sensor(context: dg.SensorEvaluationContext, settings: ReconetSettings) -> dg.SensorResult:
    """After new data, split again; after new splits, train and evaluate each split kind again."""
    instance = context.instance
    busy = instance.get_runs(dg.RunsFilter(job_name=process_release_job.name, statuses=IN_PROGRESS))
    if busy:
        return dg.SensorResult(skip_reason=f"{len(busy)} release run(s) in progress")
    keys = instance.get_dynamic_partitions(releases.name)
    failed = failed_releases(settings.paths().rejected)  # listed in `rejected`; they do not hold the others back
    without_features = sorted(set(keys) - instance.get_materialized_partitions(dg.AssetKey("features")) - failed)
    if not keys or without_features:
        return dg.SensorResult(skip_reason=f"releases without log-mels yet: {without_features[:5]}" if keys
                               else "no releases")  # fmt: skip
    data = max(_latest_storage_id(instance, "clean_tracks"), _latest_storage_id(instance, "features"))
    split = _latest_storage_id(instance, "splits")
    if data > split:
        return dg.SensorResult(run_requests=[dg.RunRequest(job_name=refresh_job.name, run_key=f"refresh@{data}",
                                                           tags={"reconet/trigger": "new data"})])  # fmt: skip
    if instance.get_runs(dg.RunsFilter(job_name=refresh_job.name, statuses=IN_PROGRESS)):
        return dg.SensorResult(skip_reason="splits are being refreshed")
    kinds = TrainParams.from_params(settings.params()).split_kinds
    stale = [k for k in kinds if _latest_storage_id(instance, "model", k) < split]
    runs = [dg.RunRequest(job_name=training_job.name, partition_key=k, run_key=f"train-{k}@{split}",
                          tags={"reconet/trigger": "new splits"}) for k in stale]  # fmt: skip
    return dg.SensorResult(run_requests=runs, skip_reason=None if runs else "every model is newer than the splits")


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
SENSORS = [new_release_sensor, retrain_sensor]
