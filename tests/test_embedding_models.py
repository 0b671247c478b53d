"""The embedding models (voice_embedding, classical, voice_fusion) through the same training and
evaluation path as the networks; open-set figures; enrolment of a new singer without retraining,
and "unknown" for a voice never enrolled."""

import json

import numpy as np
import pyarrow as pa
import pytest

from ml import config
from ml.identification import open_set
from ml.training.splits import SplitParams, split_segments

SR = 16000
CLIP_S = 3
# each synthetic "voice": its pitch, its vibrato rate and the tilt of its harmonics
VOICES = {"Ada": (110.0, 4.5, 0.9), "Bo": (165.0, 5.5, 1.6), "Cy": (220.0, 6.0, 0.6), "Di": (290.0, 5.0, 1.2),
          "Ed": (380.0, 6.5, 2.0), "Fay": (480.0, 4.0, 0.8), "Gus": (75.0, 8.0, 0.3)}  # fmt: skip


def _voice(f0: float, vibrato_hz: float, tilt: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(CLIP_S * SR) / SR
    pitch = f0 * (1 + 0.02 * rng.standard_normal()) * (1 + 0.01 * np.sin(2 * np.pi * vibrato_hz * t))
    phase = 2 * np.pi * np.cumsum(pitch) / SR
    voice = sum(np.sin(h * phase + rng.uniform(0, 6)) / h**tilt for h in range(1, 12))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * t + rng.uniform(0, 6)) ** 2
    return 0.2 * voice * envelope / np.abs(voice).max() + 0.003 * rng.standard_normal(len(t))


def _project(tmp_path, artists, songs_per_album=2, clips_per_song=3, seed=0):
    rng = np.random.default_rng(seed)
    rows, clips = [], []
    for artist in artists:
        for album in range(2):
            for song in range(songs_per_album):
                track = f"{artist}-{album}-{song}"
                for c in range(clips_per_song):
                    rows.append({"segment_id": f"{track}-{c}", "track_id": track, "artist": artist,
                                 "album": f"{artist} {album}", "over_genre": "Pop"})  # fmt: skip
                    clips.append(_voice(*VOICES[artist], rng))
    packed = np.round(np.stack(clips) * 32767).astype(np.int16)
    data = tmp_path / "data"
    (data / "segments").mkdir(parents=True, exist_ok=True)
    np.save(data / "segments" / "v.npy", packed)
    n = len(rows)
    segments = pa.Table.from_pylist(rows)
    segments = segments.append_column("audio_file", pa.array(["segments/v.npy"] * n))
    segments = segments.append_column("accompaniment_file", pa.array(["segments/v.npy"] * n))
    segments = segments.append_column("audio_row", pa.array(range(n)))
    features = pa.table({"segment_id": segments.column("segment_id"), "feature_file": ["unused"] * n,
                         "feature_row": pa.array(range(n), pa.int32())})  # fmt: skip
    return segments, features, packed


def _params(model: str) -> dict:
    params = config.load_params()
    params["train"] = {**params["train"], "model": model}
    params["open_set"] = {"holdout_artists": 2, "far": 0.05, "seed": 0}
    return params


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("RECONET_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RECONET_REPORTS_DIR", str(tmp_path / "reports"))
    return tmp_path


