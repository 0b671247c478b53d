"""Song re-identification (ml/identification/song_id.py): the index finds an excerpt's song and
offset, says "not in the library" for a song it does not hold, follows releases added and removed,
and answers through `reconet identify --song` and `POST /song`. Songs are synthesised here (a
seeded melody over drums, written as real FLAC files)."""

import json
import socket
import threading
import time
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ml.identification import song_id

SR = 16000
P = song_id.SongIndexParams()


def synthetic_song(seed: int, seconds: float = 30.0) -> np.ndarray:
    """A song of its own: notes of a seeded melody and bass (with harmonics), kick and hi-hat hits."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    audio = np.zeros_like(t)
    start = 0.0
    while start < seconds:
        length = rng.choice([0.25, 0.5, 0.75])
        note = (t >= start) & (t < start + length)
        for base, level in ((220 * 2 ** (rng.integers(0, 24) / 12), 0.3), (55 * 2 ** (rng.integers(0, 12) / 12), 0.4)):
            envelope = np.exp(-3 * (t[note] - start))
            audio[note] += level * envelope * sum(np.sin(2 * np.pi * base * h * t[note]) / h for h in (1, 2, 3))
        start += length
    for hit in np.arange(0, seconds, 0.5) + rng.uniform(0, 0.1):
        kick = (t >= hit) & (t < hit + 0.1)
        audio[kick] += 0.5 * np.sin(2 * np.pi * 60 * (t[kick] - hit)) * np.exp(-30 * (t[kick] - hit))
        if rng.random() < 0.6:
            hat = (t >= hit + 0.25) & (t < hit + 0.28)
            audio[hat] += 0.1 * rng.standard_normal(hat.sum())
    return (0.5 * audio / np.abs(audio).max()).astype(np.float32)


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> dict:
    """Seven songs as FLAC files: releases A (3), B (2), C (1), and one that is never indexed."""
    folder = tmp_path_factory.mktemp("songs")
    layout = {"A": [0, 1, 2], "B": [3, 4], "C": [5], None: [6]}
    files, audio = {}, {}
    for seeds in layout.values():
        for seed in seeds:
            audio[seed] = synthetic_song(seed)
            files[seed] = folder / f"song{seed}.flac"
            sf.write(files[seed], audio[seed], SR)
    return {"layout": layout, "files": files, "audio": audio, "folder": folder}


def write_release(folder: Path, songs: dict, release: str) -> song_id.ReleaseEntries:
    seeds = songs["layout"][release]
    info = [{"track_id": f"track-{s}", "artist": f"Artist {release}", "title": f"Song {s}", "album": release,
             "path": songs["files"][s].name, "genre": "Rock" if s % 2 else "Jazz", "duration_s": 30.0}
            for s in seeds]  # fmt: skip
    entries, failed = song_id.release_entries(release, info, [songs["files"][s] for s in seeds],
                                              song_id.PooledLogMel(P), P)  # fmt: skip
    assert not failed
    entries.save(song_id.release_file(folder, release))
    return entries


def excerpt(songs: dict, seed: int, start_s: float, seconds: float = 5.0) -> np.ndarray:
    return songs["audio"][seed][int(start_s * SR) : int((start_s + seconds) * SR)]


@pytest.fixture(scope="module")
def index_folder(songs, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "song_index"
    for release in ("A", "B"):
        write_release(folder, songs, release)
    song_id.sync_view(folder, ["A", "B"], P, song_id.PooledLogMel(P).identity)
    return folder


def test_an_excerpt_is_found_with_its_song_and_offset_and_an_unknown_song_is_not_in_the_library(songs, index_folder):
    index = song_id.SongIndex(index_folder)
    assert index.threshold is not None and index.manifest["live"] > 0
    for seed, start in ((1, 12.3), (3, 4.0), (0, 21.7)):
        result = index.identify(excerpt(songs, seed, start))
        assert result["in_library"] and result["song"]["track_id"] == f"track-{seed}", (
            seed, result["margin"], result["threshold"], [(c["track_id"], c["score"]) for c in result["candidates"]])
        assert abs(result["offset_s"] - start) <= P.hop_s, (result["offset_s"], start)
        assert 0 < result["confidence"] == result["candidates"][0]["votes"] <= 1  # its share of the k-nearest vote
        assert result["margin"] >= result["threshold"]
        assert result["genre"] in ("Rock", "Jazz") and result["genre_svm"] in ("Rock", "Jazz")
    unknown = index.identify(excerpt(songs, 6, 10.0))
    assert not unknown["in_library"] and unknown["song"] is None and unknown["margin"] < unknown["threshold"]


def test_a_removed_release_is_deleted_and_an_added_one_appended_without_a_rebuild(songs, tmp_path):
    folder = tmp_path / "song_index"
    identity = song_id.PooledLogMel(P).identity
    a, b = write_release(folder, songs, "A"), write_release(folder, songs, "B")
    first = song_id.sync_view(folder, ["A", "B"], P, identity)
    assert first["live"] == len(a.vectors) + len(b.vectors) and first["rebuilt"]
    removed = song_id.sync_view(folder, ["A"], P, identity)  # B is no longer a release of the library
    assert removed["live"] == len(a.vectors) and removed["deleted_releases"] == ["B"] and not removed["rebuilt"]
    assert not song_id.release_file(folder, "B").exists()
    assert song_id.SongIndex(folder).identify(excerpt(songs, 3, 5.0))["song"] is None  # B's song is gone
    c = write_release(folder, songs, "C")
    added = song_id.sync_view(folder, ["A", "C"], P, identity)
    assert added["added_releases"] == ["C"] and not added["rebuilt"]
    assert added["live"] == len(a.vectors) + len(c.vectors)
    assert added["releases"]["A"] == removed["releases"]["A"]  # A's entries kept their labels: nothing re-added
    index = song_id.SongIndex(folder)
    assert index.identify(excerpt(songs, 5, 8.0))["song"]["track_id"] == "track-5"
    assert index.identify(excerpt(songs, 2, 8.0))["song"]["track_id"] == "track-2"
    assert sorted(p.name for p in folder.glob("view-*")) == [added["generation"]]  # one generation is kept


def test_a_copy_of_a_song_is_found_as_its_duplicate_and_does_not_raise_the_threshold(songs, index_folder, tmp_path):
    """Release D holds song 1 again (re-encoded as MP3, as a compilation would). Without the
    duplicate groups, the calibration takes each copy for an unknown song that matches perfectly
    and the threshold climbs above true matches; with them it stays where it was without the copy."""
    import shutil
    import subprocess

    folder = tmp_path / "song_index"
    (folder / "releases").mkdir(parents=True)
    for release in ("A", "B"):
        shutil.copy(song_id.release_file(index_folder, release), song_id.release_file(folder, release))
    copy = tmp_path / "song1 (compilation).mp3"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(songs["files"][1]), "-b:a", "128k", str(copy)],
                   check=True)  # fmt: skip
    info = [{"track_id": "track-1-again", "artist": "Artist A", "title": "Song 1", "album": "Best of",
             "path": copy.name, "genre": "Rock", "duration_s": 30.0}]  # fmt: skip
    entries, failed = song_id.release_entries("D", info, [copy], song_id.PooledLogMel(P), P)
    assert not failed
    entries.save(song_id.release_file(folder, "D"))
    manifest = song_id.sync_view(folder, ["A", "B", "D"], P, song_id.PooledLogMel(P).identity)
    ids = [s["track_id"] for s in manifest["songs"]]
    assert [[ids[i] for i in g] for g in manifest["duplicates"]] == [["track-1", "track-1-again"]]
    loaded = [song_id.ReleaseEntries.load(song_id.release_file(folder, r)) for r in ("A", "B", "D")]
    vectors = np.concatenate([e.vectors for e in loaded])
    owner = np.concatenate([song_id._global_songs(e, manifest["songs"], r) for e, r in zip(loaded, "ABD", strict=True)])
    # the copies not known as such, and every sampled passage counted (no duplicate_margin rule)
    blind = song_id.calibrate_threshold(vectors, owner, replace(P, duplicate_margin=1.01))
    passages_only = song_id.calibrate_threshold(vectors, owner, P)  # no groups, the passage rule only
    without_copy = song_id.SongIndex(index_folder).threshold
    # measured: 1.000 blind, 0.191 with the passage rule alone, 0.174 with the groups, 0.194 without the copy
    assert blind > 0.9 > manifest["threshold"], (blind, manifest["threshold"])
    assert abs(manifest["threshold"] - without_copy) < 0.1, (manifest["threshold"], without_copy)
    assert abs(passages_only - without_copy) < 0.1, (passages_only, without_copy)
    index = song_id.SongIndex(folder)
    result = index.identify(excerpt(songs, 1, 9.0))
    assert result["in_library"] and result["song"]["track_id"] in ("track-1", "track-1-again")
    assert [c["track_id"] for c in result["same_recording_as"]] == sorted({"track-1", "track-1-again"}
                                                                        - {result["song"]["track_id"]})  # fmt: skip
    assert "the same recording in the library as: Artist A - Song 1" in song_id.song_result_text(
        {**result, "file": "x.flac", "status": "ok"})
    assert index.identify(excerpt(songs, 3, 4.0))["song"]["track_id"] == "track-3"
    assert not index.identify(excerpt(songs, 6, 10.0))["in_library"]


def test_reconet_identify_song_prints_and_jsons_the_answer(songs, index_folder, monkeypatch, capsys, tmp_path):
    from pipeline.cli import main

    monkeypatch.setenv("RECONET_DATA_DIR", str(index_folder.parent))
    clip = tmp_path / "clip.wav"
    sf.write(clip, excerpt(songs, 4, 15.0), SR)
    stranger = tmp_path / "stranger.wav"
    sf.write(stranger, excerpt(songs, 6, 3.0), SR)
    assert main(["identify", "--song", str(clip), str(stranger), "--json"]) == 0
    found, unknown = json.loads(capsys.readouterr().out)
    assert found["status"] == "ok" and found["song"]["title"] == "Song 4" and abs(found["offset_s"] - 15.0) <= P.hop_s
    assert unknown["in_library"] is False and unknown["song"] is None
    assert main(["identify", "--song", str(clip), str(stranger)]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].startswith(f"{clip}: Artist B - Song 4 (B) at 0:1")
    assert any(line.startswith(f"{stranger}: not in the library (margin ") for line in text)
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    assert main(["identify", "--song", str(bad)]) == 1
    assert "notes.wav: error" in capsys.readouterr().out
    monkeypatch.setenv("RECONET_DATA_DIR", str(tmp_path / "empty"))
    assert main(["identify", "--song", str(clip)]) == 2  # no index


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, name: str, data: bytes) -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n")  # fmt: skip
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_post_song_answers_over_http(songs, index_folder, tmp_path):
    import uvicorn

    from ml.identification.service import make_app

    def start(app) -> tuple[uvicorn.Server, threading.Thread, str]:
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return server, thread, f"http://127.0.0.1:{port}"

    clip = tmp_path / "clip.flac"
    sf.write(clip, excerpt(songs, 2, 9.0, 10.0), SR)
    server, thread, url = start(make_app(None, "", 5.0, song_index=song_id.SongIndex(index_folder)))
    try:
        code, answer = _post(f"{url}/song", "../clip.flac", clip.read_bytes())
        assert code == 200 and answer["song"]["track_id"] == "track-2" and abs(answer["offset_s"] - 9.0) <= P.hop_s
        assert answer["file"] == "clip.flac"
        code, bad = _post(f"{url}/song", "notes.txt", b"not audio at all")
        assert code == 422 and bad["error"].startswith("notes.txt: ")
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    server, thread, url = start(make_app(None, "", 5.0))
    try:
        assert _post(f"{url}/song", "clip.flac", clip.read_bytes())[0] == 503
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_the_song_index_asset_indexes_each_release_and_drops_a_removed_one(small_library, project_dirs, tmp_path,
                                                                           monkeypatch):  # fmt: skip
    import shutil

    import dagster as dg

    from assets.partitions import sync_release_partitions
    from ml import config
    from ml.audio import load_audio, to_mono
    from pipeline.definitions import defs

    library = tmp_path / "library"
    shutil.copytree(small_library[0], library)
    monkeypatch.setenv("RECONET_LIBRARY", str(library))
    paths, params = config.paths(), config.load_params()
    instance = dg.DagsterInstance.get()
    sync_release_partitions(instance, paths, params)
    keys = sorted(instance.get_dynamic_partitions("releases"))
    run = lambda job, key=None: defs.resolve_job_def(job).execute_in_process(instance=instance,  # noqa: E731
                                                                            partition_key=key).success  # fmt: skip
    assert all(run("release_job", k) for k in keys) and run("catalogue_job")
    assert all(run("song_index_job", k) for k in keys)
    folder = song_id.index_folder(paths)
    index = song_id.SongIndex(folder)
    assert sorted(index.manifest["releases"]) == keys
    record = instance.fetch_materializations(dg.AssetKey("song_index"), limit=1).records[0]
    shown = record.asset_materialization.metadata
    assert shown["index_mib"].value > 0 and shown["index_update_s"].value >= 0 and shown["index_entries"].value > 0
    song = index.songs[0]
    audio = to_mono(load_audio(library / song["path"], P.sample_rate, stereo=False))
    result = index.identify(audio[int(10 * P.sample_rate) : int(15 * P.sample_rate)])
    # the demo's songs share their genre's backing track: the best candidate, whatever the threshold says
    best = result["candidates"][0]
    assert best["track_id"] == song["track_id"] and abs(best["offset_s"] - 10.0) <= P.hop_s, result["candidates"]
    gone = keys[0]
    shutil.rmtree(library / gone)
    sync_release_partitions(instance, paths, params)
    assert run("catalogue_job") and run("song_index_job", keys[1])
    after = song_id.SongIndex(folder).manifest
    assert sorted(after["releases"]) == keys[1:] and after["deleted_releases"] == [gone]
    assert after["live"] == index.manifest["live"] - (index.manifest["releases"][gone]["stop"]
                                                      - index.manifest["releases"][gone]["start"])  # fmt: skip


def test_the_autoencoders_augmentation_masks_each_excerpt_on_its_own_whatever_the_batch_size():
    """One frequency band and one time span of at most 8 masked per excerpt (the report's
    augmentation), drawn for each excerpt: a batch of 36 (not the 64 mel bands) works, and the
    excerpts' masked bands differ."""
    import torch

    images = torch.full((36, 1, 64, 64), 0.5)
    out = song_id.augment_images(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    masked_rows = [set(torch.nonzero(img[0].mean(dim=1) < 0.1).flatten().tolist()) for img in out]
    masked_cols = [set(torch.nonzero(img[0].mean(dim=0) < 0.1).flatten().tolist()) for img in out]
    assert all(len(r) <= 10 and len(c) <= 12 for r, c in zip(masked_rows, masked_cols, strict=True))  # shifts and rolls
    assert sum(bool(r) for r in masked_rows) >= 20 and len({frozenset(r) for r in masked_rows}) >= 10
