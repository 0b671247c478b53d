"""Splits, training (resumable) and evaluation with MLflow, on a tiny generated set of clips."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from mlflow.tracking import MlflowClient

from ml import config
from ml.clips.features import FeatureParams, compute_log_mels
from ml.training.splits import SplitParams, split_segments

SR = 16000
ARTISTS = {"Alto": 180.0, "Bass": 90.0, "Tenor": 330.0}  # each "voice": its own pitch and timbre


def _segments(songs_per_album: int = 3, albums: int = 2, clips_per_song: int = 3) -> pa.Table:
    rows = []
    for artist in ARTISTS:
        for a in range(albums):
            for s in range(songs_per_album):
                track = f"{artist}-{a}-{s}"
                for c in range(clips_per_song):
                    genre = "Pop" if artist != "Bass" else "Rock"
                    rows.append({"segment_id": f"{track}-{c}", "track_id": track, "artist": artist,
                                 "album": f"{artist} album {a}", "over_genre": genre, "start_s": 10.0 * c})  # fmt: skip
    return pa.Table.from_pylist(rows)


def test_song_and_album_splits_are_disjoint_and_hold_every_artist():
    table, excluded = split_segments(_segments(), SplitParams(seed=3))
    assert excluded == []
    for kind in ("song", "album"):
        rows = table.filter(pc.equal(table.column("kind"), kind)).to_pylist()
        sides = {s: {r["track_id"] for r in rows if r["split"] == s} for s in ("train", "val", "test")}
        assert not (sides["train"] & sides["test"]) and not (sides["train"] & sides["val"])
        assert not (sides["val"] & sides["test"])
        for split in ("train", "val", "test"):
            assert {r["artist"] for r in rows if r["split"] == split} == set(ARTISTS)
        if kind == "album":  # the test album is never trained on
            albums = {s: {r["album"] for r in rows if r["split"] == s} for s in ("train", "test")}
            assert not (albums["train"] & albums["test"])
    again, _ = split_segments(_segments(), SplitParams(seed=3))
    assert again.equals(table)  # seeded


def test_segment_split_is_leaky_and_kfold_tests_every_song_once():
    table, _ = split_segments(_segments(), SplitParams(kinds=("segment", "kfold"), folds=3))
    segment = table.filter(pc.equal(table.column("kind"), "segment")).to_pylist()
    shares = {s: sum(r["split"] == s for r in segment) / len(segment) for s in ("train", "val", "test")}
    assert shares["train"] == pytest.approx(0.6, abs=0.1) and shares["test"] == pytest.approx(0.2, abs=0.1)
    train_songs = {r["track_id"] for r in segment if r["split"] == "train"}
    assert train_songs & {r["track_id"] for r in segment if r["split"] == "test"}  # leaky by design
    kfold = table.filter(pc.equal(table.column("kind"), "kfold")).to_pylist()
    tested = [(r["track_id"], r["fold"]) for r in kfold if r["split"] == "test"]
    songs = {t for t, _ in tested}
    assert len(songs) == 18 and all(len({f for t2, f in tested if t2 == t}) == 1 for t in songs)


def test_artists_with_too_few_songs_or_albums_are_left_out_with_a_reason():
    table = _segments()
    lone = pa.Table.from_pylist([{"segment_id": "x-0", "track_id": "x", "artist": "Solo", "album": "One",
                                  "over_genre": "Pop", "start_s": 0.0}])  # fmt: skip
    splits, excluded = split_segments(pa.concat_tables([table, lone]), SplitParams())
    reasons = {(e.artist, e.kind): e.reason for e in excluded}
    assert "1 song(s)" in reasons[("Solo", "song")] and "1 album(s)" in reasons[("Solo", "album")]
    assert "Solo" not in set(splits.column("artist").to_pylist())


def _tiny_project(tmp_path):
    """Packed 1 s clips of three synthetic voices, their log-mels, and a params dict for a fast run."""
    rng = np.random.default_rng(0)
    segments = _segments(clips_per_song=4)
    t = np.arange(SR) / SR
    clips = []
    for row in segments.to_pylist():
        f0 = ARTISTS[row["artist"]] * (1 + 0.03 * rng.standard_normal())
        voice = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6)) / h for h in range(1, 6))
        clips.append(0.2 * voice + 0.01 * rng.standard_normal(SR))
    packed = np.round(np.stack(clips) * 32767).astype(np.int16)
    data = tmp_path / "data"
    (data / "segments").mkdir(parents=True)
    np.save(data / "segments" / "v.npy", packed)
    np.save(data / "segments" / "a.npy", packed // 4)
    params = config.load_params()
    params["features"] = {**params["features"], "n_mels": 64}
    features = compute_log_mels(packed, FeatureParams.from_params(params), __import__("torch").device("cpu"))
    (data / "features").mkdir()
    np.save(data / "features" / "f.npy", features)
    n = segments.num_rows
    segments = segments.append_column("audio_file", pa.array(["segments/v.npy"] * n))
    segments = segments.append_column("accompaniment_file", pa.array(["segments/a.npy"] * n))
    segments = segments.append_column("audio_row", pa.array(range(n)))
    feature_table = pa.table({"segment_id": segments.column("segment_id"), "feature_file": ["features/f.npy"] * n,
                              "feature_row": pa.array(range(n), pa.int32())})  # fmt: skip
    params["train"] = {**params["train"], "model": "crnn", "epochs": 6, "batch_size": 16, "augment": False,
                       "learning_rate": 0.003}  # a network: these tests train through the epoch loop
    params["models"] = {
        "crnn": {"filters": [8, 16, 16, 16], "gru_units": 16},
        "reconet": {"stem": 8, "growth": 8, "dense_layers": [2, 2], "wave_channels": 16, "wave_stacks": 1,
                    "wave_layers": 4},
        "speaker_net": {"channels": [32, 32, 32, 32, 96], "attention_channels": 16, "se_channels": 16,
                        "lin_neurons": 48},
        "samplecnn": {"first_filters": 8, "filters": [8, 8, 16, 16, 16], "hidden": 16, "segment_samples": 729,
                      "song_lstm": {"units": 8, "epochs": 20}},
        "resnet_gru": {"width_divisor": 8, "blocks": [1, 1, 1], "gru_units": 16},
    }  # fmt: skip
    return params, segments, feature_table


@pytest.mark.parametrize("model_name", ["crnn", "reconet", "speaker_net", "samplecnn", "resnet_gru"])
def test_training_lowers_the_loss_and_mlflow_holds_the_run_and_a_registered_version(tmp_path, monkeypatch,
                                                                                   model_name):  # fmt: skip
    from ml.training.model_run import evaluate_and_log, train_and_log

    monkeypatch.setenv("RECONET_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RECONET_REPORTS_DIR", str(tmp_path / "reports"))
    params, segments, features = _tiny_project(tmp_path)
    params["train"]["model"] = model_name
    paths = config.paths(params)
    splits, _ = split_segments(segments, SplitParams(kinds=("song",)))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = train_and_log(params, paths, "song", splits, segments, features, uri, "reconet-test", register=True)
    client = MlflowClient(uri)
    run = client.get_run(out["run_id"])
    assert run.data.params["train.learning_rate"] == "0.003" and run.data.params["split_kind"] == "song"
    assert run.data.tags["model"] == model_name
    assert run.data.tags["data_version"] == out["data_version"] and run.data.tags["git_commit"]
    losses = [m.value for m in client.get_metric_history(out["run_id"], "train_loss")]
    assert len(losses) >= 3 and losses[-1] < losses[0]  # the loss falls
    assert out["version"] == "1"
    assert client.get_model_version("reconet-vocalist", "1").run_id == out["run_id"]

    again = train_and_log(params, paths, "song", splits, segments, features, uri, "reconet-test", register=True)
    assert again["run_id"] == out["run_id"] and again["version"] == "1"  # finished: not trained or registered again
    assert len(client.search_model_versions("name='reconet-vocalist'")) == 1

    report = evaluate_and_log(params, paths, "song", splits, segments, features, uri)
    test_side = splits.filter(pc.equal(splits.column("split"), "test"))  # the song kind only
    assert report.metrics["segment"]["count"] == test_side.num_rows  # every test clip, no other clip
    assert report.metrics["song_majority"]["count"] == len(set(test_side.column("track_id").to_pylist()))
    curve = report.metrics["top_k_song"]  # top-1 of the songs' mean probabilities is their accuracy
    assert len(curve) == 3 and curve[0] == pytest.approx(report.metrics["song_mean_probability"]["accuracy"])
    run = client.get_run(out["run_id"])
    assert "test_song_mean_probability_macro_f1" in run.data.metrics
    if model_name == "samplecnn":  # its song-level LSTM over the clip embeddings, measured beside the mean
        assert report.metrics["song_lstm"]["count"] == report.metrics["song_mean_probability"]["count"]
        assert run.data.metrics["test_song_lstm_macro_f1"] == pytest.approx(report.metrics["song_lstm"]["macro_f1"])
    else:
        assert "song_lstm" not in report.metrics
    for name in ("confusion.png", "top_k.png", "per_artist.csv", "metrics.json"):
        assert (paths.reports / "evaluation" / "song" / name).exists()
    summary = json.loads((paths.reports / "metrics.json").read_text())
    assert summary["song"]["mlflow_run_id"] == out["run_id"]
    _registered_bundle_classifies_raw_clips_as_the_trained_network(uri, paths, tmp_path / "data")
    if model_name == "crnn":
        assert out["epochs_run"] == params["train"]["epochs"]  # ended on its budget (warm-up: no early stop)
        params["train"]["epochs"] += 1  # a bigger budget continues the same run
        more = train_and_log(params, paths, "song", splits, segments, features, uri, "reconet-test", register=True)
        assert more["run_id"] == out["run_id"] and more["resumed_from_epoch"] == out["epochs_run"]
        assert more["epochs_run"] == out["epochs_run"] + 1


def _registered_bundle_classifies_raw_clips_as_the_trained_network(uri, paths, data):
    """The registered version is the audio bundle (ml/identification/bundle.py): from raw clips it
    computes the log-mels itself and gives the probabilities the network gives on the cached ones."""
    import torch

    from ml.identification.bundle import load_bundle
    from ml.models import logits, needs_audio
    from ml.training.model_run import load_trained

    bundle = load_bundle("models:/reconet-vocalist/1", uri)
    audio = np.load(data / "segments" / "v.npy")[:12].astype(np.float32) / 32767
    probabilities, vectors = bundle.identifier.classify(audio)
    model, info = load_trained(paths, "song")
    cached = torch.from_numpy(np.load(data / "features" / "f.npy")[:12].astype(np.float32))
    with torch.inference_mode():
        scores = logits(model, cached, torch.from_numpy(audio) if needs_audio(model) else None)
    assert bundle.identifier.classes == info["classes"]
    # the network's open-set vectors: its penultimate layer, standardised as its references were, unit length
    assert vectors.shape[0] == 12 and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert np.allclose(probabilities, torch.softmax(scores, 1).numpy(), atol=0.02)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


KILLED_TRAINING = """
import sys, json, pyarrow as pa, pyarrow.parquet as pq
from ml import config
from ml.training.model_run import train_and_log
from ml.training.splits import SplitParams, split_segments
params = json.loads(open(sys.argv[1]).read())
segments, features = pq.read_table(sys.argv[2]), pq.read_table(sys.argv[3])
splits, _ = split_segments(segments, SplitParams(kinds=("song",)))
out = train_and_log(params, config.paths(params), "song", splits, segments, features, sys.argv[4], "t", False)
print(json.dumps({"resumed_from_epoch": out["resumed_from_epoch"], "epochs_run": out["epochs_run"]}))
"""


def test_training_killed_mid_run_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    monkeypatch.setenv("RECONET_DATA_DIR", str(tmp_path / "data"))
    params, segments, features = _tiny_project(tmp_path)
    params["train"]["epochs"] = 200
    params["train"]["early_stopping_patience"] = 1000
    files = [tmp_path / "params.json", tmp_path / "segments.parquet", tmp_path / "features.parquet"]
    files[0].write_text(json.dumps(params))
    pq.write_table(segments, files[1])
    pq.write_table(features, files[2])
    args = [sys.executable, "-c", KILLED_TRAINING, *map(str, files), f"sqlite:///{tmp_path / 'mlflow.db'}"]
    proc = subprocess.Popen(args, cwd=config.project_root())
    deadline = time.monotonic() + 240
    checkpoints = []
    while time.monotonic() < deadline and proc.poll() is None and not checkpoints:
        checkpoints = list((tmp_path / "data" / "models").rglob("checkpoint.pt"))
        time.sleep(0.2)
    assert checkpoints, "no checkpoint was written"
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from ml.training.training import Checkpointer

    state = Checkpointer(checkpoints[0].parent).load()  # the file in place is a whole checkpoint
    assert state is not None and json.loads(state["history"])
    params["train"]["epochs"] = 6  # finish quickly: resume, then stop at epoch 6
    files[0].write_text(json.dumps(params))
    done = subprocess.run(args, cwd=config.project_root(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["resumed_from_epoch"] >= 1 and result["epochs_run"] == max(6, result["resumed_from_epoch"])


def test_training_on_augmented_raw_clips(tmp_path, monkeypatch):
    """train.augment: raw clips (with their accompaniment, for remix) through the augmentation chain
    and log-mels on the device; validation on clean clips. Noise 30 dB over every training clip
    leaves nothing to learn, so training stays at chance where, without augmentation, it learns."""
    from ml.training.model_run import train_and_log

    monkeypatch.setenv("RECONET_DATA_DIR", str(tmp_path / "data"))
    params, segments, features = _tiny_project(tmp_path)
    params["train"].update(augment=True, epochs=3)
    params["augment"] = {name: {"p": 1.0} for name in ("remix", "time_shift", "cutout")}
    params["augment"]["gaussian_noise"] = {"p": 1.0, "snr_db": [-30.0, -30.0]}
    splits, _ = split_segments(segments, SplitParams(kinds=("song",)))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    accuracy = {}
    for augment in (True, False):
        params["train"]["augment"] = augment
        out = train_and_log(params, config.paths(params), "song", splits, segments, features, uri, "t", register=False)
        accuracy[augment] = [m.value for m in client.get_metric_history(out["run_id"], "train_accuracy")]
        if augment:
            run = client.get_run(out["run_id"])
            assert out["epochs_run"] == 3 and run.data.params["train.augment"] == "True"
            assert run.data.params["augment.remix.p"] == "1.0"
    assert max(accuracy[True]) < 0.5 < 0.7 < max(accuracy[False])  # chance is 1/3


def test_augmentation_separation_and_labels_are_part_of_a_runs_identity(tmp_path, monkeypatch):
    """A change of the `augment` section (when training augments), of the separation backend or
    checkpoint, or of a clip's artist trains a new run; an unchanged configuration finds its run."""
    from ml.training.model_run import train_and_log

    checkpoint = tmp_path / "models" / "spleeter" / "2stems" / "model.data-00000-of-00001"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"weights of separation model A")
    monkeypatch.setenv("RECONET_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("RECONET_DATA_DIR", str(tmp_path / "data"))
    params, segments, features = _tiny_project(tmp_path)
    params["train"].update(augment=True, epochs=1)
    params["augment"] = {"gaussian_noise": {"p": 1.0}}
    splits, _ = split_segments(segments, SplitParams(kinds=("song",)))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def run_of(data=segments) -> str:
        return train_and_log(params, config.paths(params), "song", splits, data, features, uri, "t", False)["run_id"]

    first = run_of()
    assert run_of() == first  # finished: found, not trained again
    runs = {first}
    params["augment"] = {"gaussian_noise": {"p": 0.5}}
    runs.add(run_of())
    params["separation"] = {**params["separation"], "backend": "spleeter"}
    runs.add(run_of())
    checkpoint.write_bytes(b"weights of separation model B")
    runs.add(run_of())
    trained = next(r["track_id"] for r in splits.to_pylist() if r["split"] == "train" and r["artist"] == "Alto")
    relabelled = segments.to_pylist()
    for row in relabelled:  # a corrected tag: a training song's clips are another singer's (same segment ids)
        row["artist"] = "Tenor" if row["track_id"] == trained else row["artist"]
    runs.add(run_of(pa.Table.from_pylist(relabelled, schema=segments.schema)))
    assert len(runs) == 5
    params["train"]["augment"] = False  # the cached log-mels: the augment section shapes nothing
    plain = run_of()
    params["augment"] = {"gaussian_noise": {"p": 1.0}}
    assert run_of() == plain and plain not in runs


def test_a_run_recorded_again_after_a_crash_keeps_its_version_and_replaces_its_weights_whole(tmp_path, monkeypatch):
    """A crash between registering a version and writing `model.json` (the completion marker): the
    run is recorded again and registers nothing new. The weights are written beside their place and
    renamed in (a new file, not the old one rewritten), leaving no temporary file."""
    from ml.training.model_run import train_and_log

    monkeypatch.setenv("RECONET_DATA_DIR", str(tmp_path / "data"))
    params, segments, features = _tiny_project(tmp_path)
    params["train"]["epochs"] = 1
    paths = config.paths(params)
    splits, _ = split_segments(segments, SplitParams(kinds=("song",)))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = train_and_log(params, paths, "song", splits, segments, features, uri, "t", register=True)
    run_dir = paths.data / out["dir"]
    weights = run_dir / "model.safetensors"
    before = weights.stat().st_ino
    (run_dir / "model.json").unlink()  # as a crash after `register`, before the marker
    again = train_and_log(params, paths, "song", splits, segments, features, uri, "t", register=True)
    assert again["run_id"] == out["run_id"] and again["version"] == out["version"] == "1"
    assert [str(v.version) for v in MlflowClient(uri).search_model_versions("name='reconet-vocalist'")] == ["1"]
    assert (run_dir / "model.json").exists() and weights.stat().st_ino != before
    assert not list(run_dir.glob(".*.tmp"))


CONCURRENT_UPDATES = """
import sys
from ml.tables import update_json
for i in range(int(sys.argv[3])):
    update_json(sys.argv[1], lambda d, i=i: {**d, f"{sys.argv[2]}-{i}": i})
"""


def test_concurrent_updates_of_the_metrics_summary_lose_nothing(tmp_path):
    """Evaluations of several split kinds update `reports/metrics.json` at once (Dagster's
    multiprocess executor): each read-change-write holds the file's lock, so no update is lost."""
    target = tmp_path / "reports" / "metrics.json"
    writers, updates = 4, 40
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_UPDATES, str(target), f"kind{w}", str(updates)],
                              cwd=config.project_root()) for w in range(writers)]  # fmt: skip
    assert [p.wait(timeout=300) for p in procs] == [0] * writers
    summary = json.loads(target.read_text())
    assert summary == {f"kind{w}-{i}": i for w in range(writers) for i in range(updates)}


