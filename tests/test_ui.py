"""The Dagster UI for real: `dagster-webserver` on 127.0.0.1 serves the project's asset graph over
GraphQL and launches one release's run, which `dagster-daemon` starts (as under `dagster dev`, i.e.
`make ui`) and which materialises that release only, on the instance the tests read."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from assets.partitions import releases, sync_release_partitions
from ml import config
from ml.config import project_root
from ml.tables import read_table, scope_filename
from pipeline.cli import prepare_dagster_home

pytestmark = pytest.mark.slow

STARTUP_TIMEOUT_S = 180
RUN_TIMEOUT_S = 180

# The pipeline's edges (upstream, downstream): tracks -> clean_tracks -> vocals -> segments ->
# features / splits -> model -> evaluation; rejected gathers every stage's exclusions, metadata_eda
# explores the catalogue. (An asset may read more than these; these it must read.)
EXPECTED_EDGES = {
    ("tracks", "clean_tracks"), ("clean_tracks", "vocals"), ("vocals", "segments"), ("segments", "features"),
    ("segments", "splits"), ("splits", "model"), ("features", "model"), ("model", "evaluation"),
    ("splits", "evaluation"), ("tracks", "rejected"), ("clean_tracks", "rejected"), ("vocals", "rejected"),
    ("segments", "rejected"), ("clean_tracks", "metadata_eda"), ("rejected", "metadata_eda"),
    ("evaluation", "predictions"), ("splits", "predictions"), ("segments", "predictions"),
}  # fmt: skip
# and two that read files, not assets: the inbox's recordings, the library's mixes for the song index
EXPECTED_ASSETS = {a for edge in EXPECTED_EDGES for a in edge} | {"inbox_identification", "song_index"}
PARTITIONED = {"tracks", "vocals", "segments", "features", "model", "evaluation", "predictions", "song_index",
               "inbox_identification"}  # by release / by split kind / by inbox recording

ASSET_GRAPH_QUERY = """
query AssetGraph {
  assetNodes {
    assetKey { path }
    dependencyKeys { path }
    groupName
    isPartitioned
    jobNames
    assetChecksOrError { ... on AssetChecks { checks { name blocking } } }
  }
}
"""

REPOSITORIES_QUERY = """
query Repositories {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection { nodes { name location { name } jobs { name } } }
    ... on PythonError { message }
  }
}
"""

LAUNCH_RUN_MUTATION = """
mutation LaunchRun($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId status tags { key value } } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}
"""

INSTIGATORS_QUERY = """
query Instigators($repositorySelector: RepositorySelector!) {
  sensorsOrError(repositorySelector: $repositorySelector) {
    __typename
    ... on Sensors { results { name sensorState { id status } } }
  }
  schedulesOrError(repositorySelector: $repositorySelector) {
    __typename
    ... on Schedules { results { name scheduleState { id status } } }
  }
}
"""

STOP_SENSOR_MUTATION = """
mutation StopSensor($id: String!) {
  stopSensor(id: $id) {
    __typename
    ... on StopSensorMutationResult { instigationState { status } }
    ... on Error { message }
  }
}
"""

STOP_SCHEDULE_MUTATION = """
mutation StopSchedule($id: String!) {
  stopRunningSchedule(id: $id) {
    __typename
    ... on ScheduleStateResult { scheduleState { status } }
    ... on Error { message }
  }
}
"""

RUN_STATUS_QUERY = """
query RunStatus($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status }
    ... on Error { message }
  }
}
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(url: str, query: str, variables: dict | None = None, timeout: float = 60) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.loads(response.read())
    assert not answer.get("errors"), answer["errors"]
    return answer["data"]


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # /proc prints each 32-bit word in host (little-endian) order
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            family = socket.AF_INET if width == 8 else socket.AF_INET6
            found.add(socket.inet_ntop(family, words))
    return found


