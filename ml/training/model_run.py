"""One training run and its evaluation, end to end: data, training, MLflow, files on disk.

The `model` and `evaluation` assets call these two functions; everything they need is passed in.
Per split kind, ``<data>/models/<kind>/`` holds one folder per (configuration, data version) with
the checkpoint, the best weights (``model.safetensors``) and the MLflow run id, and
``current.json`` naming the folder of the latest trained model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ml import config
from ml.clips.features import FeatureParams
from ml.clips.loader import SegmentDataset
from ml.device import device_from_params, precision_from_params, precision_name
from ml.identification.backend import is_embedding_model
from ml.identification.identify import preprocessing
from ml.models import build_model
from ml.tables import atomic_path, update_json, write_text
from ml.training.evaluation import Predictions, Report, evaluate, predict
from ml.training.training import TrainParams, dataset_sources, train, training_precision

log = logging.getLogger(__name__)

LOGGED_SECTIONS = ("train", "models", "features", "segments", "splits", "augment", "separation")


def with_features(segments: pa.Table, features: pa.Table) -> pa.Table:
    """The segments joined with where their cached log-mels are (same row order as ``segments``)."""
    joined = segments.join(features.select(["segment_id", "feature_file", "feature_row"]), "segment_id",
                           join_type="inner")  # fmt: skip
    if joined.num_rows != segments.num_rows:
        raise ValueError(f"{segments.num_rows - joined.num_rows} segments have no cached features: "
                         "materialise `features` for every release first")  # fmt: skip
    return joined.sort_by("segment_id")


def split_rows_of(splits: pa.Table, segments: pa.Table, kind: str, which: str, fold: int = 0) -> pa.Table:
    """The segments in side ``which`` (train, val, test) of fold ``fold`` of split ``kind`` (only
    ``kfold`` has other folds than 0: ``ml/training/cross_validation.py``)."""
    mask = pc.and_(pc.and_(pc.equal(splits.column("kind"), kind), pc.equal(splits.column("fold"), fold)),
                   pc.equal(splits.column("split"), which))  # fmt: skip
    ids = splits.filter(mask).column("segment_id")
    return segments.filter(pc.is_in(segments.column("segment_id"), ids))


def data_version(rows: pa.Table, features: FeatureParams) -> str:
    """The clips, their labels (a corrected artist tag keeps the segment ids but changes the data)
    and, where the segments record it, the stems they were cut from (``stems``)."""
    columns = [c for c in ("segment_id", "artist", "stems") if c in rows.column_names]
    labelled = sorted(zip(*(rows.column(c).to_pylist() for c in columns), strict=True))
    return hashlib.sha256(json.dumps([labelled, features.digest()]).encode()).hexdigest()[:16]


def run_identity(params: dict[str, Any], paths: config.Paths, settings: TrainParams) -> dict[str, Any]:
    """What shapes a model besides its ``train``/``models`` settings and its data: the separation
    that made its clips (backend, checkpoint) and, when it trains on augmented clips, the ``augment``
    section. Part of the run's digest, so a change there trains a new run."""
    from ml.clips.augment import AugmentParams
    from ml.separation.separation import SeparationParams, checkpoint_sha256

    augmented = settings.augment and not is_embedding_model(settings.model)  # an embedding model never augments
    augment = asdict(AugmentParams.from_params(params.get("augment", {}))) if augmented else None
    separation = {"backend": SeparationParams.from_params(params).backend,
                  "checkpoint_sha256": checkpoint_sha256(paths.spleeter_checkpoint)}  # fmt: skip
    precision = precision_name(training_precision(params, device_from_params(params)))  # float32 runs keep their digest
    return {"separation": separation, "augment": augment, **({"precision": precision} if precision != "fp32" else {})}


def augmenters_for(params: dict[str, Any], sample_rate: int):
    """The audio and spectrogram augmenters of params.yaml's ``augment`` section."""
    from ml.clips.augment import AudioAugmenter, AugmentParams, SpectrogramAugmenter

    settings = AugmentParams.from_params(params.get("augment", {}))
    return AudioAugmenter(settings, sample_rate), SpectrogramAugmenter(settings)


