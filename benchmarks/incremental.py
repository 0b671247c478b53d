"""Incremental benchmark: one album dropped into a processed library, against the full run.

    .venv/bin/python benchmarks/incremental.py [--size default] [--epochs 40] [--keep DIR]

In a throw-away project (data, reports, Dagster instance, MLflow store and stem cache under a
temporary folder, or ``--keep DIR``), on the demo library of ``--size`` without its last album:

1. the full run: every release through ``process_release_job`` (as the new-release sensor asks for
   them on an empty instance), then ``refresh_job`` and ``training_job`` per split kind, as the
   retrain sensor asks;
2. the last album is copied in; the new-release sensor ticks until it asks for that release alone;
   its run, then the refresh and training that the retrain sensor asks for.

Reported: seconds of each phase, the processing of one album against processing every release,
and the whole incremental update against the whole full run, in one process. Both start with an
empty stem cache. Results go to ``benchmarks/results/incremental.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _project(folder: Path, epochs: int) -> None:
    for name in ("data", "reports", "dagster_home", "stems"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["train"]["epochs"] = epochs
    params["orchestration"]["settle_s"] = 0.5
    (folder / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    from pipeline.instance import DAGSTER_YAML

    (folder / "dagster_home" / "dagster.yaml").write_text(DAGSTER_YAML)
    os.environ.update(
        RECONET_DATA_DIR=str(folder / "data"), RECONET_REPORTS_DIR=str(folder / "reports"),
        DAGSTER_HOME=str(folder / "dagster_home"), RECONET_STEMS_DIR=str(folder / "stems"),
        RECONET_PARAMS=str(folder / "params.yaml"), RECONET_LIBRARY=str(folder / "library"),
        MLFLOW_TRACKING_URI=f"sqlite:///{folder / 'mlflow.db'}",
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="default")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--keep", type=Path, help="project folder to keep (default: a temporary one)")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="reconet-incremental-"))
    _project(folder, args.epochs)

    import dagster as dg

    from assets.resources import MlflowTracking, ReconetSettings
    from ml.catalogue.catalogue import release_states
    from ml.catalogue.demo_library import generate_demo_library
    from pipeline.definitions import defs
    from pipeline.instance import cli_run_tags
    from pipeline.sensors import new_release_sensor, retrain_sensor

    source = folder / "demo-source"
    if not source.exists():
        generate_demo_library(source, size=args.size)
    extensions = yaml.safe_load((folder / "params.yaml").read_text())["library"]["audio_extensions"]
    last = sorted(release_states(source, extensions))[-1]
    library = folder / "library"
    shutil.copytree(source, library, ignore=lambda d, names: names if Path(d) == source / last else [])
    resources = {"settings": ReconetSettings(), "mlflow_tracking": MlflowTracking()}
    timings: dict[str, float] = {}

    def tick(sensor, instance, cursor=None):
        return sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources))

    def run_all(result, instance, phase: str) -> None:
        started = time.perf_counter()
        for request in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        for request in result.run_requests:
            outcome = defs.resolve_job_def(request.job_name).execute_in_process(
                instance=instance, partition_key=request.partition_key, tags=cli_run_tags(), raise_on_error=False,
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            )  # fmt: skip
            if not outcome.success:
                raise SystemExit(f"{request.job_name} {request.partition_key or ''} failed (run {outcome.run_id})")
            print(f"  {request.job_name} {request.partition_key or ''}", flush=True)
        timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - started

    def follow_with_training(instance, prefix: str) -> None:
        for step in ("refresh", "training"):
            run_all(tick(retrain_sensor, instance), instance, f"{prefix}_{step}_s")

    def settled(instance, cursor):
        result = tick(new_release_sensor, instance, cursor)
        time.sleep(0.6)
        return tick(new_release_sensor, instance, result.cursor)

    with dg.DagsterInstance.get() as instance:
        print(f"full run: {len(release_states(library, extensions))} releases", flush=True)
        first = settled(instance, None)
        run_all(first, instance, "full_releases_s")
        follow_with_training(instance, "full")
        shutil.copytree(source / last, library / last, dirs_exist_ok=True)
        print(f"incremental run: {last}", flush=True)
        added = settled(instance, first.cursor)
        assert [r.partition_key for r in added.run_requests] == [last], added.run_requests
        run_all(added, instance, "incremental_release_s")
        follow_with_training(instance, "incremental")

    full = sum(v for k, v in timings.items() if k.startswith("full"))
    incremental = sum(v for k, v in timings.items() if k.startswith("incremental"))
    results = {
        "library": args.size, "releases": len(release_states(library, extensions)), "epochs": args.epochs,
        **{k: round(v, 1) for k, v in timings.items()},
        "one_album_vs_all_releases": round(timings["incremental_release_s"] / timings["full_releases_s"], 3),
        "incremental_vs_full_total": round(incremental / full, 3), "project": str(folder),
    }  # fmt: skip
    out = ROOT / "benchmarks" / "results" / "incremental.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
