"""Jobs: register the library's releases, process one release, rebuild the catalogue-wide assets."""

import dagster as dg

from assets.catalogue import clean_tracks, rejected, tracks
from assets.identification import inbox_identification, predictions
from assets.metadata_eda import metadata_eda
from assets.partitions import sync_release_partitions
from assets.resources import ReconetSettings
from assets.segments import features, segments
from assets.song_index import song_index
from assets.training import evaluation, model, splits
from assets.vocals import vocals
from ml.catalogue.rejected import clear_failure, record_failure
from pipeline.instance import WRITES_CLEAN_TRACKS


@dg.op
def register_releases(context: dg.OpExecutionContext, settings: ReconetSettings) -> None:
    """Add a `releases` partition for every album folder of the library; drop vanished ones."""
    added, removed = sync_release_partitions(context.instance, settings.paths(), settings.params())
    context.log.info(f"releases: {len(added)} added, {len(removed)} removed")
    for key in added:
        context.log.info(f"  + {key}")
    for key in removed:
        context.log.info(f"  - {key}")


FAILURE_TAG = "reconet/failure"  # on a release's failed run: which step failed, and why


def _release(context: dg.HookContext) -> str | None:
    run = context.instance.get_run_by_id(context.run_id)
    return run.tags.get("dagster/partition") if run else None


@dg.failure_hook(required_resource_keys={"settings"})
def record_release_failure(context: dg.HookContext) -> None:
    """A step of a release's run failed: list the release in `rejected` (reason `release_failed`)
    so the catalogue-wide assets, which run on the other releases, show it; the run's tag
    `reconet/failure` says why (the UI's run list and run page show it)."""
    if release := _release(context):
        error = context.op_exception
        message = (str(error).strip().splitlines() or [""])[-1] if error else "see the run's log"
        reason = f"{type(error).__name__ if error else 'error'}: {message}"
        record_failure(context.resources.settings.paths().rejected, context.op.name, release, reason)
        context.instance.add_run_tags(context.run_id, {FAILURE_TAG: f"{context.op.name}: {reason}"[:250]})


@dg.success_hook(required_resource_keys={"settings"})
def clear_release_failure(context: dg.HookContext) -> None:
    """The step succeeded for the release: forget a failure it had recorded."""
    if release := _release(context):
        clear_failure(context.resources.settings.paths().rejected, context.op.name, release)


# Every per-release job: a failed release is recorded, and the other releases go on.
RELEASE_HOOKS = {record_release_failure, clear_release_failure}


@dg.job(description="Register every release folder of the library as a partition.")
def register_releases_job() -> None:
    register_releases()


# Per-release work: run once per partition (the UI's partition picker, a backfill, or `reconet run`).
release_job = dg.define_asset_job(
    "release_job", selection=dg.AssetSelection.assets(tracks), description="Read one release (album folder).",
    hooks=RELEASE_HOOKS,
)  # fmt: skip

# Catalogue-wide cleaning, once every release is read (duplicates span releases).
catalogue_job = dg.define_asset_job(
    "catalogue_job", selection=dg.AssetSelection.assets(clean_tracks),
    description="Clean the whole catalogue: interludes, duets, compilations, duplicates.", tags=WRITES_CLEAN_TRACKS,
)  # fmt: skip

# Vocal isolation of one release's clean tracks.
vocals_job = dg.define_asset_job(
    "vocals_job", selection=dg.AssetSelection.assets(vocals), description="Isolate the vocals of one release.",
    hooks=RELEASE_HOOKS,
)  # fmt: skip

# Clips and their log-mels, for one release.
segments_job = dg.define_asset_job(
    "segments_job", selection=dg.AssetSelection.assets(segments, features),
    description="Cut one release's vocals into clips and cache their log-mels.", hooks=RELEASE_HOOKS,
)  # fmt: skip

# The song index's entries of one release (its mixes' excerpt embeddings), merged into the query view.
song_index_job = dg.define_asset_job(
    "song_index_job", selection=dg.AssetSelection.assets(song_index),
    description="Index one release's songs for song re-identification (reconet identify --song).",
    hooks=RELEASE_HOOKS,
)  # fmt: skip

# Everything left out, by every stage, and the catalogue's EDA.
report_job = dg.define_asset_job(
    "report_job", selection=dg.AssetSelection.assets(rejected, metadata_eda),
    description="Gather every rejection and explore the catalogue.",
)  # fmt: skip

# Splits of every segment (all releases).
splits_job = dg.define_asset_job(
    "splits_job", selection=dg.AssetSelection.assets(splits), description="Split the segments for training.",
)  # fmt: skip

# Train and evaluate the model of one split kind (a partition: song, album, segment, kfold).
training_job = dg.define_asset_job(
    "training_job", selection=dg.AssetSelection.assets(model, evaluation, predictions),
    description="Train a vocalist classifier on one split kind, evaluate it, record both in MLflow, identify "
    "every test song.",
)  # fmt: skip

# A recording dropped in the inbox (a partition per file), identified by the champion model.
inbox_job = dg.define_asset_job(
    "inbox_job", selection=dg.AssetSelection.assets(inbox_identification),
    description="Identify one recording of the inbox with the champion model; the result goes beside it.",
)  # fmt: skip

# The main job runs these in order; True marks a per-release job (run for each partition).
MAIN_JOB_PHASES: tuple[tuple[str, bool], ...] = (
    ("release_job", True), ("catalogue_job", False), ("vocals_job", True), ("segments_job", True),
    ("song_index_job", True), ("report_job", False), ("splits_job", False),
)  # fmt: skip

# What the new-release sensor runs for one release: read it, clean the catalogue again (duplicates
# span releases), then separate, cut and featurise that release only, and index its songs.
process_release_job = dg.define_asset_job(
    "process_release_job",
    selection=dg.AssetSelection.assets(tracks, clean_tracks, vocals, segments, features, song_index),
    description="Process one new or changed release: read, clean the catalogue, separate, segment, log-mels, "
    "song index.",
    tags=WRITES_CLEAN_TRACKS, hooks=RELEASE_HOOKS,
)  # fmt: skip

# Catalogue-wide outputs that follow new data: every rejection, the EDA, the splits.
refresh_job = dg.define_asset_job(
    "refresh_job", selection=dg.AssetSelection.assets(rejected, metadata_eda, splits),
    description="Gather rejections, explore the catalogue and split the segments again after new data.",
)  # fmt: skip
