"""`reconet identify` and the registered pyfunc bundle, end to end on real components: a
voice_embedding model trained on synthetic voices and registered in a SQLite MLflow store, demo
songs rendered, encoded, separated by the torch Spleeter backend and cut into clips, a singer
enrolled from one demo song and named in another; `mlflow models serve` and `reconet serve`
answering over HTTP, the latter's page driven in headless Chromium."""

import base64
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

import pytest
from test_embedding_models import VOICES, _params, _project

from ml import config
from ml.training.splits import SplitParams, split_segments


@pytest.fixture(scope="module")
def project(tmp_path_factory, shared_stems):
    """A trained, registered model (v1), demo recordings, and the same model with a demo singer
    enrolled from one of their songs (v2, the champion)."""
    from ml.catalogue.demo_library import make_song_file, plan_library
    from ml.identification.enrolment import enrol
    from ml.training.model_run import train_and_log
    from ml.training.tracking import promote_champion

    root = tmp_path_factory.mktemp("identify")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {"RECONET_DATA_DIR": str(root / "data"), "RECONET_REPORTS_DIR": str(root / "reports"),
           "RECONET_STEMS_DIR": str(shared_stems), "MLFLOW_TRACKING_URI": uri}  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        segments, features, _ = _project(root, list(VOICES)[:5])
        params = _params("voice_embedding")
        paths = config.paths(params)
        splits, _ = split_segments(segments, SplitParams(kinds=("song",), min_songs=3))
        out = train_and_log(params, paths, "song", splits, segments, features, uri, "reconet", register=True)
        promote_champion(uri, "reconet-vocalist", out["version"], "song", 0.9)
        specs = plan_library("small")
        voice0 = [s for s in specs if s.case == "song" and s.voices == [0]]
        instrumental = next(s for s in specs if s.case == "instrumental")
        songs = root / "songs"
        files = {name: songs / make_song_file(spec, str(songs)).path
                 for name, spec in (("enrol", voice0[0]), ("same_singer", voice0[-1]),
                                    ("instrumental", instrumental))}  # fmt: skip
        files["corrupt"] = songs / "broken.mp3"
        files["corrupt"].write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 40)
        files["empty"] = songs / "empty.flac"
        files["empty"].write_bytes(b"")
        files["text"] = songs / "notes.txt"
        files["text"].write_text("not a song\n")
        enrolled = enrol(params, paths, "song", "Demo Singer", [files["enrol"]], uri, "reconet", "reconet-vocalist")
        promote_champion(uri, "reconet-vocalist", enrolled["version"], "song", 0.95)
        yield {"root": root, "uri": uri, "env": env, "files": files, "trained_version": out["version"]}


@pytest.fixture
def project_env(project, monkeypatch):
    for key, value in project["env"].items():
        monkeypatch.setenv(key, value)
    return project


def _identify(capsys, *args) -> tuple[int, str]:
    from pipeline.cli import main

    code = main(["identify", *map(str, args)])
    return code, capsys.readouterr().out


def test_identify_names_an_enrolled_singer_and_reports_unknown_no_vocals_and_bad_files(project_env, capsys):
    files = project_env["files"]
    # the trained version knows only the synthetic voices: the demo singer is nobody it knows
    code, out = _identify(capsys, files["same_singer"], "--json", "--model",
                          f"models:/reconet-vocalist/{project_env['trained_version']}")  # fmt: skip
    assert code == 0
    [before] = json.loads(out)
    assert before["status"] == "ok" and before["unknown"] and before["singer"] is None
    assert before["score"] < before["threshold"]
    # the champion carries the demo singer's reference (enrolled from another of their songs) and
    # names them: the references travel in the registered bundle
    bad = [files[k] for k in ("instrumental", "corrupt", "empty", "text")]
    code, out = _identify(capsys, files["same_singer"], *bad, "--json", "--top-k", "3")
    assert code == 1  # some files could not be identified; the others still ran
    song, instrumental, corrupt, empty, text = json.loads(out)
    assert song["status"] == "ok" and not song["unknown"] and song["singer"] == "Demo Singer"
    assert song["score"] >= song["threshold"] and song["references"][0]["singer"] == "Demo Singer"
    probabilities = [t["probability"] for t in song["top_k"]]
    assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1
    timeline = song["timeline"]
    assert len(timeline) == song["clips"] >= 2
    assert all(0 <= c["start_s"] < c["end_s"] <= song["duration_s"] + 0.01 for c in timeline)
    assert [c["start_s"] for c in timeline] == sorted(c["start_s"] for c in timeline)
    assert {c["singer"] for c in timeline} == {"Demo Singer"}  # who sings when, by the answer's rule
    assert instrumental["status"] == "no_vocals" and instrumental["singer"] is None and not instrumental["top_k"]
    for result, name in ((corrupt, "broken.mp3"), (empty, "empty.flac"), (text, "notes.txt")):
        assert result["status"] == "error" and name in result["error"] and result["singer"] is None

    code, out = _identify(capsys, files["same_singer"], files["instrumental"], files["text"])
    assert code == 1
    lines = out.splitlines()
    assert lines[0].endswith("Demo Singer, score {:.2f} >= threshold {:.2f}".format(song["score"], song["threshold"]))
    assert any("no vocals found" in line and "Nightfall" in line for line in lines)
    assert any(line.startswith(str(files["text"])) and "error" in line for line in lines)
    assert sum(line.startswith("    ") and "-" in line.split()[0] for line in lines) >= len(timeline)