def _start(name: str, args: list[str], log_path: Path) -> subprocess.Popen:
    """A Dagster command of the venv, from the project root, with the test's environment."""
    executable = Path(sys.executable).with_name(name)
    log = open(log_path, "w")  # noqa: SIM115 - the process keeps it; closed when it is stopped
    process = subprocess.Popen(
        [str(executable), *args], cwd=project_root(), env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    process.log = log  # type: ignore[attr-defined]
    return process


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (Dagster's commands then stop their code servers and runs), SIGKILL the group if need be."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    process.log.close()  # type: ignore[attr-defined]


def _wait_until_answers(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        assert process.poll() is None, f"dagster-webserver exited:\n{log_path.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        assert time.monotonic() < deadline, f"no answer in {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}"
        time.sleep(1)


def _repository(url: str) -> dict[str, str]:
    """The selector of the code location's repository (the one holding release_job)."""
    data = _graphql(f"{url}/graphql", REPOSITORIES_QUERY)["repositoriesOrError"]
    assert data["__typename"] == "RepositoryConnection", data
    (repo,) = [r for r in data["nodes"] if "release_job" in {j["name"] for j in r["jobs"]}]
    return {"repositoryLocationName": repo["location"]["name"], "repositoryName": repo["name"]}


def _stop_automation(url: str, repository: dict[str, str]) -> list[str]:
    """Turn off every running sensor and schedule, as a user does on the UI's Automation page, so
    that only the run the test launches touches the instance. Returns their names."""
    data = _graphql(f"{url}/graphql", INSTIGATORS_QUERY, {"repositorySelector": repository})
    assert data["sensorsOrError"]["__typename"] == "Sensors", data
    assert data["schedulesOrError"]["__typename"] == "Schedules", data
    stopped = []
    for kind, mutation, field, result in (
        ("sensor", STOP_SENSOR_MUTATION, "stopSensor", "instigationState"),
        ("schedule", STOP_SCHEDULE_MUTATION, "stopRunningSchedule", "scheduleState"),
    ):
        for instigator in data[f"{kind}sOrError"]["results"]:
            state = instigator[f"{kind}State"]
            if state["status"] != "RUNNING":
                continue
            answer = _graphql(f"{url}/graphql", mutation, {"id": state["id"]})[field]
            assert answer.get(result, {}).get("status") == "STOPPED", answer
            stopped.append(instigator["name"])
    return stopped


@pytest.fixture
def dagster_ui(small_library, project_dirs, monkeypatch):
    """`dagster-webserver` on 127.0.0.1 with the project's workspace and instance settings, and
    `dagster-daemon` beside it, as `dagster dev` (`make ui`) runs them: the instance queues a
    launched run, and the daemon starts it. Sensors and schedules are turned off first."""
    library, _ = small_library
    monkeypatch.setenv("RECONET_LIBRARY", str(library))
    paths = config.paths()
    assert prepare_dagster_home(paths) == project_dirs["dagster_home"]  # writes the project's dagster.yaml
    with dg.DagsterInstance.get() as instance:
        added, _ = sync_release_partitions(instance, paths, config.load_params())
    assert added, "the small library has releases"

    port = _free_port()
    logs = project_dirs["data"].parent
    workspace = ["-w", "workspace.yaml"]
    server = _start("dagster-webserver", ["-h", "127.0.0.1", "-p", str(port), *workspace], logs / "webserver.log")
    processes = [server]
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answers(url, server, logs / "webserver.log")
        repository = _repository(url)
        stopped = _stop_automation(url, repository)
        processes.append(_start("dagster-daemon", ["run", *workspace], logs / "daemon.log"))
        yield {
            "url": url, "port": port, "repository": repository, "releases": sorted(added), "logs": logs,
            "stopped_automation": stopped, "daemon": processes[-1],
        }  # fmt: skip
    finally:
        for process in reversed(processes):
            _stop(process)


def _wait_for_run(url: str, run_id: str, daemon: subprocess.Popen, daemon_log: Path) -> str:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        assert daemon.poll() is None, f"dagster-daemon exited:\n{daemon_log.read_text()[-3000:]}"
        answer = _graphql(f"{url}/graphql", RUN_STATUS_QUERY, {"runId": run_id})["runOrError"]
        assert answer["__typename"] == "Run", answer
        if answer["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            return answer["status"]
        assert time.monotonic() < deadline, f"run {run_id} still {answer['status']} after {RUN_TIMEOUT_S} s"
        time.sleep(2)


def _run_errors(run_id: str) -> str:
    """What went wrong in a run: its error events, with the exceptions' messages (for a failing assertion)."""
    lines = []
    with dg.DagsterInstance.get() as instance:
        for event in instance.all_logs(run_id):
            error = getattr(event.dagster_event.event_specific_data, "error", None) if event.dagster_event else None
            if event.level >= 40 or error:
                lines.append(event.message or "")
            while error:
                lines.append(f"  {error.cls_name}: {error.message.strip()}")
                error = error.cause
    return "\n".join(lines)[-3000:]


def test_webserver_serves_the_asset_graph_and_launches_a_release(dagster_ui, project_dirs):
    url, port = dagster_ui["url"], dagster_ui["port"]
    # only the loopback interface: nobody else on the network reaches the UI
    assert _listening_addresses(port) == {"127.0.0.1"}

    nodes = _graphql(f"{url}/graphql", ASSET_GRAPH_QUERY)["assetNodes"]
    graph = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    edges = {("/".join(d["path"]), key) for key, n in graph.items() for d in n["dependencyKeys"]}
    assert set(graph) == EXPECTED_ASSETS
    assert edges >= EXPECTED_EDGES, f"missing: {EXPECTED_EDGES - edges}"
    assert not graph["tracks"]["dependencyKeys"]  # the graph starts at the library
    assert {key for key, n in graph.items() if n["isPartitioned"]} == PARTITIONED
    assert graph["tracks"]["groupName"] == "catalogue" and "release_job" in graph["tracks"]["jobNames"]
    assert "new_release_sensor" in dagster_ui["stopped_automation"]  # it would process every release
    # the asset checks, under each asset's Checks tab
    checks = {(key, c["name"], c["blocking"]) for key, n in graph.items()
              for c in n["assetChecksOrError"].get("checks", [])}  # fmt: skip
    assert ("features", "finite_log_mels", True) in checks
    assert ("splits", "splits_disjoint_and_complete", True) in checks
    assert ("evaluation", "champion_not_worse", False) in checks and len(checks) == 6

    # launch one release's partition of release_job, as the Launchpad's partition picker does
    release = dagster_ui["releases"][0]
    params = {
        "selector": {**dagster_ui["repository"], "jobName": "release_job"},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": release}]},
    }
    launched = _graphql(f"{url}/graphql", LAUNCH_RUN_MUTATION, {"executionParams": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    status = _wait_for_run(url, run_id, dagster_ui["daemon"], dagster_ui["logs"] / "daemon.log")
    assert status == "SUCCESS", f"run {run_id} ended {status}:\n{_run_errors(run_id)}"

    with dg.DagsterInstance.get() as instance:
        assert instance.get_run_by_id(run_id).tags["dagster/partition"] == release
        assert instance.get_materialized_partitions(dg.AssetKey("tracks")) == {release}  # that release only
        event = instance.get_latest_materialization_event(dg.AssetKey("tracks"))
        assert event.run_id == run_id and event.asset_materialization.partition == release
        metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
        assert set(instance.get_dynamic_partitions(releases.name)) == set(dagster_ui["releases"])
        assert [r.run_id for r in instance.get_runs()] == [run_id]  # nothing else ran
    tables = project_dirs["data"] / "tables" / "tracks"
    written = tables / scope_filename(release)
    assert sorted(p.name for p in tables.glob("*.parquet")) == [written.name]  # no other release written
    assert metadata["path"] == str(written) and read_table(written).num_rows == metadata["rows"] > 0
    assert set(read_table(written).column("release").to_pylist()) == {release}
