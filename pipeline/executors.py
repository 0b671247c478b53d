"""How the steps of a run execute: ``orchestration.executor`` in params.yaml.

``multiprocess`` (default): each step in its own process on this machine, independent steps in
parallel (at most ``max_concurrent``); the heavy ones still queue on the ``gpu`` pool. To fan
releases out over several machines, Dagster's own executors take over with their packages installed
(``pip install -e '.[celery]'``, ``'.[dask]'`` or ``'.[k8s]'``) and their settings in the run
config (Launchpad) or dagster.yaml; see README, "Beyond one machine". ``dask`` sends the steps to
the scheduler at ``orchestration.dask_scheduler`` (``tcp://host:8786``); left empty, each run starts
a ``distributed.LocalCluster`` of its own unless its run config names a cluster.
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
        executor = getattr(importlib.import_module(module), attribute)
    except ImportError:
        raise RuntimeError(f"orchestration.executor is {settings.executor!r}, but {module} is not installed: "
                           f"pip install -e '.[{extra}]'") from None  # fmt: skip
    if settings.executor == "dask":
        executor = _opaque_dask_executor(executor)
    if settings.executor == "dask" and settings.dask_scheduler:  # an existing cluster's scheduler
        return executor.configured({"cluster": {"existing": {"address": settings.dask_scheduler}}})
    return executor


def _opaque_dask_executor(dask_executor: dg.ExecutorDefinition) -> dg.ExecutorDefinition:
    """dagster-dask's executor, with each step's arguments handed to Dask as one pickled blob.

    dagster-dask 0.29.27 passes the run's record to ``Client.submit``; Dask (2024.12 on) walks every
    tuple among a task's arguments, and a Dagster record is a tuple that refuses iteration, so every
    partitioned run, and every run with a pool, failed before its first step ("Iteration is not
    allowed on `@record` KeyRangesPartitionsSubset"). Bytes are opaque to Dask: the worker unpickles
    them and runs dagster-dask's own step function. The task keys also carry the run id, so two runs
    of one job on one cluster no longer share tasks (dagster#21418). Everything else is dagster-dask's.
    """
    import cloudpickle
    import dagster_dask.executor as upstream

    class OpaqueDaskExecutor(upstream.DaskExecutor):
        def execute(self, plan_context, execution_plan):
            import dask.distributed

            submit = dask.distributed.Client.submit
            run_id = plan_context.dagster_run.run_id

            def opaque_submit(client, fn, dependencies, *args, key=None, **kwargs):
                return submit(client, _run_pickled_step, dependencies, cloudpickle.dumps((fn, args)),
                              key=f"{key}-{run_id}" if key else None, **kwargs)  # fmt: skip

            dask.distributed.Client.submit = opaque_submit  # only while this run's steps are sent
            try:
                yield from super().execute(plan_context, execution_plan)
            finally:
                dask.distributed.Client.submit = submit

    @dg.executor(name=dask_executor.name, config_schema=dask_executor.config_schema,
                 requirements=dg.multiple_process_executor_requirements())  # fmt: skip
    def opaque_dask_executor(init_context):
        ((cluster_type, cluster_configuration),) = init_context.executor_config["cluster"].items()
        return OpaqueDaskExecutor(cluster_type, cluster_configuration)

    return opaque_dask_executor


def _run_pickled_step(dependencies, payload: bytes):
    """On a Dask worker: dagster-dask's step function with its unpickled arguments."""
    import cloudpickle

    fn, args = cloudpickle.loads(payload)
    return fn(dependencies, *args)
