"""Enrolling a singer without retraining, and naming the singer of a set of clips.

``reconet enrol --artist NAME FILE...`` turns 1–3 recordings into clips the way the pipeline does
(``ml/identification/identify.py``: the torch separation backend into the project's stem cache,
then the clip cutting the model was trained with), embeds them with the trained embedding model, and stores the mean as
the singer's reference beside the model (``references.safetensors``). The model folder is then
logged as a new version of the registered model, tagged with the enrolled singer.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ml import config

log = logging.getLogger(__name__)
MAX_ENROL_FILES = 3


def song_vector(info: dict[str, Any], run_dir: Path, clips: np.ndarray, device) -> np.ndarray:
    """The clips' reference vector in the model's space (unit length)."""
    from ml.identification.identify import Identifier

    identifier = Identifier.from_folder(run_dir, info, device)
    return identifier.song_vector(identifier.classify(clips)[1])


def identify_clips(info: dict[str, Any], run_dir: Path, clips: np.ndarray, device) -> dict[str, Any]:
    """Every reference's cosine score for the clips of one recording, best first, and the answer:
    the best singer, or "unknown" when the best score is below the model's open-set threshold."""
    from ml.identification.identify import Identifier

    identifier = Identifier.from_folder(run_dir, info, device)
    answer = identifier.open_set_answer(identifier.classify(clips)[1])
    return {**answer, "singer": answer["singer"] or "unknown"}


def enrol_clips(info: dict[str, Any], run_dir: Path, artist: str, clips: np.ndarray, device,
                sources: list[str], write: bool = True) -> dict[str, Any]:  # fmt: skip
    """Add (or replace) ``artist``'s reference from ``clips``; returns the updated ``info`` (written
    to ``model.json`` when ``write``)."""
    from ml.tables import write_text
    from ml.training.embedding_run import load_references, save_references

    artist = artist.strip()
    if not artist:
        raise ValueError("an enrolled singer needs a name (--artist)")
    refs = load_references(run_dir / "references.safetensors")
    refs[artist] = song_vector(info, run_dir, clips, device).astype(np.float32)
    save_references(refs, run_dir / "references.safetensors")
    enrolled = [e for e in info.get("enrolled", []) if e["artist"] != artist]
    info = {**info, "enrolled": [*enrolled, {"artist": artist, "clips": int(len(clips)), "sources": sources}]}
    if write:
        write_text(json.dumps(info, indent=1), run_dir / "model.json")
    return info


def enrol(params: dict[str, Any], paths: config.Paths, kind: str, artist: str, files: list[Path], tracking_uri: str,
          experiment: str, registered_model: str | None, logger=None) -> dict[str, Any]:  # fmt: skip
    """``reconet enrol``: the singer's reference from 1–3 recordings, stored with the ``kind`` model
    and logged (and registered, when ``registered_model``) as a new model version. A recording that
    cannot be read or holds no singing is left out, logged and recorded in the ``rejected`` ledger
    (stage ``enrol``); the singer is enrolled from the others, or not at all when none is left."""
    import mlflow

    from ml.catalogue.rejected import record_rejected
    from ml.device import device_from_params
    from ml.identification.bundle import log_bundle
    from ml.identification.identify import NoVocals, preprocessing_of, recording_clips
    from ml.tables import REJECTED_SCHEMA, table_from_rows, write_text
    from ml.training.model_run import load_trained, model_dir
    from ml.training.tracking import mlflow_run, register

    logger = logger or log
    if not 1 <= len(files) <= MAX_ENROL_FILES:
        raise ValueError(f"enrol a singer from 1 to {MAX_ENROL_FILES} recordings (got {len(files)})")
    model, info = load_trained(paths, kind)
    if model is not None:
        raise ValueError(f"the {kind} model is a {info['model']} network: enrolment needs an embedding model "
                         "(train.model: voice_embedding, voice_fusion or classical)")  # fmt: skip
    device = device_from_params(params)
    run_dir = model_dir(paths, info)
    info = {**info, "preprocessing": preprocessing_of(info, params, paths)}
    clips, used, rejected = [], [], []
    for i, path in enumerate(files, 1):
        logger.info(f"[{i}/{len(files)}] separating and cutting {path}")
        try:
            clips.append(recording_clips(Path(path), info["preprocessing"], params, paths, device, logger).clips)
            used.append(Path(path).name)
        except (OSError, ValueError, RuntimeError) as exc:  # a bad recording is left out, the others still count
            reason = "no_segments" if isinstance(exc, NoVocals) else "missing" if isinstance(exc, FileNotFoundError) \
                else "unreadable"  # fmt: skip
            logger.warning(f"{path}: left out ({reason}): {exc}")
            rejected.append({"path": str(path), "release": f"enrol: {artist}", "stage": "enrol", "reason": reason,
                             "detail": str(exc)})  # fmt: skip
    record_rejected(paths.rejected, "enrol", f"enrol: {artist}", table_from_rows(rejected, REJECTED_SCHEMA))
    if not clips:
        raise ValueError(f"none of the {len(files)} recording(s) gave clips of {artist}'s voice: "
                         + "; ".join(f"{r['path']}: {r['detail']}" for r in rejected))  # fmt: skip
    info = enrol_clips(info, run_dir, artist, np.concatenate(clips), device, used, write=False)
    info["enrolled"][-1]["rejected"] = [r["path"] for r in rejected]
    with mlflow_run(tracking_uri, experiment, f"enrol-{kind}") as run:
        mlflow.set_tags({"enrolled_artist": artist, "base_run_id": info["run_id"], "split_kind": kind,
                         "model": info["model"]})  # fmt: skip
        mlflow.log_params({"artist": artist, "recordings": len(files), "clips": info["enrolled"][-1]["clips"]})
        logged = log_bundle(run_dir, info)
        if registered_model:
            info["version"] = register(tracking_uri, run.info.run_id, logged.model_uri, registered_model)
            logger.info(f"registered {registered_model} version {info['version']} with {artist} enrolled")
    write_text(json.dumps(info, indent=1), run_dir / "model.json")
    write_text(json.dumps(info, indent=1), paths.data / "models" / kind / "current.json")
    return info