def train_and_log(params: dict[str, Any], paths: config.Paths, kind: str, split_rows: pa.Table, segments: pa.Table,
                  features: pa.Table, tracking_uri: str, experiment: str, register: bool,
                  logger: logging.Logger | Any = None, registered_model: str = "reconet-vocalist", fold: int = 0,
                  ) -> dict[str, Any]:  # fmt: skip
    """Train the configured model on fold ``fold`` of split ``kind`` (or resume it), log it to MLflow, register it
    as a new version of ``registered_model`` when ``register``; returns what the asset reports.
    A run that already finished with the same configuration and data is not trained, logged or
    registered again: its recorded outcome is returned."""
    import mlflow

    from ml.training.tracking import mlflow_run

    logger = logger or log
    settings = TrainParams.from_params(params)
    feature_params = FeatureParams.from_params(params)
    table = with_features(segments, features)
    train_rows = split_rows_of(split_rows, table, kind, "train", fold)
    val_rows = split_rows_of(split_rows, table, kind, "val", fold)
    classes = sorted(set(train_rows.column("artist").to_pylist()), key=str)
    val_rows = val_rows.filter(pc.is_in(val_rows.column("artist"), pa.array(classes, pa.string())))
    if len(classes) < 2 or val_rows.num_rows == 0:
        raise ValueError(f"the {kind} split needs at least 2 artists and a validation set "
                         f"(has {len(classes)} artists, {val_rows.num_rows} validation clips; the `splits` "
                         "asset's metadata lists the artists left out and why)")  # fmt: skip
    version = data_version(pa.concat_tables([train_rows, val_rows]), feature_params)
    digest = settings.digest({"data": version, "kind": kind, "fold": fold, "features": feature_params.digest(),
                              **run_identity(params, paths, settings)})[:12]  # fmt: skip
    run_dir = paths.data / "models" / kind / digest
    run_dir.mkdir(parents=True, exist_ok=True)
    device = device_from_params(params)
    if is_embedding_model(settings.model):
        return _train_embedding_model(params, paths, kind, settings, train_rows, val_rows, classes, version, run_dir,
                                      device, tracking_uri, experiment, registered_model if register else None,
                                      logger)  # fmt: skip
    train_source, eval_source = dataset_sources(settings.model, settings.augment)
    train_set = SegmentDataset(train_rows, paths.data, classes, source=train_source)
    val_set = SegmentDataset(val_rows, paths.data, classes, source=eval_source)
    augmenters = augmenters_for(params, feature_params.sample_rate) if settings.augment else (None, None)
    run_id_file = run_dir / "mlflow_run_id"
    previous_run = run_id_file.read_text().strip() if run_id_file.exists() else None
    logger.info(f"training {settings.model} on the {kind} split: {len(train_set)} clips, "
                f"{len(classes)} artists, {val_rows.num_rows} validation clips, on {device}")  # fmt: skip
    started = time.perf_counter()
    with mlflow_run(tracking_uri, experiment, f"{settings.model}-{kind}", run_id=previous_run) as run:
        write_text(run.info.run_id, run_id_file)
        if previous_run is None:
            _start_logging(params, paths, kind, settings, classes, len(train_set), len(val_set), version, device)

        def on_epoch(m) -> None:
            names = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate")
            mlflow.log_metrics({n: getattr(m, n) for n in names}, step=m.epoch)

        result = train(train_set, val_set, settings, feature_params, device, run_dir, augmenters, on_epoch, logger,
                       precision=training_precision(params, device))  # fmt: skip
        done = run_dir / "model.json"
        if result.resumed_from_epoch == len(result.history) and done.exists():  # finished before: nothing new
            info = json.loads(done.read_text(encoding="utf-8"))
            logger.info(f"the {kind} model was already trained with this configuration and data ({run_dir})")
        else:
            rule = network_open_set(result.model, SegmentDataset(train_rows, paths.data, classes, source=eval_source),
                                    val_set, params, device, run_dir)  # fmt: skip
            info = _record(result, run_dir, run.info.run_id, settings, preprocessing(params, paths), classes, kind,
                           version, tracking_uri, registered_model if register else None, logger, rule)  # fmt: skip
    write_text(json.dumps(info, indent=1), paths.data / "models" / kind / "current.json")
    best = next((h for h in result.history if h.epoch == result.best_epoch), result.history[-1])
    return {**info, "epochs_run": len(result.history), "resumed_from_epoch": result.resumed_from_epoch,
            "val_accuracy": best.val_accuracy, "seconds": time.perf_counter() - started}  # fmt: skip


