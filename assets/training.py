"""Training assets: `splits`, `model` (per split kind, MLflow) and `evaluation`."""

import json
from collections import Counter
from collections.abc import Iterator

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from assets.resources import SKIP_MISSING_PARTITIONS, MlflowTracking, ReconetSettings
from ml.training.splits import KINDS, SplitParams, processed_clips, split_segments, unfit_reason
from ml.training.training import TrainParams

split_kinds = dg.StaticPartitionsDefinition(list(KINDS))
# every release that has it: one whose run failed is listed in `rejected` and does not stop the others
ALL_RELEASES = dg.AssetIn(partition_mapping=dg.AllPartitionMapping(), metadata={SKIP_MISSING_PARTITIONS: True})


@dg.asset(group_name="training", io_manager_key="table_io_manager", kinds={"parquet"},
          ins={"segments": ALL_RELEASES, "clean_tracks": dg.AssetIn()})  # fmt: skip
def splits(context: dg.AssetExecutionContext, settings: ReconetSettings, segments: pa.Table,
           clean_tracks: pa.Table) -> pa.Table:  # fmt: skip
    """Song, album, segment (leaky, for comparison) and k-fold splits of every segment of a track
    the catalogue still keeps, stratified by artist and seeded. Artists with too few songs or
    albums for a kind are left out of it."""
    params = SplitParams.from_params(settings.params())
    kept = pc.is_in(segments.column("track_id"), clean_tracks.column("track_id"))
    dropped = segments.num_rows - pc.sum(kept).as_py() if segments.num_rows else 0
    if dropped:  # e.g. a better copy of a song arrived with a later release: the cleaning now keeps that one
        context.log.warning(f"{dropped} clips of tracks the cleaning no longer keeps are left out")
        segments = segments.filter(kept)
    table, excluded = split_segments(segments, params)
    for e in excluded:
        context.log.warning(f"{e.artist} left out of the {e.kind} split: {e.reason}")
    counts = Counter(zip(table.column("kind").to_pylist(), table.column("split").to_pylist(), strict=True))
    context.add_output_metadata(
        {
            "segments": segments.num_rows,
            "clips_of_tracks_no_longer_kept": dropped,
            "rows_by_kind_and_split": dg.MetadataValue.json({f"{k}/{s}": n for (k, s), n in sorted(counts.items())}),
            "excluded": dg.MetadataValue.json([e.__dict__ for e in excluded]),
            "seed": params.seed,
        }
    )
    return table


def skip_split_kind(context: dg.AssetExecutionContext, reason: str) -> None:
    """Nothing to train or evaluate on this split kind: say why in the log, and as an observation of
    the asset (its metadata in the UI); the step yields no materialisation, so what follows skips."""
    context.log.warning(f"the {context.partition_key} split is skipped: {reason}")
    context.log_event(dg.AssetObservation(asset_key=context.asset_key, partition=context.partition_key,
                                          metadata={"skipped": reason}))  # fmt: skip


def _processed(context: dg.AssetExecutionContext, splits: pa.Table, segments: pa.Table,
               features: pa.Table) -> tuple[pa.Table, pa.Table]:  # fmt: skip
    """The split rows and segments of the releases that are processed: a release still in flight
    (or whose features step failed) is left out with a warning, and the retrain sensor trains again
    once it is processed."""
    splits, segments, left_out = processed_clips(splits, segments, features)
    if left_out:
        context.log.warning(f"clips of {len(left_out)} release(s) without log-mels yet (being processed, or failed: "
                            f"see `rejected`) are left out: {left_out[:5]}")  # fmt: skip
    return splits, segments


class TrainConfig(dg.Config):
    """Launchpad overrides of params.yaml's `train` section (empty / 0: use params.yaml)."""

    model: str = Field(default="", description="crnn or reconet")
    epochs: int = Field(default=0, description="maximum epochs")


@dg.asset(partitions_def=split_kinds, group_name="training", kinds={"pytorch", "mlflow"}, pool="gpu",
          ins={"splits": dg.AssetIn(), "segments": ALL_RELEASES, "features": ALL_RELEASES},
          output_required=False)  # fmt: skip
