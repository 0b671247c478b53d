"""reconet's local Dagster instance: its settings, and clean-up after runs that were killed.

Separation, features and training claim a slot of the concurrency pool ``gpu`` (size 1 by default:
one GPU, or the CPU cores that would otherwise be fought over). A run killed with SIGKILL cannot give
its slot back, and every later run would then wait for it forever; :func:`release_orphaned_runs`
marks such runs failed and frees their slots before the CLI starts new ones.
"""

from __future__ import annotations

import os
import socket

import dagster as dg

# Written to DAGSTER_HOME/dagster.yaml when the folder is first made (see README, "Concurrency").
DAGSTER_YAML = """\
# reconet's local Dagster instance (made by `reconet`); see README.
telemetry:
  enabled: false
concurrency:
  pools:
    # separation, features and training share the pool `gpu`: one of them at a time.
    # Raise it for several GPUs: `dagster instance concurrency set gpu 2` (or edit here).
    default_limit: 1
  runs:
    tag_concurrency_limits:
      # runs that rewrite the catalogue-wide `clean_tracks` (a release run, catalogue_job) queue
      # one behind the other, so none cleans the catalogue from a half-read view of another
      - key: reconet/writes
        value: clean_tracks
        limit: 1
"""

# the tag of the runs that rewrite `clean_tracks` (see DAGSTER_YAML)
WRITES_CLEAN_TRACKS = {"reconet/writes": "clean_tracks"}
LAUNCHER_TAG = "reconet/launcher"
PID_TAG = "reconet/pid"
HOST_TAG = "reconet/host"

FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
ACTIVE = {dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED}


def cli_run_tags() -> dict[str, str]:
    """Tags of a run executed in this process (so a later CLI can tell whether it still lives)."""
    return {LAUNCHER_TAG: "cli", PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def release_orphaned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Fail runs of this host's CLI whose process is gone, and free every pool slot still held by a
    run that is not running any more. Returns the ids of the runs marked failed."""
    failed = []
    host = socket.gethostname()
    for run in instance.get_runs(dg.RunsFilter(statuses=list(ACTIVE), tags={LAUNCHER_TAG: "cli", HOST_TAG: host})):
        pid = int(run.tags.get(PID_TAG, "0") or 0)
        if pid and not _alive(pid):
            instance.report_run_failed(run, f"the reconet process that ran it (pid {pid}) is gone (killed?)")
            failed.append(run.run_id)
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        for pool in storage.get_concurrency_keys():
            for slot in storage.get_concurrency_info(pool).claimed_slots:
                run = instance.get_run_by_id(slot.run_id)
                if run is None or run.status in FINISHED:
                    storage.free_concurrency_slots_for_run(slot.run_id)
    return failed