def _start_logging(params: dict[str, Any], paths: config.Paths, kind: str, settings: TrainParams, classes: list[str],
                   train_clips: int, val_clips: int, version: str, device) -> None:  # fmt: skip
    """What every run logs once, at its start: the shaping params.yaml sections, the data, the code."""
    import mlflow

    from ml.training.tracking import flatten, git_commit

    mlflow.log_params(flatten({s: params.get(s, {}) for s in LOGGED_SECTIONS}))
    mlflow.log_params({"split_kind": kind, "classes": json.dumps(classes), "train_clips": train_clips,
                       "val_clips": val_clips, "device": str(device)})  # fmt: skip
    mlflow.set_tags({"data_version": version, "git_commit": git_commit(paths.root), "split_kind": kind,
                     "model": settings.model})  # fmt: skip


def _train_embedding_model(params: dict[str, Any], paths: config.Paths, kind: str, settings: TrainParams,
                           train_rows: pa.Table, val_rows: pa.Table, classes: list[str], version: str, run_dir: Path,
                           device, tracking_uri: str, experiment: str, registered_model: str | None,
                           logger) -> dict[str, Any]:  # fmt: skip
    """An embedding model's run (``ml/training/embedding_run.py``): fitted in one go, so a run
    that finished is returned as recorded, and one killed before ``model.json`` is fitted again."""
    import mlflow

    from ml.identification.bundle import log_bundle
    from ml.training import embedding_run
    from ml.training.tracking import mlflow_run, register

    started = time.perf_counter()
    done = run_dir / "model.json"
    if done.exists():
        info = json.loads(done.read_text(encoding="utf-8"))
        logger.info(f"the {kind} model was already trained with this configuration and data ({run_dir})")
    else:
        run_id_file = run_dir / "mlflow_run_id"
        previous_run = run_id_file.read_text().strip() if run_id_file.exists() else None
        logger.info(f"fitting {settings.model} on the {kind} split: {train_rows.num_rows} clips, {len(classes)} "
                    f"artists, {val_rows.num_rows} validation clips, on {device}")  # fmt: skip
        with mlflow_run(tracking_uri, experiment, f"{settings.model}-{kind}", run_id=previous_run) as run:
            write_text(run.info.run_id, run_id_file)
            if previous_run is None:
                _start_logging(params, paths, kind, settings, classes, train_rows.num_rows, val_rows.num_rows,
                               version, device)  # fmt: skip
            info = embedding_run.fit_and_record(params, paths, kind, settings.model, settings.model_options,
                                                train_rows, val_rows, classes, run_dir, run.info.run_id, version,
                                                device, logger)  # fmt: skip
            logged = log_bundle(run_dir, info)
            if registered_model:
                info["version"] = register(tracking_uri, run.info.run_id, logged.model_uri, registered_model)
                mlflow.set_tag("registered_version", info["version"])
                logger.info(f"registered {registered_model} version {info['version']}")
            embedding_run.write_model_json(info, run_dir)
            mlflow.log_artifact(str(done), "weights")
    write_text(json.dumps(info, indent=1), paths.data / "models" / kind / "current.json")
    return {**info, "epochs_run": 0, "resumed_from_epoch": 0, "val_accuracy": info["val_accuracy"],
            "seconds": time.perf_counter() - started}  # fmt: skip


