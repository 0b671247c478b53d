"""Per-release assets: `segments` (10 s vocal clips around silence) and `features` (cached log-mels)."""

import dagster as dg
import numpy as np
import pyarrow as pa

from assets.partitions import releases
from assets.resources import ReconetSettings
from ml.catalogue.rejected import record_rejected
from ml.clips.features import FeatureCache, FeatureParams, cache_release_features, entry_name
from ml.clips.segmentation import PackedRows, SegmentParams, segment_release
from ml.device import device_from_params
from ml.tables import read_table, scope_filename


@dg.asset(partitions_def=releases, group_name="segments", io_manager_key="table_io_manager",
          kinds={"numpy", "parquet"})  # fmt: skip
def segments(context: dg.AssetExecutionContext, settings: ReconetSettings, vocals: pa.Table) -> pa.Table:
    """Fixed-length vocal clips of one release, cut around silence: a uuid-tracked table, and the
    clips themselves packed into int16 arrays under `data/segments/` (vocals and accompaniment).
    A track without a single clip goes to `rejected` (stage `segments`)."""
    params, paths = settings.params(), settings.paths()
    segment_params = SegmentParams.from_params(params)
    release = context.partition_key
    name = scope_filename(release, suffix="")
    current = paths.tables / "segments" / scope_filename(release)  # the table this run replaces
    in_use = set()
    if current.exists():
        old = read_table(current)
        in_use = set(old.column("audio_file").to_pylist()) | set(old.column("accompaniment_file").to_pylist())
    result = segment_release(vocals, paths.vocals, paths.data, name, segment_params, context.log, in_use)
    record_rejected(paths.rejected, "segments", release, result.rejected)
    for row in result.rejected.to_pylist():
        context.log.warning(f"rejected {row['path']}: {row['reason']}: {row['detail']}")
    table = result.segments
    padded = int(np.count_nonzero(np.asarray(table.column("padding_s").to_pylist()) > 0)) if table.num_rows else 0
    context.add_output_metadata(
        {
            "segments": table.num_rows,
            "tracks_in": vocals.num_rows,
            "tracks_without_segments": result.rejected.num_rows,
            "padded_clips": padded,
            "clip_s": segment_params.clip_s,
            "params_hash": segment_params.digest(),
            "stems": dg.MetadataValue.json(sorted(set(table.column("stems").to_pylist()))),
            "packed_files": dg.MetadataValue.json([p.name for p in result.files]),
        }
    )
    return table


@dg.asset(partitions_def=releases, group_name="segments", io_manager_key="table_io_manager",
          kinds={"pytorch", "numpy"}, pool="gpu")  # fmt: skip
def features(context: dg.AssetExecutionContext, settings: ReconetSettings, segments: pa.Table) -> pa.Table:
    """Log-mel spectrograms of every segment of one release (float16, memory-mappable), computed in
    batches on the best device and cached by (segment ids, the stems they were cut from, feature
    parameters): unchanged inputs recompute nothing, stems of another backend or checkpoint do."""
    params, paths = settings.params(), settings.paths()
    feature_params = FeatureParams.from_params(params)
    segment_rate = SegmentParams.from_params(params).sample_rate
    if feature_params.sample_rate != segment_rate:
        raise dg.Failure(f"features.sample_rate ({feature_params.sample_rate}) must equal segments.sample_rate "
                         f"({segment_rate}): the clips are stored at the latter")  # fmt: skip
    if "stems" not in segments.column_names:
        raise dg.Failure(f"the segments table of {context.partition_key} has no `stems` column (what made the "
                         "stems; written by an older reconet): materialise `segments` again")  # fmt: skip
    cache = FeatureCache(paths.data / "features", feature_params)
    ids = segments.column("segment_id").to_pylist()
    name = entry_name(scope_filename(context.partition_key, suffix=""), ids, segments.column("stems").to_pylist())
    current = paths.tables / "features" / scope_filename(context.partition_key)  # the table this run replaces
    in_use = (
        {paths.data / f for f in set(read_table(current).column("feature_file").to_pylist())}
        if current.exists()
        else set()
    )
    device = device_from_params(params)
    clips = PackedRows.from_table(segments, paths.data)
    computed = cache_release_features(
        cache, name, ids, clips, device,
        on_batch=lambda done, total: context.log.info(f"log-mels: {done}/{total} clips on {device}"),
        in_use=in_use,
    )  # fmt: skip
    array, _ = cache.paths(name)
    context.log.info(f"{len(ids)} log-mels {'computed' if computed else 'already cached'} in {array}")
    shape = cache.load(name).shape if ids else (0, feature_params.n_mels, 0)
    context.add_output_metadata(
        {"clips": len(ids), "computed": computed, "shape": str(tuple(shape)), "device": str(device),
         "params_hash": feature_params.digest(), "file": dg.MetadataValue.path(str(array))}
    )  # fmt: skip
    relative = array.relative_to(paths.data).as_posix()
    return pa.table(
        {
            "segment_id": pa.array(ids, pa.string()),
            "feature_file": pa.array([relative] * len(ids), pa.string()),
            "feature_row": pa.array(range(len(ids)), pa.int32()),
            "params_hash": pa.array([feature_params.digest()] * len(ids), pa.string()),
        }
    )
