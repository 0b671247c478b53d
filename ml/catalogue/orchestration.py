"""When the pipeline re-runs on its own: the `orchestration` section of params.yaml, and the rule
that tells a release folder still being copied from one ready to process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ml import config
from ml.catalogue.catalogue import ReleaseState

EXECUTORS = ("multiprocess", "in_process", "celery", "dask", "k8s")


@dataclass(frozen=True)
class OrchestrationParams:
    sensor_interval_s: int = 30
    retrain_interval_s: int = 60
    settle_s: float = 60.0
    reprocess_cron: str = "0 3 * * *"
    timezone: str = "UTC"
    executor: str = "multiprocess"
    max_concurrent: int = 0
    dask_scheduler: str = ""  # executor dask: the scheduler's address; empty: a LocalCluster per run

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> OrchestrationParams:
        section = config.section(params, "orchestration", cls)
        settings = cls(**section)
        if settings.executor not in EXECUTORS:
            raise ValueError(f"orchestration.executor: {settings.executor!r}; choose from {EXECUTORS}")
        if min(settings.sensor_interval_s, settings.retrain_interval_s) < 1:
            raise ValueError("orchestration: sensor_interval_s and retrain_interval_s must be ≥ 1")
        if settings.settle_s < 0 or settings.max_concurrent < 0:
            raise ValueError("orchestration: settle_s and max_concurrent must be ≥ 0")
        return settings


def ready_releases(states: dict[str, ReleaseState], seen: dict[str, str], processed: dict[str, str],
                   now: float, settle_s: float) -> tuple[list[str], list[str]]:  # fmt: skip
    """Split the library's releases into (ready, settling).

    A release is ready when its folder looked the same at the previous look (``seen``: release ->
    fingerprint), nothing in it changed for ``settle_s`` seconds, and its current content was not
    processed already (``processed``: release -> fingerprint of its last processing). A folder still
    being copied changes between looks, so it settles first; unchanged content never runs twice.
    """
    ready, settling = [], []
    for key, state in sorted(states.items()):
        if processed.get(key) == state.fingerprint:
            continue
        if seen.get(key) == state.fingerprint and now - state.newest_mtime >= settle_s:
            ready.append(key)
        else:
            settling.append(key)
    return ready, settling
