"""What each asset's output depends on besides its upstream data, and which outputs are stale.

Every asset's *step version* is a digest of the params.yaml sections and the source files it runs
(``STEP_INPUTS``, less the keys that only change speed, ``SPEED_ONLY_KEYS``, as ``dvc.yaml``
leaves them out of its stages' params). It is
the asset's Dagster ``code_version``, so each materialisation records the version it was made with.
An output whose recorded version differs from today's (a parameter or the code changed since), or
that was never made, is stale; ``nightly_reprocess`` re-runs those (see README, "Automation").
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import dagster as dg

from assets.partitions import releases
from ml import config
from ml.training.training import TrainParams
from pipeline.jobs import process_release_job, refresh_job, training_job

# what a model's training, evaluation and predictions run of ml/identification (not song_id, enrolment...)
IDENTIFICATION_CODE = ("ml/identification/backend.py", "ml/identification/bundle.py",
                       "ml/identification/bundle_code.py", "ml/identification/open_set.py",
                       "ml/identification/identify.py")  # fmt: skip
# asset -> (params.yaml sections, source files or folders relative to the project root)
STEP_INPUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "tracks": (("library", "catalogue"),
               ("ml/catalogue/catalogue.py", "ml/catalogue/tags.py", "ml/audio.py", "assets/catalogue.py")),
    "clean_tracks": (("cleaning", "genres"), ("ml/catalogue/cleaning.py", "assets/catalogue.py")),
    "rejected": ((), ("ml/catalogue/rejected.py", "assets/catalogue.py")),
    "metadata_eda": (("cleaning", "genres", "eda"), ("ml/catalogue/eda.py", "ml/catalogue/cleaning.py",
                                                     "assets/metadata_eda.py")),
    "vocals": (("separation", "compute"), ("ml/separation/separation.py", "ml/separation/unet.py",
                                           "ml/separation/stems.py", "ml/audio.py", "assets/vocals.py")),
    "segments": (("segments",), ("ml/clips/segmentation.py", "ml/audio.py", "assets/segments.py")),
    "features": (("features",), ("ml/clips/features.py", "ml/clips/segmentation.py", "assets/segments.py")),
    "splits": (("splits",), ("ml/training/splits.py", "assets/training.py")),
    "model": (("features", "train", "models", "augment", "open_set", "compute"),
              ("ml/training/training.py", "ml/clips/loader.py", "ml/clips/augment", "ml/models",
               "ml/training/model_run.py", "ml/training/embedding_run.py", *IDENTIFICATION_CODE,
               "ml/clips/features.py", "ml/clips/segmentation.py", "ml/training/tracking.py", "assets/training.py",
               "ml/training/cross_validation.py")),
    "evaluation": (("features", "train", "models", "open_set", "compute"),
                   ("ml/training/evaluation.py", "ml/training/model_run.py", "ml/training/embedding_run.py",
                    *IDENTIFICATION_CODE, "ml/models", "ml/clips/loader.py", "ml/clips/features.py",
                    "ml/clips/segmentation.py", "ml/training/tracking.py", "assets/training.py",
                    "ml/training/cross_validation.py")),
    "song_index": (("song_index",),
                   ("ml/identification/song_id.py", "ml/models/song_autoencoder.py", "ml/models/classical.py",
                    "ml/clips/features.py", "ml/clips/augment", "ml/audio.py", "assets/song_index.py")),
    "predictions": (("identify", "open_set", "compute"),
                    (*IDENTIFICATION_CODE, "ml/identification/predictions.py", "ml/training/model_run.py",
                     "ml/training/embedding_run.py", "ml/models",
                     "ml/clips/features.py", "ml/clips/segmentation.py", "assets/identification.py")),
}  # fmt: skip
# (inbox_identification is not here: it answers a recording once, with the champion of the day)

# params.yaml keys that change how fast a step runs, not what it makes (dvc.yaml leaves them out too)
SPEED_ONLY_KEYS: dict[str, tuple[str, ...]] = {
    "catalogue": ("workers",),
    "separation": ("batch_chunks",),
    "features": ("batch_size",),
    "compute": ("device",),
}

PER_RELEASE = ("tracks", "vocals", "segments", "features", "song_index")


def _files(root: Path, relative: str) -> list[Path]:
    path = root / relative
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


def step_version(asset: str, params: dict[str, Any], root: Path | None = None) -> str:
    """Digest of ``asset``'s params.yaml sections and source files, as they are now."""
    root = root or config.PACKAGE_ROOT
    sections, sources = STEP_INPUTS[asset]
    values = {}
    for section in sections:
        value = params.get(section)
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in SPEED_ONLY_KEYS.get(section, ())}
        values[section] = value
    digest = hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode())
    for relative in sources:
        for path in _files(root, relative):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def with_step_versions(assets: list[dg.AssetsDefinition], params: dict[str, Any]) -> list[dg.AssetsDefinition]:
    """The assets with their step version as Dagster ``code_version`` (shown in the UI, recorded
    on every materialisation); an asset without ``STEP_INPUTS`` is left as it is."""

    def versioned(spec: dg.AssetSpec) -> dg.AssetSpec:
        name = spec.key.to_user_string()
        return spec.replace_attributes(code_version=step_version(name, params)) if name in STEP_INPUTS else spec

    return dg.map_asset_specs(versioned, assets)