@pytest.mark.parametrize("model_name", ["voice_embedding", "voice_embedding:ge2e", "classical", "voice_fusion"])
def test_embedding_model_trains_registers_and_names_held_out_songs(env, model_name):
    from mlflow.tracking import MlflowClient

    from ml.training.model_run import evaluate_and_log, train_and_log

    artists = list(VOICES)[:6]
    segments, features, _ = _project(env, artists)
    model_name, _, encoder = model_name.partition(":")
    params = _params(model_name)
    if encoder:
        params["models"][model_name] = {**params["models"][model_name], "encoder": encoder}
    paths = config.paths(params)
    splits, _ = split_segments(segments, SplitParams(kinds=("song",), min_songs=3))
    uri = f"sqlite:///{env / 'mlflow.db'}"
    out = train_and_log(params, paths, "song", splits, segments, features, uri, "t", register=True)
    assert out["model"] == model_name and out["version"] == "1" and out["classes"] == sorted(artists)
    run = MlflowClient(uri).get_run(out["run_id"])
    assert run.data.tags["model"] == model_name and "val_accuracy" in run.data.metrics
    report = evaluate_and_log(params, paths, "song", splits, segments, features, uri,
                              registered_model="reconet-vocalist")  # fmt: skip
    m = report.metrics
    chance = 1 / len(artists)
    assert m["song_mean_probability"]["accuracy"] >= 0.8 > 3 * chance  # a broken model sits near 1/6
    assert m["segment"]["count"] == sum(s == "test" for s in splits.column("split").to_pylist())
    figures = m["open_set"]
    assert len(figures["held_out_artists"]) == 2 and not figures["encoder_saw_held_out_artists"]
    assert 0 <= figures["eer"] <= 0.5 and figures["unknown_songs"] >= 2
    assert m["champion"]["promoted"]
    again = train_and_log(params, paths, "song", splits, segments, features, uri, "t", register=True)
    assert again["run_id"] == out["run_id"] and again["version"] == "1"  # finished: not refitted or registered


def test_the_champion_rule_scores_candidate_and_champion_on_the_candidates_validation_songs(env):
    """A candidate is compared with the champion on the same clips, its own validation songs, never on
    test figures measured on two test sets; both scores are recorded on its version. Singers only the
    champion knows are left out of the comparison. A run recorded again after a crash before its
    `model.json` keeps its version; a champion whose files are gone cannot be scored: it is replaced."""
    import shutil

    from mlflow.tracking import MlflowClient
    from sklearn.metrics import f1_score

    from ml.identification.bundle import load_bundle
    from ml.training.model_run import evaluate_and_log, train_and_log
    from ml.training.tracking import current_champion

    artists = list(VOICES)[:6]
    segments, features, packed = _project(env, artists)
    params = _params("voice_embedding")
    params["models"]["voice_embedding"] = {**params["models"]["voice_embedding"], "encoder": "ge2e"}
    paths = config.paths(params)
    splits, _ = split_segments(segments, SplitParams(kinds=("song",), min_songs=3))
    uri, name = f"sqlite:///{env / 'mlflow.db'}", "reconet-vocalist"
    client = MlflowClient(uri)

    def train(data: pa.Table) -> dict:
        return train_and_log(params, paths, "song", splits, data, features, uri, "t", register=True)

    def evaluate() -> dict:
        report = evaluate_and_log(params, paths, "song", splits, segments, features, uri, registered_model=name)
        return report.metrics["champion"]

    assert train(segments)["version"] == "1"
    first = evaluate()
    assert first["promoted"] and first["champion_val_macro_f1"] is None and first["note"] == "no champion yet"
    # the candidate knows five of the six singers, each by the next one's name (a wrongly tagged library)
    five = artists[:5]
    wrong = {a: five[(i + 1) % 5] for i, a in enumerate(five)}
    mislabelled = pa.Table.from_pylist([{**r, "artist": wrong[r["artist"]]} for r in segments.to_pylist()
                                        if r["artist"] in wrong], schema=segments.schema)  # fmt: skip
    second = train(mislabelled)
    assert second["version"] == "2" and second["classes"] == sorted(five)
    decision = evaluate()

    val_ids = {r["segment_id"] for r in splits.to_pylist() if r["split"] == "val"}
    val = [r for r in segments.to_pylist() if r["segment_id"] in val_ids and r["artist"] in five]
    clips = packed[[r["audio_row"] for r in val]].astype(np.float32) / 32767
    songs = {}
    for i, r in enumerate(val):
        songs.setdefault(r["track_id"], []).append(i)
    truth = [val[rows[0]]["artist"] for rows in songs.values()]

    def val_macro_f1(version: str) -> float:  # each model's songs named among the five singers both know
        identifier = load_bundle(f"models:/{name}/{version}", uri).identifier
        probabilities = identifier.classify(clips)[0][:, [identifier.classes.index(a) for a in sorted(five)]]
        named = [sorted(five)[int(probabilities[rows].mean(axis=0).argmax())] for rows in songs.values()]
        return float(f1_score(truth, named, labels=sorted(five), average="macro", zero_division=0))

    assert decision["candidate_val_macro_f1"] == pytest.approx(val_macro_f1("2"), abs=1e-6)
    assert decision["champion_val_macro_f1"] == pytest.approx(val_macro_f1("1"), abs=1e-6)
    assert decision["champion_val_macro_f1"] >= 0.8 > 0.2 > decision["candidate_val_macro_f1"]
    assert decision["val_clips"] == len(val) and decision["val_songs"] == len(songs)
    assert decision["artists"] == sorted(five) and "the 5 singers both know" in decision["note"]
    assert not decision["promoted"] and decision["compared_with"] == "1" and current_champion(uri, name) == "1"
    tags = client.get_model_version(name, "2").tags
    assert float(tags["champion_rule_candidate_val_macro_f1"]) == pytest.approx(decision["candidate_val_macro_f1"])
    assert float(tags["champion_rule_champion_val_macro_f1"]) == pytest.approx(decision["champion_val_macro_f1"])
    assert tags["champion_rule_compared_with"] == "1" and tags["champion_rule_promoted"] == "false"

    (paths.data / second["dir"] / "model.json").unlink()  # a crash after registering, before the marker
    assert train(mislabelled)["version"] == "2"
    assert sorted(str(v.version) for v in client.search_model_versions(f"name='{name}'")) == ["1", "2"]

    shutil.rmtree(env / "mlartifacts")  # the champion's registered files are gone: it cannot be scored
    decision = evaluate()
    assert decision["promoted"] and decision["champion_val_macro_f1"] is None
    assert "could not be loaded" in decision["note"] and current_champion(uri, name) == "2"


