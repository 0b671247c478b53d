"""``reconet serve``: identification over HTTP, the model loaded once (Starlette on uvicorn).

* ``GET /`` — a page to upload a song and see the answer, the top-K and a timeline of who sings when;
* ``GET /health`` — the model and its singers;
* ``POST /identify`` — a multipart upload (field ``file``): the JSON object of ``reconet identify
  --json`` for it. "No vocals found" is an answer (200, status ``no_vocals``); a bad upload gets a
  4xx with the reason: 400 no file, 411 no length, 413 over ``serve.max_upload_mb``, 422 not audio,
  corrupt or empty.
* ``POST /song`` — the same upload: which library song the excerpt comes from, where, and its genre
  (the JSON object of ``reconet identify --song --json``; ml/identification/song_id.py), "not in
  the library" being an answer (200, ``in_library`` false); 503 when there is no song index.

An upload is written to a temporary folder under a fixed name and removed afterwards; the client's
file name is only shown, never used as a path. One recording is identified at a time (the network
and the separation use every core already).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml import config


@dataclass(frozen=True)
class ServeParams:
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_mb: float = 200.0

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ServeParams:
        settings = cls(**config.section(params, "serve", cls))
        if settings.max_upload_mb <= 0:
            raise ValueError("serve.max_upload_mb must be positive")
        return settings


def display_name(filename: str | None) -> str:
    """The upload's name to show: its last path part, printable characters only, at most 200."""
    name = re.sub(r"[\x00-\x1f\x7f]", "", (filename or "").replace("\\", "/").rsplit("/", 1)[-1]).strip()
    return name[:200] or "upload"


