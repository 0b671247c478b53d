"""Jobs: register the library's releases, process one release, rebuild the catalogue-wide assets."""

import dagster as dg

from assets.catalogue import clean_tracks, rejected, tracks
from assets.metadata_eda import metadata_eda
from pipeline.partitions import sync_release_partitions
from pipeline.resources import ReconetSettings


@dg.op
def register_releases(context: dg.OpExecutionContext, settings: ReconetSettings) -> None:
    """Add a `releases` partition for every album folder of the library; drop vanished ones."""
    added, removed = sync_release_partitions(context.instance, settings.paths(), settings.params())
    context.log.info(f"releases: {len(added)} added, {len(removed)} removed")
    for key in added:
        context.log.info(f"  + {key}")
    for key in removed:
        context.log.info(f"  - {key}")


@dg.job(description="Register every release folder of the library as a partition.")
def register_releases_job() -> None:
    register_releases()


# Per-release work: run once per partition (the UI's partition picker, a backfill, or `reconet run`).
release_job = dg.define_asset_job(
    "release_job", selection=dg.AssetSelection.assets(tracks), description="Process one release (album folder).",
)  # fmt: skip

# Catalogue-wide work, after the releases: cleaning, the rejected ledger, the EDA.
catalogue_job = dg.define_asset_job(
    "catalogue_job", selection=dg.AssetSelection.assets(clean_tracks, rejected, metadata_eda),
    description="Clean the whole catalogue, gather rejections and explore it.",
)  # fmt: skip

# The main job runs these in order: releases first (each partition), then the catalogue.
MAIN_JOB_PHASES: tuple[tuple[str, bool], ...] = (("release_job", True), ("catalogue_job", False))