def network_open_set(model: torch.nn.Module, train_set: SegmentDataset, val_set: SegmentDataset,
                     params: dict[str, Any], device, run_dir: Path) -> dict[str, Any]:  # fmt: skip
    """A network's open-set rule, made as an embedding model's (``embedding_run.fit_and_record``):
    its penultimate-layer embeddings of the training and validation clips, standardised by the
    training clips' statistics; each singer's reference (saved with that standardisation as
    ``references.safetensors``), and the threshold calibrated on the validation songs with
    ``open_set.holdout_artists`` singers held out of the references. Without held-out singers (too
    few singers) there is no threshold: the closest reference is the answer."""
    from ml.clips.features import LogMel
    from ml.identification import open_set
    from ml.training.embedding_run import save_references

    log_mel = LogMel(FeatureParams.from_params(params)).to(device)
    precision = precision_from_params(params, device)
    model = model.to(device)
    train, val = (predict(model, data, device, log_mel=log_mel, precision=precision) for data in (train_set, val_set))
    names = lambda p: [p.classes[i] for i in p.labels]  # noqa: E731
    normaliser = open_set.Normaliser.fit(train.embeddings)
    rule, refs = open_set.calibrated_rule(train.classes, train.embeddings, names(train), val.embeddings, names(val),
                                          val.track_ids, params, normaliser)  # fmt: skip
    save_references(refs, run_dir / "references.safetensors", normaliser)
    return rule


