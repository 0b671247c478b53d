"""How the steps of a run execute: ``orchestration.executor`` in params.yaml.

``multiprocess`` (default): each step in its own process on this machine, independent steps in
parallel (at most ``max_concurrent``); the heavy ones still queue on the ``gpu`` pool. To fan
releases out over several machines, Dagster's own executors take over with their packages installed
(``pip install -e '.[celery]'``, ``'.[dask]'`` or ``'.[k8s]'``) and their settings in the run
config (Launchpad) or dagster.yaml; see README, "Beyond one machine".
"""

from __future__ import annotations

import importlib

import dagster as dg

from ml.catalogue.orchestration import OrchestrationParams

# executor -> (module, attribute, pip extra)
_PLUGINS = {
    "celery": ("dagster_celery", "celery_executor", "celery"),
    "dask": ("dagster_dask", "dask_executor", "dask"),
    "k8s": ("dagster_k8s", "k8s_job_executor", "k8s"),
}


def executor_for(settings: OrchestrationParams) -> dg.ExecutorDefinition:
    if settings.executor == "in_process":
        return dg.in_process_executor
    if settings.executor == "multiprocess":
        if settings.max_concurrent:
            return dg.multiprocess_executor.configured({"max_concurrent": settings.max_concurrent})
        return dg.multiprocess_executor
    module, attribute, extra = _PLUGINS[settings.executor]
    try:
        return getattr(importlib.import_module(module), attribute)
    except ImportError:
        raise RuntimeError(f"orchestration.executor is {settings.executor!r}, but {module} is not installed: "
                           f"pip install -e '.[{extra}]'") from None  # fmt: skip