def make_app(bundle, model_uri: str, max_upload_mb: float, top_k: int = 5, song_index=None):
    """The Starlette app around a loaded bundle (``ml.identification.bundle.VocalistModel``) and,
    when given, a loaded song index (``ml.identification.song_id.SongIndex``) for ``POST /song``."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    limit = int(max_upload_mb * 1024 * 1024)
    one_at_a_time = threading.Lock()

    def error(status: int, reason: str) -> JSONResponse:
        return JSONResponse({"status": "error", "error": reason}, status_code=status)

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE.replace("{{MAX_MB}}", f"{max_upload_mb:g}"))

    async def health(request: Request) -> JSONResponse:
        info = bundle.identifier.info
        return JSONResponse({"status": "ok", "model": model_uri, "kind": info["model"],
                             "singers": sorted({*bundle.identifier.classes, *bundle.identifier.references}),
                             "max_upload_mb": max_upload_mb})  # fmt: skip

    def answer_file(upload: UploadFile, name: str, answer) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="reconet-upload-") as tmp:
            path = Path(tmp) / "upload"
            with open(path, "wb") as out:
                shutil.copyfileobj(upload.file, out, 1 << 20)
            if path.stat().st_size > limit:
                return {"status": "too_large", "error": f"{name}: over the {max_upload_mb:g} MB upload limit"}
            with one_at_a_time:
                return answer(path, name)

    def identify_file(upload: UploadFile, name: str) -> dict[str, Any]:
        return answer_file(upload, name, lambda path, name: bundle.identify(path, top_k=top_k, name=name))

    def song_file(upload: UploadFile, name: str) -> dict[str, Any]:
        from ml.identification.song_id import identify_song

        return answer_file(upload, name, lambda path, name: identify_song(song_index, path, name))

    async def identify(request: Request) -> JSONResponse:
        return await answer_upload(request, identify_file)

    async def song(request: Request) -> JSONResponse:
        if song_index is None:
            return error(503, "no song index: materialise song_index (reconet materialize song_index)")
        return await answer_upload(request, song_file)

    async def answer_upload(request: Request, answer) -> JSONResponse:
        length = request.headers.get("content-length")
        if length is None:
            return error(411, "send the upload with a Content-Length")
        if not length.isdigit() or int(length) > limit + 64 * 1024:
            return error(413, f"the upload is over the {max_upload_mb:g} MB limit (serve.max_upload_mb)")
        try:
            form = await request.form(max_files=1, max_fields=4)
        except HTTPException as exc:  # Starlette's answer to a malformed multipart body
            return error(400, f"not a multipart upload: {exc.detail}")
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                return error(400, "no file: send the recording as the multipart field `file`")
            result = await run_in_threadpool(answer, upload, display_name(upload.filename))
        finally:
            await form.close()
        if result["status"] == "too_large":
            return error(413, result["error"])
        return JSONResponse(result, status_code=422 if result["status"] == "error" else 200)

    return Starlette(routes=[Route("/", page), Route("/health", health), Route("/identify", identify, methods=["POST"]),
                             Route("/song", song, methods=["POST"])])  # fmt: skip


def serve(model_uri: str, tracking_uri: str, params: dict[str, Any], host: str | None = None,
          port: int | None = None) -> None:  # fmt: skip
    """Load the model once and serve it until interrupted."""
    import uvicorn

    from ml.identification.bundle import load_bundle

    settings = ServeParams.from_params(params)
    bundle = load_bundle(model_uri, tracking_uri)
    from ml.identification.identify import top_k_of

    app = make_app(bundle, model_uri, settings.max_upload_mb, top_k_of(params), _song_index_or_none(params))
    uvicorn.run(app, host=host or settings.host, port=port or settings.port, log_level="warning")


def _song_index_or_none(params: dict[str, Any]):
    """The project's song index for ``POST /song``; None (and /song answers 503) when there is none yet."""
    from ml.identification.song_id import SongIndex, index_folder

    folder = index_folder(config.paths(params))
    try:
        return SongIndex(folder, autoencoder=folder / "autoencoder.safetensors")
    except FileNotFoundError:
        return None


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>reconet: who sings this?</title>
<style>
 body { font: 15px system-ui, sans-serif; margin: 2em auto; max-width: 52em; color: #222; }
 #answer { font-size: 1.4em; margin: .8em 0 .3em; } .bar { background: #4a7bd0; height: .8em; display: inline-block; }
 #topk li { margin: .2em 0; } #topk span.name { display: inline-block; width: 14em; }
 #error { color: #b00; } svg text { font: 11px system-ui, sans-serif; }
</style></head>
<body>
<h1>Who sings this?</h1>
<form id="form"><input type="file" id="file" name="file" accept="audio/*">
 <button id="submit" type="submit">Identify</button> <small>up to {{MAX_MB}} MB</small></form>
<p id="status"></p><p id="error"></p>
<div id="result" hidden>
 <div id="answer"></div><div id="score"></div>
 <h3>Top trained singers (mean probability over the clips)</h3><ol id="topk"></ol>
 <h3>Who sings when</h3><svg id="timeline" width="800" height="90"></svg>
</div>
<script>
const $ = (id) => document.getElementById(id);
const palette = ["#4a7bd0", "#d0694a", "#4ab07a", "#a04ad0", "#d0b44a", "#4ac4d0", "#777"];
function el(tag, attrs, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
function show(r) {
  $("result").hidden = false;
  $("answer").textContent = r.status === "no_vocals" ? "No vocals found"
    : r.unknown ? "Unknown singer" : r.singer;
  $("score").textContent = r.status === "no_vocals" ? r.error
    : r.threshold === null ? "" : `score ${r.score.toFixed(2)}, threshold ${r.threshold.toFixed(2)}`;
  $("topk").replaceChildren(...r.top_k.map((t) => {
    const li = document.createElement("li");
    const name = document.createElement("span"), bar = document.createElement("span");
    name.className = "name"; name.textContent = `${t.singer} ${t.probability.toFixed(3)}`;
    bar.className = "bar"; bar.style.width = `${Math.max(1, 200 * t.probability)}px`;
    li.append(name, bar); return li;
  }));
  const svg = $("timeline"), width = 800, total = Math.max(r.duration_s || 1, 1), colour = {};
  svg.replaceChildren(el("line", {x1: 0, y1: 40, x2: width, y2: 40, stroke: "#ccc"}));
  r.timeline.forEach((c) => {
    const who = c.singer || "unknown";
    colour[who] = colour[who] || palette[Object.keys(colour).length % palette.length];
    const x = width * c.start_s / total, w = Math.max(2, width * (c.end_s - c.start_s) / total);
    const rect = el("rect", {x, y: 25, width: w, height: 30, fill: colour[who], class: "clip"});
    rect.append(el("title", {}, `${c.start_s}-${c.end_s} s: ${who} (${c.confidence.toFixed(2)})`));
    svg.append(rect);
  });
  Object.keys(colour).forEach((who, i) => {
    svg.append(el("rect", {x: 10 + 160 * i, y: 68, width: 12, height: 12, fill: colour[who]}));
    svg.append(el("text", {x: 27 + 160 * i, y: 78}, who));
  });
  svg.append(el("text", {x: 0, y: 18}, "0 s"), el("text", {x: width - 40, y: 18}, `${total.toFixed(0)} s`));
}
$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) { $("error").textContent = "choose a recording first"; return; }
  $("error").textContent = ""; $("status").textContent = `identifying ${file.name}...`; $("result").hidden = true;
  const body = new FormData(); body.append("file", file);
  try {
    const reply = await fetch("/identify", {method: "POST", body});
    const r = await reply.json();
    $("status").textContent = "";
    if (!reply.ok) { $("error").textContent = r.error; return; }
    show(r);
  } catch (e) { $("status").textContent = ""; $("error").textContent = String(e); }
});
</script></body></html>
"""