def test_enrolling_a_new_singer_names_their_other_songs_and_an_unenrolled_voice_is_unknown(env):
    from ml.identification.enrolment import enrol_clips, identify_clips
    from ml.training.model_run import load_trained, model_dir, train_and_log

    known = list(VOICES)[:5]
    segments, features, _ = _project(env, known)
    params = _params("voice_fusion")
    paths = config.paths(params)
    splits, _ = split_segments(segments, SplitParams(kinds=("song",), min_songs=3))
    uri = f"sqlite:///{env / 'mlflow.db'}"
    train_and_log(params, paths, "song", splits, segments, features, uri, "t", register=False)
    _, info = load_trained(paths, "song")
    run_dir = model_dir(paths, info)
    assert info["open_set"]["threshold"] is not None

    rng = np.random.default_rng(7)
    song = lambda artist, n=3: np.stack([_voice(*VOICES[artist], rng) for _ in range(n)]).astype(np.float32)  # noqa: E731
    # before enrolment Fay is nobody the model knows; Ada is
    assert identify_clips(info, run_dir, song("Ada"), "cpu")["singer"] == "Ada"
    assert identify_clips(info, run_dir, song("Fay"), "cpu")["singer"] == "unknown"
    info = enrol_clips(info, run_dir, "Fay", song("Fay"), "cpu", sources=["fay.flac"])
    assert [e["artist"] for e in info["enrolled"]] == ["Fay"]
    assert json.loads((run_dir / "model.json").read_text())["enrolled"][0]["clips"] == 3
    for _ in range(3):  # Fay's other songs
        assert identify_clips(info, run_dir, song("Fay"), "cpu")["singer"] == "Fay"
    assert identify_clips(info, run_dir, song("Gus"), "cpu")["singer"] == "unknown"  # never enrolled
    assert identify_clips(info, run_dir, song("Bo"), "cpu")["singer"] == "Bo"


def test_open_set_figures_against_hand_computed_values():
    genuine, impostor = np.array([0.9, 0.8, 0.7, 0.4]), np.array([0.1, 0.3, 0.5, 0.2])
    eer, _ = open_set.equal_error_rate(genuine, impostor)
    assert eer == pytest.approx(0.25)  # at 0.5: 1 of 4 impostors accepted, 1 of 4 genuine rejected
    threshold = open_set.threshold_at_far(np.linspace(0, 1, 20), 0.05)
    assert threshold > 0.9473 and (np.linspace(0, 1, 20) >= threshold).mean() <= 0.05
    assert open_set.held_out_artists(["a", "b", "c"], 2, 0) == []  # too few left to tell apart
    chosen = open_set.held_out_artists(list("abcdefg"), 2, 0)
    assert len(chosen) == 2 and set(chosen) <= set("abcdefg")
    assert open_set.held_out_artists(list("abcdefgh"), 2, 0) != []