def test_a_split_kind_without_two_eligible_artists_is_skipped_with_its_reason(project_dirs):
    """No artist has two albums: the album split is empty, and training on it is skipped (it crashed on
    an empty class list), with the reason in the asset's metadata."""
    import dagster as dg

    from assets.resources import table_path
    from ml.tables import write_table
    from pipeline.definitions import defs

    segments = _segments(albums=1)
    splits, excluded = split_segments(segments, SplitParams(kinds=("song", "album")))
    assert {e.kind for e in excluded} == {"album"}
    tables = project_dirs["data"] / "tables"
    write_table(splits, tables / "splits.parquet")
    write_table(segments, table_path(tables, "segments", "Choir/Only Album"))
    write_table(pa.table({"segment_id": segments.column("segment_id"), "feature_file": ["f.npy"] * segments.num_rows,
                          "feature_row": pa.array(range(segments.num_rows), pa.int32())}),
                table_path(tables, "features", "Choir/Only Album"))  # fmt: skip
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("releases", ["Choir/Only Album"])
        result = defs.resolve_job_def("training_job").execute_in_process(instance=instance, partition_key="album")
        assert result.success
        assert {e.step_key: e.event_type_value for e in result.all_events if e.is_step_event and e.step_key in
                ("model", "evaluation") and e.event_type_value in ("STEP_SUCCESS", "STEP_SKIPPED")} == {
            "model": "STEP_SUCCESS", "evaluation": "STEP_SKIPPED"}  # fmt: skip
        assert not instance.get_materialized_partitions(dg.AssetKey("model"))
        observation = instance.fetch_observations(dg.AssetKey("model"), limit=1).records[0].asset_observation
        assert observation.partition == "album"
        assert "no artist is eligible for the album split" in observation.metadata["skipped"].value
        alone = defs.resolve_job_def("training_job").execute_in_process(  # the `evaluation` stage on its own
            instance=instance, partition_key="album", asset_selection=[dg.AssetKey("evaluation")])
        assert alone.success and not instance.get_materialized_partitions(dg.AssetKey("evaluation"))