def test_identify_without_a_model_exits_2(project_env, tmp_path, capsys, monkeypatch):
    assert _identify(capsys, project_env["files"]["same_singer"], "--model", tmp_path / "nothing")[0] == 2
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    assert _identify(capsys, project_env["files"]["same_singer"])[0] == 2  # no champion in an empty registry


def test_the_inbox_sensor_identifies_settled_recordings_once_with_the_champion(project_env, tmp_path, monkeypatch):
    """A recording copied into the inbox is identified once it has settled, by the champion, with
    its result written beside it and its materialisation in the instance; a non-audio file is left
    alone, a corrupt one is answered with its reason (not a failed run); a changed file is
    identified again, a removed one loses its partition."""
    import shutil

    import dagster as dg
    import yaml

    from assets.identification import inbox_identification, inbox_recordings
    from assets.resources import MlflowTracking, ReconetSettings
    from pipeline.sensors import inbox_sensor

    files, inbox = project_env["files"], tmp_path / "inbox"
    params = config.load_params()
    params["orchestration"] = {**params["orchestration"], "settle_s": 0}
    params["identify"] = {**params["identify"], "inbox": str(inbox)}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("RECONET_PARAMS", str(tmp_path / "params.yaml"))
    resources = {"settings": ReconetSettings(), "mlflow_tracking": MlflowTracking()}
    instance = dg.DagsterInstance.ephemeral()

    def tick(cursor):
        result = inbox_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources))
        for request in result.dynamic_partitions_requests:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            else:
                for key in request.partition_keys:
                    instance.delete_dynamic_partition(request.partitions_def_name, key)
        return result

    skipped = lambda result: result.skip_reason.skip_message if result.skip_reason else ""  # noqa: E731
    assert "no inbox folder" in skipped(tick(None))
    (inbox / "live").mkdir(parents=True)
    shutil.copy(files["same_singer"], inbox / "live" / "song one.flac")
    shutil.copy(files["corrupt"], inbox / "broken.mp3")
    shutil.copy(files["text"], inbox / "notes.txt")
    first = tick(None)  # seen once: a copy may still be in progress
    assert not first.run_requests and "2 recording(s) in the inbox, 2 settling" in skipped(first)
    second = tick(first.cursor)
    assert sorted(r.partition_key for r in second.run_requests) == ["broken.mp3", "live/song one.flac"]
    assert sorted(instance.get_dynamic_partitions(inbox_recordings.name)) == ["broken.mp3", "live/song one.flac"]
    for request in second.run_requests:
        done = dg.materialize([inbox_identification], partition_key=request.partition_key, instance=instance,
                              resources=resources)  # fmt: skip
        assert done.success
    song = json.loads((inbox / "live" / "song one.flac.reconet.json").read_text())
    assert song["status"] == "ok" and song["singer"] == "Demo Singer" and song["file"] == "live/song one.flac"
    assert song["model"] == "models:/reconet-vocalist@champion" and len(song["timeline"]) == song["clips"] >= 2
    broken = json.loads((inbox / "broken.mp3.reconet.json").read_text())
    assert broken["status"] == "error" and "broken.mp3" in broken["error"]
    event = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey("inbox_identification"), asset_partitions=["live/song one.flac"]), limit=1).records[0]
    metadata = event.asset_materialization.metadata
    assert metadata["singer"].value == "Demo Singer" and "Demo Singer" in metadata["timeline"].value

    third = tick(second.cursor)  # nothing new: no second run for the same content (its JSON is not audio)
    assert not third.run_requests and "0 settling" in skipped(third)
    with open(inbox / "live" / "song one.flac", "ab") as f:  # changed: identified again once settled
        f.write(b"\0")
    changed = tick(third.cursor)
    assert not changed.run_requests  # it settles first
    fourth = tick(changed.cursor)
    assert [r.partition_key for r in fourth.run_requests] == ["live/song one.flac"]
    (inbox / "broken.mp3").unlink()
    tick(fourth.cursor)
    assert instance.get_dynamic_partitions(inbox_recordings.name) == ["live/song one.flac"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_champion_serves_through_mlflow_models_serve(project_env):
    """The real `mlflow models serve` process on 127.0.0.1; a POST on /invocations with the bytes
    of a demo song (base64, as MLflow's JSON carries binary columns) and of a text file."""
    port = _free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen([str(mlflow_cli), "models", "serve", "-m", "models:/reconet-vocalist@champion",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, **project_env["env"],  # it starts `uvicorn` from the PATH
                                   "PATH": f"{mlflow_cli.parent}{os.pathsep}{os.environ.get('PATH', '')}"},
                              start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        _wait_for_server(f"http://127.0.0.1:{port}/ping", server, "mlflow models serve")
        files = project_env["files"]
        data = [[base64.b64encode(files[k].read_bytes()).decode(), files[k].name] for k in ("same_singer", "text")]
        body = {"dataframe_split": {"columns": ["audio", "name"], "data": data}, "params": {"top_k": 2}}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=300) as reply:
            song, text = json.loads(reply.read())["predictions"]
        assert song["file"] == files["same_singer"].name and song["status"] == "ok"
        assert song["singer"] == "Demo Singer" and len(song["top_k"]) == 2 and song["timeline"]
        assert text["status"] == "error" and "notes.txt" in text["error"] and "reconet-identify-" not in text["error"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _multipart(fields: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body: field -> (file name, content)."""
    boundary = "reconet-test-boundary"
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                    f"Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n"
                    for field, (name, content) in fields.items())  # fmt: skip
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _wait_for_server(url: str, server: subprocess.Popen, name: str, timeout_s: float = 240) -> bytes:
    """The body of ``url``'s first 200 answer, polled every 2 s while ``server`` starts."""
    deadline = time.time() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                if reply.status == 200:
                    return reply.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if server.poll() is not None or time.time() > deadline:
            pytest.fail(f"{name} did not start: {server.stdout.read().decode()[-3000:]}")
        time.sleep(2)


def _post(url: str, body: bytes, content_type: str) -> tuple[int, dict]:
    """POST ``body``; the headers go first, and a server that answers on them alone (an upload over
    the limit, refused by its Content-Length) is read before the body is sent: sending it into a
    closed connection would break the pipe before the answer could be read."""
    import http.client
    import select
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    try:
        connection.putrequest("POST", parts.path)
        connection.putheader("Content-Type", content_type)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders()
        answered_early, _, _ = select.select([connection.sock], [], [], 1.0)
        if not answered_early:
            connection.send(body)
        reply = connection.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        connection.close()


@pytest.fixture(scope="module")
def service(project, tmp_path_factory):
    """`reconet serve` for real (uvicorn on 127.0.0.1) with the champion, an upload limit a little
    over the demo song's size, and its own temporary folder (to see that uploads are removed)."""
    import yaml

    root = tmp_path_factory.mktemp("serve")
    limit_mb = project["files"]["same_singer"].stat().st_size / 2**20 + 0.5
    params = config.load_params()
    params["serve"] = {**params.get("serve", {}), "max_upload_mb": round(limit_mb, 2)}
    (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    (root / "tmp").mkdir()
    port = _free_port()
    env = {**os.environ, **project["env"], "RECONET_PARAMS": str(root / "params.yaml"), "TMPDIR": str(root / "tmp")}
    server = subprocess.Popen([str(Path(sys.executable).with_name("reconet")), "serve", "--port", str(port)], env=env,
                              start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        health = json.loads(_wait_for_server(f"{url}/health", server, "reconet serve"))
        yield {"url": url, "health": health, "limit_mb": limit_mb, "tmp": root / "tmp"}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_service_answers_uploads_and_refuses_bad_ones_with_a_4xx_and_the_reason(project, service):
    url, files = service["url"], project["files"]
    assert service["health"]["status"] == "ok" and "Demo Singer" in service["health"]["singers"]
    upload = _multipart({"file": ("../../etc/passwd", files["same_singer"].read_bytes())})
    code, song = _post(f"{url}/identify", *upload)
    assert code == 200 and song["singer"] == "Demo Singer" and song["timeline"]
    assert song["file"] == "passwd"  # the client's name is only shown, its folders dropped
    code, text = _post(f"{url}/identify", *_multipart({"file": ("notes.txt", files["text"].read_bytes())}))
    assert code == 422 and text["error"].startswith("notes.txt: ") and "reconet-upload" not in text["error"]
    code, empty = _post(f"{url}/identify", *_multipart({"file": ("empty.flac", b"")}))
    assert code == 422 and "empty.flac" in empty["error"]
    code, big = _post(f"{url}/identify", *_multipart({"file": ("big.wav", os.urandom(int((service["limit_mb"] + 1)
                                                                                        * 2**20)))}))  # fmt: skip
    assert code == 413 and "limit" in big["error"]
    code, none = _post(f"{url}/identify", *_multipart({"other": ("x.mp3", b"abc")}))
    assert code == 400 and "file" in none["error"]
    code, garbled = _post(f"{url}/identify", b"not multipart at all", "multipart/form-data; boundary=zzz")
    assert code == 400
    code, instrumental = _post(f"{url}/identify", *_multipart({"file": ("n.mp3", files["instrumental"].read_bytes())}))
    assert code == 200 and instrumental["status"] == "no_vocals"
    assert not [p.name for p in service["tmp"].iterdir() if p.name.startswith("reconet-")]  # uploads removed


PAGE_SCRIPT = """
const [playwright, chromium, url, song, shot] = process.argv.slice(2);
const { chromium: browser } = require(playwright);
(async () => {
  const b = await browser.launch({ executablePath: chromium, args: ["--no-sandbox", "--disable-gpu"] });
  const page = await b.newPage({ viewport: { width: 1000, height: 800 } });
  await page.goto(url);
  await page.setInputFiles("#file", song);
  await page.click("#submit");
  await page.waitForFunction(() => document.getElementById("answer").textContent.length > 0, null,
                             { timeout: 300000 });
  const out = { answer: await page.textContent("#answer"), clips: await page.locator("rect.clip").count(),
                topk: await page.locator("#topk li").count(), error: await page.textContent("#error") };
  await page.screenshot({ path: shot, fullPage: true });
  await b.close();
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
"""


def test_the_page_uploads_a_song_in_headless_chromium_and_shows_the_singer_and_a_timeline(project, service,
                                                                                        tmp_path):  # fmt: skip
    import importlib.util

    from ml.config import project_root

    spec = importlib.util.spec_from_file_location("screenshot_ui", project_root() / "scripts" / "screenshot_ui.py")
    browser = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(browser)
    chromium, playwright = browser.ensure_chromium(), browser.ensure_playwright()  # Debian's chromium, npm's library
    script = tmp_path / "page.js"
    script.write_text(PAGE_SCRIPT)
    song = project["files"]["same_singer"]
    proc = subprocess.run(["node", str(script), str(playwright), chromium, service["url"], str(song),
                           str(tmp_path / "page.png")], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = json.loads(proc.stdout.strip().splitlines()[-1])
    code, result = _post(f"{service['url']}/identify", *_multipart({"file": (song.name, song.read_bytes())}))
    assert shown["answer"] == "Demo Singer" == result["singer"] and not shown["error"]
    assert shown["clips"] == len(result["timeline"]) >= 2 and shown["topk"] == len(result["top_k"])
    assert (tmp_path / "page.png").stat().st_size > 10_000