def _record(result, run_dir: Path, run_id: str, settings: TrainParams, prep: dict[str, Any], classes: list[str],
            kind: str, version: str, tracking_uri: str, registered_model: str | None, logger,
            open_set_rule: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Save a finished run's weights and log them, with the model's pyfunc bundle
    (``ml/identification/bundle.py``; ``open_set_rule``: what :func:`network_open_set` made), to its
    (active) MLflow run; register it when ``registered_model`` is given (once per run: a run
    recorded again after a crash before its marker keeps its version). ``model.json`` is written
    last: it marks the run as finished."""
    import mlflow
    from safetensors.torch import save_file

    from ml.identification.bundle import log_bundle
    from ml.training.tracking import register

    weights = run_dir / "model.safetensors"
    with atomic_path(weights) as tmp:  # a reader of the previous weights never sees half of the new ones
        save_file({k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}, str(tmp))
    info = {"model": settings.model, "model_options": settings.model_options, "classes": classes,
            "n_mels": prep["features"]["n_mels"], "preprocessing": prep, "kind": kind, "run_id": run_id,
            "data_version": version, "best_epoch": result.best_epoch, "version": None,
            "open_set": open_set_rule or {"threshold": None},
            "dir": run_dir.relative_to(run_dir.parents[2]).as_posix()}  # fmt: skip
    if open_set_rule and open_set_rule["threshold"] is not None:
        mlflow.log_metric("open_set_threshold", open_set_rule["threshold"])
        mlflow.log_metric("val_open_set_eer", open_set_rule["val_eer"])
    # ("dir" is relative to the data folder: a moved or DVC-pulled project still finds it)
    mlflow.log_artifact(str(weights), "weights")
    mlflow.log_metric("best_epoch", result.best_epoch)
    logged = log_bundle(run_dir, info)
    if registered_model:
        info["version"] = register(tracking_uri, run_id, logged.model_uri, registered_model)
        mlflow.set_tag("registered_version", info["version"])
        logger.info(f"registered {registered_model} version {info['version']}")
    write_text(json.dumps(info, indent=1), run_dir / "model.json")
    mlflow.log_artifact(str(run_dir / "model.json"), "weights")
    return info


def model_dir(paths: config.Paths, info: dict[str, Any]) -> Path:
    """A trained model's folder: recorded relative to the data folder (so a project that moved, or
    was pulled with DVC elsewhere, still finds it); absolute in older records."""
    recorded = Path(info["dir"])
    return recorded if recorded.is_absolute() else paths.data / recorded


def load_trained(paths: config.Paths, kind: str, info: dict[str, Any] | None = None,
                 ) -> tuple[torch.nn.Module | None, dict[str, Any]]:  # fmt: skip
    """The model trained as ``info`` records (default: the latest one trained on split ``kind``), from
    its safetensors weights (no pickle); an embedding model has no network of its own (None: its
    back-end is in its folder)."""
    from safetensors.torch import load_file

    if info is None:
        current = paths.data / "models" / kind / "current.json"
        if not current.exists():
            raise FileNotFoundError(f"no model trained on the {kind} split yet ({current}): materialise `model` first")
        info = json.loads(current.read_text(encoding="utf-8"))
    if is_embedding_model(info["model"]):
        return None, info
    model = build_model(info["model"], len(info["classes"]), info["n_mels"], info["model_options"])
    model.load_state_dict(load_file(str(model_dir(paths, info) / "model.safetensors")))
    return model.eval(), info


def predictions_of(model: torch.nn.Module | None, info: dict[str, Any], rows: pa.Table, params: dict[str, Any],
                   paths: config.Paths, device: torch.device, logger=None) -> Predictions:  # fmt: skip
    """Probabilities and embeddings of the clips in ``rows`` by the trained model ``info``."""
    from ml.clips.features import LogMel

    if model is None:  # an embedding model
        from ml.training.embedding_run import predict_rows

        probabilities, embeddings = predict_rows(info, model_dir(paths, info), rows, paths.data, device, logger,
                                                 precision_from_params(params, device))  # fmt: skip
        genres = rows.column("over_genre").to_pylist() if "over_genre" in rows.column_names else [None] * len(rows)
        index = {c: i for i, c in enumerate(info["classes"])}
        return Predictions(probabilities, embeddings, np.array([index[a] for a in rows.column("artist").to_pylist()]),
                           rows.column("track_id").to_pylist(), genres, list(info["classes"]))  # fmt: skip
    _, source = dataset_sources(info["model"], augment=False)
    dataset = SegmentDataset(rows, paths.data, info["classes"], source=source)
    return predict(model, dataset, device, log_mel=LogMel(FeatureParams.from_params(params)).to(device),
                   precision=precision_from_params(params, device))  # fmt: skip


def open_set_figures(train: Predictions, test: Predictions, params: dict[str, Any], embedding_model: bool,
                     ) -> dict[str, Any] | None:  # fmt: skip
    """EER and identification rate at ``open_set.far`` with ``open_set.holdout_artists`` artists
    held out of the references (``ml/identification/open_set.py``); None when too few artists.
    An embedding model's vectors are in its back-end's standardised space already."""
    from ml.identification import open_set

    settings = open_set.OpenSetParams.from_params(params)
    held_out = open_set.held_out_artists(train.classes, settings.holdout_artists, settings.seed)
    if not held_out or not len(test.labels):
        return None
    names = lambda p: [p.classes[i] for i in p.labels]  # noqa: E731
    identity = open_set.Normaliser.unit_only() if embedding_model else None
    figures = open_set.open_set_trial(train.embeddings, names(train), test.embeddings, names(test), test.track_ids,
                                      held_out, settings.far, normaliser=identity)  # fmt: skip
    figures["encoder_saw_held_out_artists"] = not embedding_model  # a network trained on them: optimistic
    return figures


def _champion_rule(paths: config.Paths, kind: str, splits: pa.Table, table: pa.Table, info: dict[str, Any],
                   tracking_uri: str, registered_model: str, device, test_macro_f1: float,
                   logger) -> dict[str, Any]:  # fmt: skip
    """The registered candidate ``info`` against the current champion on the candidate's validation
    clips (``ml/training/champion.py``); the candidate becomes the champion unless it scored lower."""
    from ml.identification.identify import Identifier
    from ml.training.champion import compare_with_champion
    from ml.training.tracking import promote_champion

    val_rows = split_rows_of(splits, table, kind, "val")
    val_rows = val_rows.filter(pc.is_in(val_rows.column("artist"), pa.array(info["classes"], pa.string())))
    candidate = Identifier.from_folder(model_dir(paths, info), info, device)
    comparison = compare_with_champion(tracking_uri, registered_model, info["version"], candidate, val_rows,
                                       paths.data, logger)  # fmt: skip
    decision = promote_champion(tracking_uri, registered_model, info["version"], kind,
                                comparison["candidate_val_macro_f1"], comparison["champion_val_macro_f1"],
                                comparison["champion"], comparison["note"], test_macro_f1)  # fmt: skip
    decision.update(val_clips=comparison["clips"], val_songs=comparison["songs"], artists=comparison["artists"])
    verdict = "is now" if decision["promoted"] else "did not beat"
    champion_score = decision["champion_val_macro_f1"]
    logger.info(f"{registered_model} version {info['version']} {verdict} the champion (version "
                f"{decision['champion']}): validation song macro-F1 {decision['candidate_val_macro_f1']:.3f} against "
                + ("no score" if champion_score is None else f"{champion_score:.3f}")
                + f" on {comparison['songs']} songs; {decision['note']}")  # fmt: skip
    return decision


def evaluate_and_log(params: dict[str, Any], paths: config.Paths, kind: str, splits: pa.Table, segments: pa.Table,
                     features: pa.Table, tracking_uri: str, logger: logging.Logger | Any = None,
                     registered_model: str | None = None, fold: int = 0, trained: dict[str, Any] | None = None,
                     ) -> Report:  # fmt: skip
    """The ``kind`` model (``trained``, what :func:`train_and_log` returned for fold ``fold``; default:
    the kind's latest) on its test set, logged to its MLflow run and ``reports/`` (a ``kfold`` fold
    under ``kfold/fold<k>``). A registered
    version becomes the ``champion`` of ``registered_model`` unless the champion scored better on
    the same clips, the candidate's validation songs (``ml/training/champion.py``)."""
    import mlflow

    logger = logger or log
    model, info = load_trained(paths, kind, trained)
    device = device_from_params(params)
    if model is not None:
        model = model.to(device)
    table = with_features(segments, features)
    test_rows = split_rows_of(splits, table, kind, "test", fold)
    test_rows = test_rows.filter(pc.is_in(test_rows.column("artist"), pa.array(info["classes"])))
    if test_rows.num_rows == 0:
        raise ValueError(f"the {kind} split has no test clips")
    predictions = predictions_of(model, info, test_rows, params, paths, device, logger)
    train_rows = split_rows_of(splits, table, kind, "train", fold)
    train_rows = train_rows.filter(pc.is_in(train_rows.column("artist"), pa.array(info["classes"])))
    train_predictions = predictions_of(model, info, train_rows, params, paths, device, logger)
    open_set_metrics = open_set_figures(train_predictions, predictions, params, model is None)
    report_name = f"{kind}/fold{fold}" if kind == "kfold" else kind  # its reports' folder, its metrics.json key
    out_dir = paths.reports / "evaluation" / report_name
    report = evaluate(predictions, out_dir, f"{info['model']}, {kind} split")
    m = report.metrics
    m["open_set"] = open_set_metrics
    song_lstm = getattr(model, "song_lstm", None)  # samplecnn: an LSTM over the songs' clip embeddings too
    if song_lstm:
        from ml.training.song_head import song_lstm_scores

        m["song_lstm"] = song_lstm_scores(train_predictions, train_rows.column("start_s").to_pylist(), predictions,
                                          test_rows.column("start_s").to_pylist(), song_lstm)  # fmt: skip
    write_text(json.dumps(m, indent=1), report.files["metrics"])
    levels = ("segment", "song_majority", "song_mean_probability", *(("song_lstm",) if song_lstm else ()))
    summary = {f"test_{level}_{name}": m[level][name] for level in levels
               for name in ("accuracy", "macro_f1", "weighted_f1", "macro_precision", "macro_recall")}  # fmt: skip
    if open_set_metrics:
        summary.update({"test_open_set_eer": open_set_metrics["eer"],
                        "test_open_set_identification_rate_at_far": open_set_metrics["identification_rate_at_far"]})
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=info["run_id"]):
        mlflow.log_metrics(summary)
        for k, value in enumerate(m["top_k_song"], 1):
            mlflow.log_metric("test_song_top_k_accuracy", value, step=k)
        for path in report.files.values():
            mlflow.log_artifact(str(path), f"evaluation/{kind}")
        if registered_model and info.get("version"):
            m["champion"] = _champion_rule(paths, kind, splits, table, info, tracking_uri, registered_model, device,
                                           summary["test_song_mean_probability_macro_f1"], logger)  # fmt: skip
            mlflow.set_tag("champion", str(m["champion"]["promoted"]).lower())
    entry = {"model": info["model"], "mlflow_run_id": info["run_id"], **{k: round(v, 4) for k, v in summary.items()}}
    update_json(paths.reports / "metrics.json", lambda all_metrics: {**all_metrics, report_name: entry})  # others' too
    logger.info(f"{kind} split: segment accuracy {m['segment']['accuracy']:.3f}, "
                f"song accuracy {m['song_mean_probability']['accuracy']:.3f}, "
                f"song macro-F1 {m['song_mean_probability']['macro_f1']:.3f}")  # fmt: skip
    return report