def test_a_songs_side_stays_put_as_the_library_grows():
    def sides(table: pa.Table, kind: str) -> dict[str, str]:
        rows = table.filter(pc.equal(table.column("kind"), kind)).to_pylist()
        return {r["track_id"]: r["split"] for r in rows}

    before, _ = split_segments(_segments(songs_per_album=5), SplitParams(kinds=("song", "album")))
    grown = _segments(songs_per_album=6)  # every album gains a song
    after, excluded = split_segments(grown, SplitParams(kinds=("song", "album")))
    assert not excluded
    for kind in ("song", "album"):
        old, new = sides(before, kind), sides(after, kind)
        assert {t: new[t] for t in old} == old, kind  # no earlier song changed sides
        for split in ("train", "val", "test"):  # and every artist is still on every side
            assert {r["artist"] for r in after.filter(pc.equal(after.column("kind"), kind)).to_pylist()
                    if r["split"] == split} == set(ARTISTS), (kind, split)  # fmt: skip
    other_seed, _ = split_segments(grown, SplitParams(kinds=("song",), seed=1))
    assert sides(other_seed, "song") != sides(after, "song")  # the seed still decides
    small, excluded = split_segments(_segments(songs_per_album=3, albums=1), SplitParams(kinds=("song",)))
    assert not excluded and all(  # three songs: one on each side
        sorted(r["split"] for r in small.to_pylist() if r["artist"] == a and r["segment_id"].endswith("-0"))
        == ["test", "train", "val"] for a in ARTISTS)  # fmt: skip