def _recorded_versions(instance: dg.DagsterInstance, asset: str, partitions: list[str] | None) -> dict:
    """Partition (None when unpartitioned) -> the code version of its latest materialisation."""
    found = {}
    for partition in partitions or [None]:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
            limit=1,
        ).records
        if records:
            found[partition] = records[0].asset_materialization.tags.get("dagster/code_version")
    return found


def stale_outputs(instance: dg.DagsterInstance, params: dict[str, Any]) -> dict[str, list[str | None]]:
    """Asset -> its partitions (None: the unpartitioned output) that are missing or were made with
    another step version than today's."""
    keys = instance.get_dynamic_partitions(releases.name)
    kinds = list(TrainParams.from_params(params).split_kinds)
    stale: dict[str, list[str | None]] = {}
    for asset in STEP_INPUTS:
        per_kind = asset in ("model", "evaluation", "predictions")
        partitions = keys if asset in PER_RELEASE else kinds if per_kind else None
        now = step_version(asset, params)
        recorded = _recorded_versions(instance, asset, partitions)
        outdated = [p for p in (partitions or [None]) if recorded.get(p) != now]
        if outdated:
            stale[asset] = outdated
    return stale


def reprocess_requests(stale: dict[str, list[str | None]], keys: list[str]) -> list[dg.RunRequest]:
    """The runs that bring stale outputs up to date: a release run per stale release (a stale
    catalogue cleaning touches them all), else the catalogue-wide refresh, else the stale split
    kinds' training. What follows a release run, the retrain sensor starts."""
    if "clean_tracks" in stale:
        releases_to_run = list(keys)
    else:
        releases_to_run = sorted({p for a in PER_RELEASE for p in stale.get(a, []) if p is not None})
    if releases_to_run:
        return [dg.RunRequest(job_name=process_release_job.name, partition_key=k, tags={"reconet/trigger": "stale"})
                for k in releases_to_run]  # fmt: skip
    if any(a in stale for a in ("rejected", "metadata_eda", "splits")):
        return [dg.RunRequest(job_name=refresh_job.name, tags={"reconet/trigger": "stale"})]
    kinds = sorted({p for a in ("model", "evaluation", "predictions") for p in stale.get(a, []) if p is not None})
    return [dg.RunRequest(job_name=training_job.name, partition_key=k, tags={"reconet/trigger": "stale"})
            for k in kinds]  # fmt: skip
