"""K-fold cross-validation of the configured model on the ``kfold`` split (the RecoNet report's plan).

`splits` writes ``splits.folds`` folds by song (``ml/training/splits.py``): every song is on the
test side of exactly one fold, and in each fold the other songs of every artist are split again into
a validation side (``splits.val_fraction`` of them, in the order of their hash, a different slice in
every fold) and a training side. Here every fold is trained through
:func:`ml.training.model_run.train_and_log` and evaluated on its own test side through
:func:`ml.training.model_run.evaluate_and_log` (reports under ``reports/evaluation/kfold/fold<k>/``):

* model selection uses the fold's validation side only, exactly as the other kinds use theirs
  (the networks: early stopping and the learning-rate schedule on its loss; the embedding models:
  their validation score); a fold's test songs are never used to choose anything;
* MLflow holds one parent run, ``<model>-kfold-cv``, with each fold's run as its child (the
  ``mlflow.parentRunId`` tag that ``mlflow.start_run(nested=True)`` sets, and a ``fold`` tag). The
  parent logs, over the folds, the mean and the sample standard deviation (ddof 1) of the test
  metrics, ``cv_<metric>_mean`` and ``cv_<metric>_std``;
* ``reports/evaluation/kfold/cross_validation.json`` holds the folds' metrics and the summary,
  ``reports/metrics.json`` the summary under ``kfold`` (and each fold under ``kfold/fold<k>``);
* a kfold model is never registered: each fold's model has been trained on fewer songs than the
  song split's, and they are there to measure how much the scores vary, not to be served.

``<data>/models/kfold/cross_validation.json`` records the folds' runs and the parent run between
the `model` and `evaluation` assets; the same folds (same configuration and data: every fold's run
comes back as it was recorded) keep the same parent run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ml import config
from ml.tables import update_json, write_text

log = logging.getLogger(__name__)

KIND = "kfold"
# (level in an evaluation report's metrics, metric): what the folds are summarised by
SUMMARISED = (("segment", "accuracy"), ("segment", "macro_f1"), ("song_mean_probability", "accuracy"),
              ("song_mean_probability", "macro_f1"), ("song_majority", "accuracy"))  # fmt: skip


def folds_of(splits: pa.Table) -> list[int]:
    """The folds of the ``kfold`` split in a splits table."""
    rows = splits.filter(pc.equal(splits.column("kind"), KIND))
    return sorted(set(rows.column("fold").to_pylist()))


def record_path(paths: config.Paths) -> Path:
    return paths.data / "models" / KIND / "cross_validation.json"


def metric_name(level: str, name: str) -> str:
    """The MLflow name of a fold's test metric (as ``evaluate_and_log`` logs it)."""
    return f"test_{level}_{name}"