def test_evaluation_metrics_match_values_worked_out_by_hand(tmp_path):
    """Four songs of three artists (A and B sing Pop, C Rock), eleven clips; every expected value
    below was worked out by hand from these probabilities."""
    from ml.training.evaluation import Predictions, evaluate

    clips = [  # (song, true artist, probabilities of A, B, C): the clip's guess is its largest
        ("a1", 0, [0.60, 0.30, 0.10]), ("a1", 0, [0.20, 0.70, 0.10]), ("a1", 0, [0.50, 0.10, 0.40]),
        ("a2", 0, [0.40, 0.50, 0.10]), ("a2", 0, [0.90, 0.05, 0.05]),  # a 1-1 vote: the mean breaks the tie
        ("b1", 1, [0.25, 0.05, 0.70]), ("b1", 1, [0.30, 0.40, 0.30]), ("b1", 1, [0.10, 0.30, 0.60]),
        ("c1", 2, [0.05, 0.50, 0.45]), ("c1", 2, [0.05, 0.55, 0.40]), ("c1", 2, [0.00, 0.10, 0.90]),
    ]  # fmt: skip
    pred = Predictions(probabilities=np.array([p for _, _, p in clips]), embeddings=np.eye(11)[:, :4],
                       labels=np.array([t for _, t, _ in clips]), track_ids=[s for s, _, _ in clips],
                       genres=["Pop"] * 8 + ["Rock"] * 3, classes=["A", "B", "C"])  # fmt: skip
    m = evaluate(pred, tmp_path, "hand").metrics
    approx = pytest.approx
    # clips guess A B A B A C B C B B C: 5 of 11 right; the true artist is 2nd for 5 clips, 3rd for one
    assert m["segment"]["accuracy"] == approx(5 / 11) and m["segment"]["count"] == 11
    assert m["top_k_segment"] == approx([5 / 11, 10 / 11, 1.0])
    # majority votes: a1 A, a2 A (tie, mean A), b1 C, c1 B -> 2 of 4; mean probabilities: A, A, C, C -> 3 of 4
    assert m["song_majority"]["accuracy"] == approx(0.5) and m["song_majority"]["count"] == 4
    assert m["song_mean_probability"]["accuracy"] == approx(0.75)
    assert m["top_k_song"] == approx([0.75, 1.0, 1.0])  # b1's mean puts B second
    # one-vs-all: A tp 3 of 3 guesses, 5 true; B tp 1 of 5 guesses, 3 true; C tp 1 of 3 guesses, 3 true
    expected = {"A": (5, 9 / 11, 1.0, 0.6, 0.75), "B": (3, 5 / 11, 0.2, 1 / 3, 0.25),
                "C": (3, 7 / 11, 1 / 3, 1 / 3, 1 / 3)}  # fmt: skip
    got = {r["artist"]: (r["support"], r["accuracy"], r["precision"], r["recall"], r["f1"]) for r in m["one_vs_all"]}
    assert got == {k: approx(v) for k, v in expected.items()}
    assert m["segment"]["macro_f1"] == approx((0.75 + 0.25 + 1 / 3) / 3)
    # errors: Pop clips 2, 4, 6, 8 of 8; Rock 2 of 3; of the 6 errors, A->B twice stay within Pop
    assert m["error_rate_by_genre"] == approx({"Pop": 0.5, "Rock": 2 / 3}) and m["errors"] == 6
    assert m["errors_within_genre_share"] == approx(1 / 3)
    assert m["confusion"] == [[3, 2, 0], [0, 1, 2], [0, 2, 1]]
    # the true artist's probability per artist: A (0.6 + 0.2 + 0.5 + 0.4 + 0.9) / 5, B 0.75 / 3, C 1.75 / 3
    assert m["segment"]["macro_true_probability"] == approx((0.52 + 0.25 + 1.75 / 3) / 3)
    blind = Predictions(probabilities=np.tile([0.9, 0.05, 0.05], (11, 1)), embeddings=pred.embeddings,
                        labels=pred.labels, track_ids=pred.track_ids, genres=pred.genres, classes=pred.classes)
    assert evaluate(blind, tmp_path / "blind", "blind").metrics["segment"]["macro_true_probability"] == approx(1 / 3)
