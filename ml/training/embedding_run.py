"""One training run of an embedding model (``voice_embedding``, ``classical``, ``voice_fusion``;
see ``ml/identification/backend.py``): embed the clips, fit the back-end, calibrate the open-set
threshold, save, log to MLflow and register — the same record and files as a network's run
(``model.json`` last, as the completion marker), so evaluation, enrolment and the registry treat
both alike.

The run folder holds ``backend.skops`` (the fitted pipeline), ``references.safetensors`` (one
reference per singer in the back-end's space, enrolled singers included) and ``model.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ml import config
from ml.device import precision_from_params
from ml.identification import open_set
from ml.identification.backend import (
    BackendParams,
    ClipEmbedder,
    block_weights,
    clip_embeddings,
    fit_backend,
    load_backend,
    probabilities,
    save_backend,
    transform,
)
from ml.identification.identify import preprocessing
from ml.tables import atomic_path, write_text


def embedder_for(info_or_settings: dict[str, Any], device, precision=None) -> tuple[ClipEmbedder, BackendParams]:
    """The model's clip embedder, built once per process for each model, options, device and precision
    (``ml/device.py``; None: ``auto``): an evaluation embeds its training and its test clips, and
    ECAPA's weights take seconds to load."""
    from ml.device import pick_precision

    name, options = info_or_settings["model"], info_or_settings.get("model_options", {})
    settings = BackendParams.from_options(name, options)
    precision = precision or pick_precision(device)
    key = (name, json.dumps(options, sort_keys=True), str(device), str(precision))
    if key not in _EMBEDDERS:  # a frozen extractor, used for inference only: safe to share
        _EMBEDDERS[key] = ClipEmbedder(name, settings, device, precision=precision)
    return _EMBEDDERS[key], settings


_EMBEDDERS: dict[tuple[str, str, str, str], ClipEmbedder] = {}


def save_references(refs: dict[str, np.ndarray], path: Path, normaliser: open_set.Normaliser | None = None) -> Path:
    """Each singer's reference vector; with ``normaliser``, the standardisation a query's vectors
    take before they are compared with them (a network's penultimate layer; an embedding model's
    back-end space needs none)."""
    from safetensors.numpy import save_file

    tensors = {"vectors": np.stack(list(refs.values())).astype(np.float32)}
    if normaliser is not None:
        tensors.update(mean=np.asarray(normaliser.mean, np.float32), scale=np.asarray(normaliser.scale, np.float32))
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"singers": json.dumps(list(refs))})
    return path


def load_references(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    with safe_open(str(path), "numpy") as f:
        names = json.loads(f.metadata()["singers"])
        vectors = f.get_tensor("vectors")
    return dict(zip(names, vectors, strict=True))


def load_normaliser(path: Path) -> open_set.Normaliser:
    """The standardisation saved with the references (unit length only when none was)."""
    from safetensors import safe_open

    with safe_open(str(path), "numpy") as f:
        if "mean" not in f.keys():  # noqa: SIM118 - safe_open is no mapping
            return open_set.Normaliser.unit_only()
        return open_set.Normaliser(f.get_tensor("mean").astype(np.float64), f.get_tensor("scale").astype(np.float64))


def fit_and_record(params: dict[str, Any], paths: config.Paths, kind: str, model_name: str, options: dict[str, Any],
                   train_rows: pa.Table, val_rows: pa.Table, classes: list[str], run_dir: Path, run_id: str,
                   version: str, device, logger) -> dict[str, Any]:  # fmt: skip
    """Fit the back-end on ``train_rows``, score ``val_rows``, calibrate the open-set threshold, and
    write the run folder; returns ``model.json``'s content (also logged to the active MLflow run)."""
    import mlflow

    started = time.perf_counter()
    embedder, settings = embedder_for({"model": model_name, "model_options": options}, device,
                                      precision_from_params(params, device))  # fmt: skip
    x_train = clip_embeddings(train_rows, paths.data, embedder, logger)
    x_val = clip_embeddings(val_rows, paths.data, embedder, logger)
    y_train = train_rows.column("artist").to_pylist()
    y_val = val_rows.column("artist").to_pylist()
    embed_seconds = time.perf_counter() - started
    seed = int(params.get("train", {}).get("seed", 0))
    pipeline = fit_backend(settings, block_weights(embedder, settings), x_train, y_train, seed)
    if list(pipeline.classes_) != sorted(classes, key=str):
        raise ValueError(f"the back-end's classes {list(pipeline.classes_)} differ from the split's {classes}")
    val_accuracy = float(pipeline.score(x_val, y_val)) if len(y_val) else float("nan")
    val_loss = float("nan")
    if len(y_val):  # the same figure a network's run logs: cross-entropy of the validation clips
        from sklearn.metrics import log_loss

        val_loss = float(log_loss(y_val, probabilities(pipeline, x_val), labels=list(pipeline.classes_)))
    identity = open_set.Normaliser.unit_only()  # the back-end's space is standardised already
    t_train, t_val = transform(pipeline, x_train), transform(pipeline, x_val)
    rule, refs = open_set.calibrated_rule(classes, t_train, y_train, t_val, y_val,
                                          val_rows.column("track_id").to_pylist(), params, identity)  # fmt: skip
    save_backend(pipeline, run_dir / "backend.skops")
    save_references(refs, run_dir / "references.safetensors")
    info = {"model": model_name, "model_options": options, "classes": classes, "kind": kind, "run_id": run_id,
            "data_version": version, "best_epoch": 0, "version": None, "embedding": embedder.key,
            "open_set": rule,
            "enrolled": [], "val_accuracy": val_accuracy, "preprocessing": preprocessing(params, paths),
            "fit_seconds": time.perf_counter() - started,
            "dir": run_dir.relative_to(run_dir.parents[2]).as_posix()}  # fmt: skip
    mlflow.log_metrics({"val_accuracy": val_accuracy, "val_loss": val_loss, "embed_seconds": embed_seconds,
                        "fit_seconds": info["fit_seconds"]})  # fmt: skip
    if rule["threshold"] is not None:
        mlflow.log_metrics({"val_open_set_eer": rule["val_eer"], "open_set_threshold": rule["threshold"]})
    logger.info(f"{model_name} on the {kind} split: validation accuracy {val_accuracy:.3f} "
                f"({len(y_train)} training clips, {info['fit_seconds']:.0f} s)")  # fmt: skip
    return info


def write_model_json(info: dict[str, Any], run_dir: Path) -> None:
    write_text(json.dumps(info, indent=1), run_dir / "model.json")


def predict_rows(info: dict[str, Any], run_dir: Path, rows: pa.Table, data_dir: Path, device, logger=None,
                 precision=None):  # fmt: skip
    """(probabilities (N, classes) in ``info['classes']`` order, embeddings in the back-end's space)."""
    embedder, _ = embedder_for(info, device, precision)
    pipeline = load_backend(run_dir / "backend.skops")
    x = clip_embeddings(rows, data_dir, embedder, logger)
    order = [list(pipeline.classes_).index(c) for c in info["classes"]]
    if not len(x):
        return np.zeros((0, len(order))), np.zeros((0, 1))
    return probabilities(pipeline, x)[:, order], transform(pipeline, x)