def test_enrol_leaves_out_bad_recordings_records_them_and_enrols_from_the_rest(env):
    """`enrol` end to end (real separation and clip cutting): a corrupt file and a missing path are
    recorded in the `rejected` ledger and the singer is enrolled from the one good demo song."""
    from ml.catalogue.demo_library import make_song_file, plan_library
    from ml.catalogue.rejected import load_rejected
    from ml.identification.enrolment import enrol
    from ml.training.model_run import load_trained, train_and_log

    segments, features, _ = _project(env, list(VOICES)[:4])
    params = _params("voice_embedding")
    paths = config.paths(params)
    splits, _ = split_segments(segments, SplitParams(kinds=("song",), min_songs=3))
    uri = f"sqlite:///{env / 'mlflow.db'}"
    train_and_log(params, paths, "song", splits, segments, features, uri, "t", register=False)
    spec = next(s for s in plan_library("small") if s.case == "song" and s.voices and s.fmt == "mp3")
    good = env / "in" / make_song_file(spec, str(env / "in")).path
    corrupt = env / "in" / "broken.mp3"
    corrupt.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 40)
    missing = env / "in" / "gone.flac"

    info = enrol(params, paths, "song", "Demo Singer", [corrupt, good, missing], uri, "t", registered_model=None)
    entry = info["enrolled"][-1]
    assert entry["artist"] == "Demo Singer" and entry["sources"] == [good.name] and entry["clips"] >= 2
    _, saved = load_trained(paths, "song")
    assert saved["enrolled"][-1]["rejected"] == [str(corrupt), str(missing)]
    rejected = load_rejected(paths.rejected).to_pylist()
    assert {(r["path"], r["stage"]) for r in rejected} == {(str(corrupt), "enrol"), (str(missing), "enrol")}
    assert next(r for r in rejected if r["path"] == str(missing))["reason"] == "missing"
    with pytest.raises(ValueError, match="none of the 2 recording"):
        enrol(params, paths, "song", "Nobody", [corrupt, missing], uri, "t", registered_model=None)


def test_the_ecapa_encoder_loads_only_the_checkpoint_it_names(tmp_path):
    """The ECAPA-TDNN weights are checked against their SHA-256 before loading; the encoder's
    front end is speechbrain's (sentence mean normalisation) and its embeddings are unit vectors
    that tell two different voices apart more than two takes of one."""
    import torch
    from speechbrain.processing.features import InputNormalization

    from ml.models import ecapa_encoder

    fake = tmp_path / "embedding_model.ckpt"
    fake.write_bytes(b"not the checkpoint")
    with pytest.raises(ValueError, match="SHA-256"):
        ecapa_encoder._verified(str(fake), 18, 0)
    encoder = ecapa_encoder.EcapaEncoder()
    rng = np.random.default_rng(3)
    clips = torch.from_numpy(np.stack([_voice(*VOICES[a], rng) for a in ("Ada", "Ada", "Ed")]).astype(np.float32))
    feats = encoder.fbank(clips)
    reference = InputNormalization(norm_type="sentence", std_norm=False).eval()(feats, torch.ones(3))
    assert torch.allclose(reference, feats - feats.mean(dim=1, keepdim=True), atol=1e-5)
    emb = encoder.embed(clips)
    assert emb.shape == (3, 192) and torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert float(emb[0] @ emb[1]) > float(emb[0] @ emb[2])
    # the contiguous convolutions (ecapa_encoder._contiguous_conv1d) compute what speechbrain's own do
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

    plain = ECAPA_TDNN(80, channels=[1024, 1024, 1024, 1024, 3072], kernel_sizes=[5, 3, 3, 3, 1],
                       dilations=[1, 2, 3, 4, 1], attention_channels=128, lin_neurons=192).eval()  # fmt: skip
    plain.load_state_dict(torch.load(ecapa_encoder.weights_path(), map_location="cpu", weights_only=True))
    with torch.no_grad():
        expected = plain(feats - feats.mean(dim=1, keepdim=True), torch.ones(3)).squeeze(1)
    assert torch.allclose(emb, expected / expected.norm(dim=1, keepdim=True), atol=1e-5)


