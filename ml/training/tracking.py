"""MLflow tracking and registry: a local SQLite store by default, any MLflow server by URI.

``MLFLOW_TRACKING_URI`` (or the Dagster resource's ``tracking_uri``) points at a server; otherwise
runs and the model registry live in ``sqlite:///<root>/mlflow.db`` with artifacts under
``<root>/mlartifacts/`` (MLflow 3 refuses the plain ``./mlruns`` file store). Browse them with
``mlflow ui --backend-store-uri sqlite:///mlflow.db`` (see README).

Every model is logged as one pyfunc bundle (``ml/identification/bundle.py``: audio in, the
singers out) for ``reconet identify`` and MLflow serving; its weights are safetensors (a network)
or a skops file (an embedding model's back-end), never a pickle.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

REGISTERED_MODEL = "reconet-vocalist"


def tracking_uri(root: Path, configured: str = "") -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params.yaml sections as MLflow params ("train.learning_rate": "0.001")."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return {k: v[:6000] for k, v in flat.items()}


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    commit = out.stdout.strip() or "unknown"
    return f"{commit}-dirty" if dirty and commit != "unknown" else commit


def artifact_root(uri: str) -> Path | None:
    """Beside a SQLite store: ``<its folder>/mlartifacts``; a server keeps its own artifacts."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix) :]).resolve().parent / "mlartifacts" if uri.startswith(prefix) else None


@contextmanager
def mlflow_run(uri: str, experiment: str, run_name: str, run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """Start (or resume, given ``run_id``) a run in ``experiment`` (created when missing, with its
    artifacts beside a SQLite store)."""
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        root = artifact_root(uri)
        location = root.as_uri() if root else None
        experiment_id = client.create_experiment(experiment, artifact_location=location)
    else:
        experiment_id = found.experiment_id
    with mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id,
                          run_name=None if run_id else run_name) as run:  # fmt: skip
        yield run


def register(uri: str, run_id: str, model_uri: str, name: str = REGISTERED_MODEL) -> str:
    """A new version of the registered model from the run's logged model; returns the version."""
    mlflow.set_tracking_uri(uri)
    version = mlflow.register_model(model_uri, name, tags={"run_id": run_id})
    return str(version.version)


CHAMPION = "champion"
SCORE_TAG = "test_song_macro_f1"  # on each registered version, set by its evaluation


def promote_champion(uri: str, name: str, version: str, kind: str, macro_f1: float) -> dict[str, Any]:
    """Record ``version``'s test song macro-F1 on it and give it the ``champion`` alias unless the
    current champion scored better: a retrained model never replaces a better one. Returns what
    was decided, for the run's metadata."""
    client = MlflowClient(uri)
    client.set_model_version_tag(name, version, SCORE_TAG, f"{macro_f1:.6f}")
    client.set_model_version_tag(name, version, "split_kind", kind)
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:  # no champion yet
        current = None
    current_score = float(current.tags.get(SCORE_TAG, "-inf")) if current is not None else None
    promoted = current is None or current.version == str(version) or macro_f1 >= current_score
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, str(version))
    return {"version": str(version), "macro_f1": round(macro_f1, 6), "promoted": promoted,
            "champion": str(version) if promoted else current.version,
            "previous_champion": None if current is None else current.version,
            "previous_champion_macro_f1": current_score}  # fmt: skip


def champion_report(uri: str, name: str, kind: str) -> dict[str, Any] | None:
    """Whether the ``champion`` alias obeys the rule: no version evaluated after the champion on
    the ``kind`` split scored better. None when no version of ``name`` was evaluated on ``kind``."""
    client = MlflowClient(uri)
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except mlflow.exceptions.MlflowException:
        return None
    scored = {int(v.version): float(v.tags[SCORE_TAG]) for v in versions
              if SCORE_TAG in v.tags and v.tags.get("split_kind") == kind}  # fmt: skip
    if not scored:
        return None
    try:
        champion = int(client.get_model_version_by_alias(name, CHAMPION).version)
    except mlflow.exceptions.MlflowException:
        return {"consistent": False, "problem": "evaluated versions exist but none is the champion"}
    later_better = sorted(v for v, s in scored.items() if v > champion and s > scored.get(champion, float("-inf")))
    latest = max(scored)
    return {"consistent": champion in scored and not later_better, "champion": champion,
            "champion_macro_f1": scored.get(champion), "latest_version": latest, "latest_macro_f1": scored[latest],
            "better_versions_not_promoted": later_better}  # fmt: skip
