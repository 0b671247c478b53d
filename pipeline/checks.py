"""Asset checks: the invariants a stage's output must hold before the next stage may use it.

Blocking checks stop the rest of their run when they fail (a duplicated id or a NaN in the log-mels
would poison the splits and the model); they show under each asset's "Checks" tab in the UI.
"""


from collections import Counter

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from assets.catalogue import clean_tracks
from assets.resources import MlflowTracking, ReconetSettings, table_path
from assets.segments import features, segments
from assets.training import evaluation, splits
from ml.catalogue.rejected import ledger_path
from ml.tables import read_table
from ml.training.splits import split_problems


def _duplicates(values: list[str]) -> list[str]:
    return sorted(v for v, n in Counter(values).items() if n > 1)


@dg.asset_check(asset=clean_tracks, blocking=True)
def unique_track_ids(clean_tracks: pa.Table) -> dg.AssetCheckResult:
    """No two kept tracks share a `track_id` (a content hash): one recording, one track."""
    dupes = _duplicates(clean_tracks.column("track_id").to_pylist())
    metadata = {"tracks": clean_tracks.num_rows, "duplicated_ids": dg.MetadataValue.json(dupes[:20])}
    return dg.AssetCheckResult(passed=not dupes, metadata=metadata)


def _partition_table(settings: ReconetSettings, asset: str, context: dg.AssetCheckExecutionContext) -> pa.Table:
    """The table of the run's partition of a per-release asset (checks see the run's partition)."""
    return read_table(table_path(settings.paths().tables, asset, context.partition_key))


@dg.asset_check(asset=segments, blocking=True)
def unique_segment_ids(context: dg.AssetCheckExecutionContext, settings: ReconetSettings) -> dg.AssetCheckResult:
    """No `segment_id` twice in this release, nor in any other release's segments."""
    segments = _partition_table(settings, "segments", context)
    ids = segments.column("segment_id").to_pylist()
    dupes = _duplicates(ids)
    clashes: set[str] = set()
    mine = set(ids)
    for path in sorted((settings.paths().tables / "segments").glob("*.parquet")):
        other = read_table(path)
        if other.num_rows and set(other.column("release").to_pylist()) != {context.partition_key}:
            clashes |= mine & set(other.column("segment_id").to_pylist())
    return dg.AssetCheckResult(
        passed=not dupes and not clashes,
        metadata={"segments": len(ids), "duplicated_ids": dg.MetadataValue.json(dupes[:20]),
                  "ids_also_in_other_releases": dg.MetadataValue.json(sorted(clashes)[:20])},
    )  # fmt: skip


@dg.asset_check(asset=segments, blocking=True)
def every_kept_track_accounted_for(context: dg.AssetCheckExecutionContext,
                                   settings: ReconetSettings) -> dg.AssetCheckResult:  # fmt: skip
    """Every clean track of this release has clips, or a `rejected` row saying why not (vocals or
    segments stage): no track vanishes silently between cleaning and training."""
    paths = settings.paths()
    segments = _partition_table(settings, "segments", context)
    release = context.partition_key
    kept = read_table(paths.tables / "clean_tracks.parquet")
    kept = kept.filter(pc.equal(kept.column("release"), release))
    explained = set(segments.column("track_id").to_pylist())
    for stage in ("vocals", "segments"):
        ledger = ledger_path(paths.rejected, stage, release)
        if ledger.exists():
            explained |= set(read_table(ledger).column("track_id").to_pylist())
    lost = [p for t, p in zip(kept.column("track_id").to_pylist(), kept.column("path").to_pylist(), strict=True)
            if t not in explained]  # fmt: skip
    return dg.AssetCheckResult(passed=not lost, metadata={"kept_tracks": kept.num_rows,
                                                          "unaccounted": dg.MetadataValue.json(lost[:20])})  # fmt: skip


@dg.asset_check(asset=features, blocking=True)
def finite_log_mels(context: dg.AssetCheckExecutionContext, settings: ReconetSettings) -> dg.AssetCheckResult:
    """Every cached log-mel is finite (no NaN, no ±inf after the float16 cast)."""
    features = _partition_table(settings, "features", context)
    data = settings.paths().data
    bad_rows = 0
    checked = 0
    for name in sorted(set(features.column("feature_file").to_pylist())):
        array = np.load(data / name, mmap_mode="r")
        rows = features.filter(pc.equal(features.column("feature_file"), name)).column("feature_row").to_numpy()
        if rows.size and rows.max() >= len(array):
            return dg.AssetCheckResult(passed=False, metadata={"problem": f"{name} has {len(array)} rows, the "
                                                               f"table points at row {rows.max()}"})  # fmt: skip
        for start in range(0, rows.size, 256):  # bounded memory on big releases
            block = np.asarray(array[rows[start : start + 256]], dtype=np.float32)
            bad_rows += int(np.count_nonzero(~np.isfinite(block).all(axis=(1, 2))))
            checked += len(block)
    return dg.AssetCheckResult(passed=bad_rows == 0, metadata={"log_mels": checked, "non_finite": bad_rows})


@dg.asset_check(asset=splits, blocking=True)
def splits_disjoint_and_complete(splits: pa.Table) -> dg.AssetCheckResult:
    """Train, validation and test never share a song (a clip for the leaky `segment` kind; a test
    album for the `album` kind), and every artist of a split has clips on each side."""
    problems = split_problems(splits)
    return dg.AssetCheckResult(passed=not problems, metadata={"rows": splits.num_rows,
                                                              "problems": dg.MetadataValue.json(problems)})  # fmt: skip


@dg.asset_check(asset=evaluation)
def champion_not_worse(context: dg.AssetCheckExecutionContext, settings: ReconetSettings,
                       mlflow_tracking: MlflowTracking) -> dg.AssetCheckResult:  # fmt: skip
    """The registry's `champion` alias points at the version the champion rule promoted last: a new
    model took it only if it scored at least as well as the champion on the same clips, its own
    validation songs (``evaluation`` decides and records both scores on the version)."""
    from ml.training.tracking import champion_report

    report = champion_report(mlflow_tracking.uri(settings.paths().root), mlflow_tracking.registered_model,
                             context.partition_key)  # fmt: skip
    if report is None:
        return dg.AssetCheckResult(passed=True, metadata={"note": f"the {context.partition_key} split does not "
                                                          "train the registered model"})  # fmt: skip
    return dg.AssetCheckResult(passed=report["consistent"], metadata=report)


ASSET_CHECKS = [unique_track_ids, unique_segment_ids, every_kept_track_accounted_for, finite_log_mels,
                splits_disjoint_and_complete, champion_not_worse]  # fmt: skip
