"""reconet's Dagster definitions: gathers assets, resources and jobs; defines nothing itself."""

from __future__ import annotations

import dagster as dg

from assets.catalogue import clean_tracks, rejected, tracks
from assets.metadata_eda import metadata_eda
from assets.segments import features, segments
from assets.training import evaluation, model, splits
from assets.vocals import vocals
from pipeline.jobs import (
    catalogue_job,
    register_releases_job,
    release_job,
    report_job,
    segments_job,
    splits_job,
    training_job,
    vocals_job,
)
from pipeline.resources import MlflowTracking, ParquetTableIOManager, ReconetSettings

defs = dg.Definitions(
    assets=[tracks, clean_tracks, rejected, metadata_eda, vocals, segments, features, splits, model, evaluation],
    jobs=[
        register_releases_job,
        release_job,
        catalogue_job,
        vocals_job,
        segments_job,
        report_job,
        splits_job,
        training_job,
    ],
    resources={
        "settings": ReconetSettings(),
        "table_io_manager": ParquetTableIOManager(),
        "mlflow_tracking": MlflowTracking(),
    },
)