def train_folds(params: dict[str, Any], paths: config.Paths, splits: pa.Table, segments: pa.Table,
                features: pa.Table, tracking_uri: str, experiment: str, logger: logging.Logger | Any = None,
                ) -> dict[str, Any]:  # fmt: skip
    """Train the configured model on every fold of the ``kfold`` split (each one resumes, or comes
    back as recorded, as :func:`train_and_log` does) and group the folds' MLflow runs under one
    parent run; returns (and records) the parent run and each fold's outcome."""
    from mlflow.tracking import MlflowClient

    from ml.training.model_run import train_and_log
    from ml.training.tracking import mlflow_run

    logger = logger or log
    folds = folds_of(splits)
    if len(folds) < 2:
        raise ValueError(f"the {KIND} split has {len(folds)} fold(s); cross-validation needs 2 (splits.folds)")
    outcomes = []
    for fold in folds:
        logger.info(f"cross-validation: fold {fold + 1} of {len(folds)}")
        try:
            outcome = train_and_log(params, paths, KIND, splits, segments, features, tracking_uri, experiment,
                                    register=False, logger=logger, fold=fold)  # fmt: skip
        except ValueError as exc:
            raise ValueError(f"{KIND} fold {fold}: {exc}") from exc
        outcomes.append({**outcome, "fold": fold})
    key = hashlib.sha256(json.dumps([o["run_id"] for o in outcomes]).encode()).hexdigest()[:16]
    try:
        recorded = json.loads(record_path(paths).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        recorded = {}
    previous = recorded.get("parent_run_id") if recorded.get("key") == key else None
    model = outcomes[0]["model"]
    with mlflow_run(tracking_uri, experiment, f"{model}-{KIND}-cv", run_id=previous) as parent:
        parent_id = parent.info.run_id
        if previous is None:
            import mlflow

            mlflow.set_tags({"split_kind": KIND, "model": model, "cross_validation": "parent"})
            mlflow.log_params({"folds": len(outcomes), "fold_run_ids": json.dumps([o["run_id"] for o in outcomes])})
    client = MlflowClient(tracking_uri)
    for outcome in outcomes:
        run_id = outcome["run_id"]
        client.set_tag(run_id, "mlflow.parentRunId", parent_id)
        client.set_tag(run_id, "fold", str(outcome["fold"]))
        client.set_tag(run_id, "mlflow.runName", f"{model}-{KIND}-fold{outcome['fold']}")
    record = {"key": key, "parent_run_id": parent_id, "model": model, "folds": outcomes}
    write_text(json.dumps(record, indent=1), record_path(paths))
    logger.info(f"cross-validation: {len(outcomes)} folds trained, MLflow parent run {parent_id}")
    return record


def summarise(fold_metrics: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Metric -> mean and sample standard deviation (ddof 1) over the folds."""
    summary = {}
    for name in fold_metrics[0]:
        values = np.array([m[name] for m in fold_metrics], dtype=np.float64)
        summary[name] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    return summary


def evaluate_folds(params: dict[str, Any], paths: config.Paths, splits: pa.Table, segments: pa.Table,
                   features: pa.Table, tracking_uri: str, logger: logging.Logger | Any = None,
                   ) -> dict[str, Any]:  # fmt: skip
    """Evaluate every fold's model (recorded by :func:`train_folds`) on its fold's test side, log
    the mean and standard deviation of the test metrics to the parent run, and write them to
    ``reports/evaluation/kfold/cross_validation.json`` and ``reports/metrics.json``."""
    import mlflow

    from ml.training.model_run import evaluate_and_log

    logger = logger or log
    try:
        record = json.loads(record_path(paths).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no cross-validation trained yet ({record_path(paths)}): materialise `model` "
                                f"for the {KIND} partition first") from None  # fmt: skip
    trained = {o["fold"] for o in record["folds"]}
    if trained != set(folds_of(splits)):
        raise ValueError(f"the {KIND} models were trained on folds {sorted(trained)}, the splits now have "
                         f"{folds_of(splits)}: materialise `model` for the {KIND} partition again")  # fmt: skip
    folds = []
    for outcome in record["folds"]:
        try:
            report = evaluate_and_log(params, paths, KIND, splits, segments, features, tracking_uri, logger=logger,
                                      fold=outcome["fold"], trained=outcome)  # fmt: skip
        except ValueError as exc:
            raise ValueError(f"{KIND} fold {outcome['fold']}: {exc}") from exc
        m = report.metrics
        folds.append({"fold": outcome["fold"], "mlflow_run_id": outcome["run_id"],
                      "test_segments": m["segment"]["count"], "test_songs": m["song_mean_probability"]["count"],
                      "metrics": {metric_name(level, name): m[level][name] for level, name in SUMMARISED}})  # fmt: skip
    summary = summarise([f["metrics"] for f in folds])
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=record["parent_run_id"]):
        mlflow.log_metrics({f"cv_{name}_{stat}": value for name, stats in summary.items()
                            for stat, value in stats.items()})  # fmt: skip
    result = {"model": record["model"], "mlflow_parent_run_id": record["parent_run_id"], "folds": folds,
              "summary": summary, "standard_deviation": "sample (ddof 1) over the folds"}  # fmt: skip
    write_text(json.dumps(result, indent=1), paths.reports / "evaluation" / KIND / "cross_validation.json")
    flat = {f"{name}_{stat}": round(value, 4) for name, stats in summary.items() for stat, value in stats.items()}
    entry = {"model": record["model"], "mlflow_run_id": record["parent_run_id"], "folds": len(folds), **flat}
    update_json(paths.reports / "metrics.json", lambda all_metrics: {**all_metrics, KIND: entry})  # others' too
    song = summary[metric_name("song_mean_probability", "macro_f1")]
    logger.info(f"cross-validation over {len(folds)} folds: song macro-F1 {song['mean']:.3f} ± {song['std']:.3f}")
    return result
