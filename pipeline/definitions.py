"""reconet's Dagster definitions: gathers assets, checks, jobs, sensors, schedules and resources."""

from __future__ import annotations

import dagster as dg

from assets.catalogue import clean_tracks, rejected, tracks
from assets.identification import inbox_identification, predictions
from assets.metadata_eda import metadata_eda
from assets.resources import MlflowTracking, ParquetTableIOManager, ReconetSettings
from assets.segments import features, segments
from assets.song_index import song_index
from assets.training import evaluation, model, splits
from assets.vocals import vocals
from ml import config
from ml.catalogue.orchestration import OrchestrationParams
from pipeline.checks import ASSET_CHECKS
from pipeline.executors import executor_for
from pipeline.jobs import (
    catalogue_job,
    inbox_job,
    process_release_job,
    refresh_job,
    register_releases_job,
    release_job,
    report_job,
    segments_job,
    song_index_job,
    splits_job,
    training_job,
    vocals_job,
)
from pipeline.sensors import SCHEDULES, SENSORS
from pipeline.staleness import with_step_versions

_params = config.load_params()

defs = dg.Definitions(
    assets=with_step_versions(
        [tracks, clean_tracks, rejected, metadata_eda, vocals, segments, features, splits, model, evaluation,
         predictions, inbox_identification, song_index], _params,
    ),
    asset_checks=ASSET_CHECKS,
    jobs=[
        register_releases_job,
        release_job,
        catalogue_job,
        vocals_job,
        segments_job,
        song_index_job,
        report_job,
        splits_job,
        training_job,
        process_release_job,
        refresh_job,
        inbox_job,
    ],
    sensors=SENSORS,
    schedules=SCHEDULES,
    executor=executor_for(OrchestrationParams.from_params(_params)),
    resources={
        "settings": ReconetSettings(),
        "table_io_manager": ParquetTableIOManager(),
        "mlflow_tracking": MlflowTracking(),
    },
)