def test_a_network_carries_references_and_a_calibrated_threshold_and_identify_applies_them(env):
    """A network (speaker_net, raw clips) gets the open-set rule an embedding model has: its
    penultimate-layer embeddings of the training and validation clips, standardised by the
    training clips' statistics, make each singer's reference, and the threshold is calibrated on
    the validation songs. The test recomputes the references from the saved weights, and checks
    that identification answers by them: the best reference when it reaches the threshold,
    "unknown singer" (None) when not, clip by clip the same."""
    import torch

    from ml.clips.features import FeatureParams, LogMel
    from ml.clips.loader import SegmentDataset
    from ml.device import precision_from_params
    from ml.identification.identify import Identifier, RecordingClips
    from ml.training.embedding_run import load_normaliser, load_references
    from ml.training.evaluation import predict
    from ml.training.model_run import load_trained, model_dir, split_rows_of, train_and_log, with_features

    artists = list(VOICES)[:6]
    segments, features, packed = _project(env, artists)
    params = _params("speaker_net")
    params["train"].update(epochs=2, batch_size=8, augment=False, warmup_epochs=1)
    paths = config.paths(params)
    splits, _ = split_segments(segments, SplitParams(kinds=("song",), min_songs=3))
    out = train_and_log(params, paths, "song", splits, segments, features, f"sqlite:///{env / 'm.db'}", "t",
                        register=False)  # fmt: skip
    folder = model_dir(paths, out)
    info = json.loads((folder / "model.json").read_text())
    assert isinstance(info["open_set"]["threshold"], float) and len(info["open_set"]["calibrated_on"]) == 2

    table = with_features(segments, features)
    rows = {w: split_rows_of(splits, table, "song", w) for w in ("train", "val")}
    model, _ = load_trained(paths, "song", info)
    log_mel = LogMel(FeatureParams.from_params(params))
    precision = precision_from_params(params, torch.device("cpu"))  # the run's: bfloat16 where the CPU has it
    sets = {w: predict(model, SegmentDataset(r, paths.data, info["classes"], source="audio"), torch.device("cpu"),
                       log_mel=log_mel, precision=precision) for w, r in rows.items()}  # fmt: skip
    normaliser = open_set.Normaliser.fit(sets["train"].embeddings)
    labels = [p.classes[i] for p in sets.values() for i in p.labels]
    expected = open_set.references(normaliser(np.concatenate([p.embeddings for p in sets.values()])), labels)
    saved = load_references(folder / "references.safetensors")
    assert sorted(saved) == sorted(info["classes"])
    for singer, vector in expected.items():
        assert np.allclose(saved[singer], vector, atol=1e-4), singer
    assert np.allclose(load_normaliser(folder / "references.safetensors").mean, normaliser.mean, atol=1e-5)

    identifier = Identifier.from_folder(folder, info, "cpu", torch.float32)
    test_rows = split_rows_of(splits, table, "song", "test")
    track = test_rows.column("track_id")[0].as_py()
    picked = [i for i, t in enumerate(segments.column("track_id").to_pylist()) if t == track]
    spans = [(3.0 * i, 3.0 * i + 3) for i in range(len(picked))]
    clips = RecordingClips(packed[picked].astype(np.float32) / 32767, spans, 3.0 * len(picked), 0.0)
    result = identifier.identify(clips, top_k=3)
    threshold = info["open_set"]["threshold"]
    assert result["threshold"] == threshold and len(result["references"]) == 3
    best = result["references"][0]
    assert result["singer"] == (best["singer"] if best["score"] >= threshold else None)
    assert result["unknown"] == (best["score"] < threshold)
    for clip in result["timeline"]:
        assert (clip["singer"] is None) == (clip["confidence"] < threshold)