def model(context: dg.AssetExecutionContext, config: TrainConfig, settings: ReconetSettings,
          mlflow_tracking: MlflowTracking, splits: pa.Table, segments: pa.Table, features: pa.Table,
          ) -> Iterator[dg.MaterializeResult]:  # fmt: skip
    """A vocalist classifier trained on one split kind (a partition), checkpointed every epoch
    (resumes after a kill) and recorded in MLflow; the primary kind's model (`train.split_kind`)
    becomes a new version of the registered model `reconet-vocalist`. A kind with fewer than two
    eligible artists is skipped, with the reason in the log and the asset's metadata. The `kfold`
    partition trains one model per fold, grouped under one MLflow parent run, none registered."""
    from ml.training.model_run import model_dir, train_and_log

    splits, segments = _processed(context, splits, segments, features)
    if reason := unfit_reason(splits, context.partition_key):
        return skip_split_kind(context, reason)
    params, paths = settings.params(), settings.paths()
    overrides = {k: v for k, v in (("model", config.model), ("epochs", config.epochs)) if v}
    if overrides:
        params = {**params, "train": {**params.get("train", {}), **overrides}}
    kind = context.partition_key
    if kind == "kfold":  # every fold, under one MLflow parent run, never registered
        from ml.training.cross_validation import train_folds

        record = train_folds(params, paths, splits, segments, features, mlflow_tracking.uri(paths.root),
                             mlflow_tracking.experiment, logger=context.log)  # fmt: skip
        folds = record["folds"]
        yield dg.MaterializeResult(metadata={
            "mlflow_parent_run_id": record["parent_run_id"], "model": record["model"], "folds": len(folds),
            "fold_runs": dg.MetadataValue.json({str(f["fold"]): f["run_id"] for f in folds}),
            "val_accuracy_by_fold": dg.MetadataValue.json({str(f["fold"]): f["val_accuracy"] for f in folds}),
            "train_seconds": round(sum(f["seconds"] for f in folds), 1),
        })  # fmt: skip
        return
    outcome = train_and_log(
        params, paths, kind, splits, segments, features, mlflow_tracking.uri(paths.root), mlflow_tracking.experiment,
        register=kind == TrainParams.from_params(params).split_kind, logger=context.log,
        registered_model=mlflow_tracking.registered_model,
    )  # fmt: skip
    yield dg.MaterializeResult(metadata={
        "mlflow_run_id": outcome["run_id"], "registered_version": outcome.get("version") or "",
        "model": outcome["model"], "best_epoch": outcome["best_epoch"], "epochs_run": outcome["epochs_run"],
        "resumed_from_epoch": outcome["resumed_from_epoch"], "val_accuracy": outcome["val_accuracy"],
        "train_seconds": round(outcome["seconds"], 1), "data_version": outcome["data_version"],
        "classes": dg.MetadataValue.json(outcome["classes"]),
        "checkpoint": dg.MetadataValue.path(str(model_dir(paths, outcome))),
    })  # fmt: skip


@dg.asset(partitions_def=split_kinds, group_name="training", kinds={"pytorch", "mlflow"}, deps=[model],
          ins={"splits": dg.AssetIn(), "segments": ALL_RELEASES, "features": ALL_RELEASES},
          output_required=False)  # fmt: skip
def evaluation(context: dg.AssetExecutionContext, settings: ReconetSettings, mlflow_tracking: MlflowTracking,
               splits: pa.Table, segments: pa.Table, features: pa.Table) -> Iterator[dg.MaterializeResult]:  # fmt: skip
    """The split kind's model on its test set, at segment and song level: accuracy, macro and
    weighted P/R/F1, one-vs-all table, confusion matrix, top-K curve, t-SNE, errors by genre.
    Written to `reports/evaluation/<kind>/` and `reports/metrics.json`, logged to the MLflow run.
    The `kfold` partition evaluates every fold's model on that fold's test songs and reports the
    mean ± standard deviation over the folds (`reports/evaluation/kfold/cross_validation.json`)."""
    import base64

    from ml.training.model_run import evaluate_and_log

    splits, segments = _processed(context, splits, segments, features)
    if reason := unfit_reason(splits, context.partition_key):
        return skip_split_kind(context, reason)
    params, paths = settings.params(), settings.paths()
    kind = context.partition_key
    if kind == "kfold":  # every fold on its own test songs; the mean ± standard deviation over the folds
        from ml.training.cross_validation import evaluate_folds

        result = evaluate_folds(params, paths, splits, segments, features, mlflow_tracking.uri(paths.root),
                                logger=context.log)  # fmt: skip
        summary = result["summary"]
        yield dg.MaterializeResult(metadata={
            **{f"{name}_{stat}": value for name, stats in summary.items() for stat, value in stats.items()},
            "mlflow_parent_run_id": result["mlflow_parent_run_id"], "folds": len(result["folds"]),
            "by_fold": dg.MetadataValue.json(result["folds"]),
            "cross_validation": dg.MetadataValue.md("| metric | mean ± std |\n|---|---|\n" + "\n".join(
                f"| {name} | {s['mean']:.3f} ± {s['std']:.3f} |" for name, s in summary.items())),
        })  # fmt: skip
        return
    report = evaluate_and_log(params, paths, kind, splits, segments, features, mlflow_tracking.uri(paths.root),
                              logger=context.log, registered_model=mlflow_tracking.registered_model)  # fmt: skip
    m = report.metrics
    metadata: dict = {
        "segment_accuracy": m["segment"]["accuracy"], "segment_macro_f1": m["segment"]["macro_f1"],
        "song_accuracy": m["song_mean_probability"]["accuracy"],
        "song_macro_f1": m["song_mean_probability"]["macro_f1"],
        "song_majority_accuracy": m["song_majority"]["accuracy"], "test_segments": m["segment"]["count"],
        "test_songs": m["song_mean_probability"]["count"], "champion": dg.MetadataValue.json(m.get("champion") or {}),
        "metrics": dg.MetadataValue.json({k: v for k, v in m.items() if k not in ("one_vs_all", "confusion")}),
    }  # fmt: skip
    for name in ("confusion", "top_k", "tsne"):
        if name in report.files:
            png = base64.b64encode(report.files[name].read_bytes()).decode("ascii")
            metadata[f"plot_{name}"] = dg.MetadataValue.md(f"![{name}](data:image/png;base64,{png})")
    metadata["per_artist"] = dg.MetadataValue.md(
        "| artist | support | accuracy | precision | recall | F1 |\n|---|---|---|---|---|---|\n" + "\n".join(
            f"| {r['artist']} | {r['support']} | {r['accuracy']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} "
            f"| {r['f1']:.3f} |" for r in m["one_vs_all"])
    )  # fmt: skip
    context.log.info(json.dumps({k: metadata[k] for k in ("segment_accuracy", "song_accuracy", "song_macro_f1")}))
    yield dg.MaterializeResult(metadata=metadata)
