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
    """A new version of the registered model from the run's logged model; returns the version. A
    run registers one version: recorded again (a crash after registering, before the run's
    ``model.json``), it gets its existing version back."""
    mlflow.set_tracking_uri(uri)
    existing = version_of_run(uri, run_id, name)
    if existing is not None:
        return existing
    version = mlflow.register_model(model_uri, name, tags={"run_id": run_id})
    return str(version.version)


def version_of_run(uri: str, run_id: str, name: str) -> str | None:
    """The version of ``name`` that run ``run_id`` registered, or None (the earliest, should there be several)."""
    try:
        found = MlflowClient(uri).search_model_versions(f"run_id='{run_id}'")
    except mlflow.exceptions.MlflowException:  # no registered model yet
        return None
    versions = sorted(int(v.version) for v in found if v.name == name)
    return str(versions[0]) if versions else None


CHAMPION = "champion"
SCORE_TAG = "test_song_macro_f1"  # on each registered version, set by its evaluation (its own test set: not compared)
RULE_TAG = "champion_rule_"  # the champion rule's decision on each evaluated version: the tags below
CANDIDATE_SCORE_TAG = RULE_TAG + "candidate_val_macro_f1"
CHAMPION_SCORE_TAG = RULE_TAG + "champion_val_macro_f1"


def current_champion(uri: str, name: str) -> str | None:
    """The version the ``champion`` alias of ``name`` points at; None when there is none."""
    try:
        return str(MlflowClient(uri).get_model_version_by_alias(name, CHAMPION).version)
    except mlflow.exceptions.MlflowException:  # no champion yet (or no registered model)
        return None


def promote_champion(uri: str, name: str, version: str, kind: str, candidate_score: float,
                     champion_score: float | None = None, compared_with: str | None = None, note: str = "",
                     test_macro_f1: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Give ``version`` the ``champion`` alias unless the current champion scored better on the same
    held-out clips: ``candidate_score`` and ``champion_score`` are the two models' song macro-F1 on
    them (``ml/training/champion.py``), ``compared_with`` the champion that was scored. Without a
    ``champion_score`` (no champion, or one that could not be scored: ``note`` says why) the
    candidate is promoted. A champion that changed since it was scored is not overruled. Both scores
    (and the version's own ``test_macro_f1``, for the record) are tagged on the version; returns
    what was decided, for the evaluation's metadata."""
    client = MlflowClient(uri)
    current = current_champion(uri, name)
    if current == str(version) or current is None:
        promoted, reason = True, "the candidate is the champion" if current else "no champion yet"
    elif compared_with is not None and compared_with != current:
        promoted, reason = False, f"the champion changed (version {compared_with} -> {current}) during the comparison"
    elif champion_score is None:
        promoted, reason = True, note or "the champion was not scored"
    else:
        promoted = candidate_score >= champion_score
        reason = note or "both scored on the same held-out clips"
    tags = {"split_kind": kind, CANDIDATE_SCORE_TAG: f"{candidate_score:.6f}",
            CHAMPION_SCORE_TAG: "" if champion_score is None else f"{champion_score:.6f}",
            RULE_TAG + "compared_with": compared_with or "", RULE_TAG + "promoted": str(promoted).lower(),
            RULE_TAG + "note": reason[:5000]}  # fmt: skip
    if test_macro_f1 is not None:
        tags[SCORE_TAG] = f"{test_macro_f1:.6f}"
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, str(version))
    return {"version": str(version), "promoted": promoted, "champion": str(version) if promoted else current,
            "previous_champion": current, "compared_with": compared_with,
            "candidate_val_macro_f1": round(candidate_score, 6),
            "champion_val_macro_f1": None if champion_score is None else round(champion_score, 6),
            "note": reason}  # fmt: skip


def champion_report(uri: str, name: str, kind: str) -> dict[str, Any] | None:
    """Whether the ``champion`` alias obeys the rule: it points at the version the rule promoted
    last among those evaluated on the ``kind`` split. None when no version of ``name`` has a
    decision on ``kind``."""
    client = MlflowClient(uri)
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except mlflow.exceptions.MlflowException:
        return None
    decided = {int(v.version): v.tags for v in versions
               if RULE_TAG + "promoted" in v.tags and v.tags.get("split_kind") == kind}  # fmt: skip
    if not decided:
        return None
    champion = current_champion(uri, name)
    if champion is None:
        return {"consistent": False, "problem": "evaluated versions exist but none is the champion"}
    champion = int(champion)
    promoted = sorted(v for v, tags in decided.items() if tags[RULE_TAG + "promoted"] == "true")
    promoted_later = [v for v in promoted if v > champion]
    scores = decided.get(champion, {})
    return {"consistent": champion in promoted and not promoted_later, "champion": champion,
            "champion_val_macro_f1": float(scores[CANDIDATE_SCORE_TAG]) if CANDIDATE_SCORE_TAG in scores else None,
            "latest_promoted": promoted[-1] if promoted else None, "promoted_after_champion": promoted_later,
            "rejected": sorted(v for v in decided if v not in promoted)}  # fmt: skip
