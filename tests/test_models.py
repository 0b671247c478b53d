"""The models on real (generated) voices: speaker_net (ECAPA-TDNN, AAM-softmax, chunks), the frozen
pretrained voice embedding in speaker_net and reconet, the seed models (samplecnn's crops,
resnet_gru's stages), and weights that round-trip through safetensors into a freshly built model."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from ml.models import build_model, embed, logits, needs_audio

SR = 16000
SMALL_SPEAKER_NET = {"channels": [32, 32, 32, 32, 96], "attention_channels": 16, "se_channels": 16,
                     "lin_neurons": 48, "res2net_scale": 4}  # fmt: skip
SMALL_RECONET = {"stem": 8, "growth": 8, "dense_layers": [2, 2], "wave_channels": 16, "wave_stacks": 1,
                 "wave_layers": 4}  # fmt: skip
SMALL_SAMPLECNN = {"first_filters": 8, "filters": [8, 8, 16, 16, 16], "hidden": 16, "segment_samples": 729,
                   "dropout": 0.0}  # fmt: skip
SMALL_RESNET_GRU = {"width_divisor": 8, "blocks": [1, 1, 1], "gru_units": 16, "dropout": 0.0}


def _voices(seconds: float, f0s=(110.0, 180.0, 260.0, 330.0), seed: int = 0) -> torch.Tensor:
    """One sung-like clip per fundamental: five harmonics with a slow vibrato, and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    clips = []
    for f0 in f0s:
        phase = 2 * np.pi * f0 * (t + 0.002 * np.sin(2 * np.pi * 5 * t))
        voice = sum(np.sin(h * phase + rng.uniform(0, 6)) / h for h in range(1, 6))
        clips.append(0.2 * voice + 0.01 * rng.standard_normal(len(t)))
    return torch.tensor(np.stack(clips), dtype=torch.float32)


def _log_mel(audio: torch.Tensor, n_mels: int = 64) -> torch.Tensor:
    from ml.clips.features import FeatureParams, LogMel

    return LogMel(FeatureParams(n_mels=n_mels))(audio)


def test_speaker_net_steps_with_the_angular_margin_loss():
    torch.manual_seed(0)
    model = build_model("speaker_net", 4, 64, SMALL_SPEAKER_NET)
    assert needs_audio(model) and needs_audio("speaker_net")
    audio = _voices(4.0)
    labels = torch.arange(4)
    model.train()
    scores = logits(model, _log_mel(audio), audio)
    assert scores.shape == (4, 4)
    assert scores.abs().max() <= model.classifier.scale + 1e-4  # scaled cosines
    loss = model.loss(scores, labels)
    # the margin makes the true class harder than the plain cross-entropy of the same scores
    assert float(loss.detach()) > float(F.cross_entropy(scores.detach(), labels))
    loss.backward()
    grads = [p.grad for p in model.ecapa.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert model.classifier.cosine.weight.grad is not None


def test_speaker_net_crops_chunks_only_while_training():
    torch.manual_seed(0)
    model = build_model("speaker_net", 3, 64, {**SMALL_SPEAKER_NET, "chunk_s": [2.0, 3.0]})
    audio = _voices(10.0)
    model.train()
    lengths = set()
    for _ in range(8):
        chunks = model.crop(audio)
        lengths.add(chunks.shape[1])
        assert 2 * SR <= chunks.shape[1] <= 3 * SR
        for clip, chunk in zip(audio, chunks, strict=True):  # a contiguous stretch of its own clip
            start = int(torch.nonzero(clip == chunk[0])[0])
            assert torch.equal(clip[start : start + len(chunk)], chunk)
    assert len(lengths) > 1  # a fresh length per batch
    model.eval()
    assert model.crop(audio) is audio  # evaluation: the whole clip
    with torch.inference_mode():
        first, again = embed(model, None, audio), embed(model, None, audio)
    assert first.shape == (4, 48) and torch.equal(first, again)
    assert model.classifier(first).shape == (4, 3)
    short = _voices(1.0)  # shorter than a chunk: left whole in training too
    model.train()
    assert model.crop(short) is short


def test_voice_embedding_fusion_widens_speaker_net_and_stays_frozen():
    torch.manual_seed(0)
    plain = build_model("speaker_net", 3, 64, SMALL_SPEAKER_NET)
    fused = build_model("speaker_net", 3, 64, {**SMALL_SPEAKER_NET, "fuse_voice_embedding": True})
    assert plain.embedding_size == 48 and fused.embedding_size == 48 + 256
    audio = _voices(3.0, f0s=(110.0, 260.0))
    fused.eval()
    with torch.inference_mode():
        e = fused.embed(None, audio)
    assert e.shape == (2, 304)
    assert torch.allclose(e[:, 48:].norm(dim=1), torch.ones(2), atol=1e-4)  # the d-vector, unit length
    fused.train()
    assert not fused.voice.training and not fused.voice.encoder.training  # frozen: always in eval mode
    fused.loss(fused(None, audio), torch.tensor([0, 1])).backward()
    assert all(p.grad is None for p in fused.voice.parameters())
    assert fused.classifier.cosine.weight.grad is not None
    assert not any(k.startswith("voice.") for k in fused.state_dict())


def test_reconet_takes_the_voice_embedding_as_a_third_branch():
    torch.manual_seed(0)
    plain = build_model("reconet", 3, 64, SMALL_RECONET)
    torch.manual_seed(0)
    default = build_model("reconet", 3, 64, {**SMALL_RECONET, "voice_embedding": False})
    assert plain.state_dict().keys() == default.state_dict().keys()  # off: today's model
    assert all(torch.equal(plain.state_dict()[k], default.state_dict()[k]) for k in plain.state_dict())
    with_voice = build_model("reconet", 3, 64, {**SMALL_RECONET, "voice_embedding": True})
    assert with_voice.embedding_size == plain.embedding_size + 256
    audio = _voices(3.0, f0s=(110.0, 260.0))
    log_mel = _log_mel(audio)
    with_voice.train()
    scores = logits(with_voice, log_mel, audio)
    assert scores.shape == (2, 3)
    F.cross_entropy(scores, torch.tensor([0, 2])).backward()
    assert all(p.grad is None for p in with_voice.voice.parameters())
    with_voice.eval()
    with torch.inference_mode():
        assert embed(with_voice, log_mel, audio).shape == (2, with_voice.embedding_size)
    assert with_voice.state_dict().keys() == plain.state_dict().keys()  # the frozen branch is not saved


def test_samplecnn_crops_one_segment_in_training_and_averages_crops_covering_the_clip():
    torch.manual_seed(0)
    model = build_model("samplecnn", 3, 64, {})  # the seed's: 3^10 samples, 9 blocks down to one step
    assert needs_audio(model) and needs_audio("samplecnn") and model.embedding_size == 512
    audio = _voices(10.0, f0s=(110.0, 260.0))
    model.train()
    crops = model.segments(audio)
    assert crops.shape == (2, 1, 59049)
    for clip, crop in zip(audio, crops[:, 0], strict=True):  # a contiguous stretch of its own clip
        start = int(torch.nonzero(clip == crop[0])[0])
        assert torch.equal(clip[start : start + 59049], crop)
    model.eval()
    crops = model.segments(audio)
    assert crops.shape == (2, 3, 59049)  # 160,000 samples: 3 overlapping crops, first and last at the ends
    assert torch.equal(crops[:, 0], audio[:, :59049]) and torch.equal(crops[:, 2], audio[:, -59049:])
    with torch.inference_mode():
        clip_scores = logits(model, None, audio)
        crop_scores = torch.stack([model(None, crops[:, i]) for i in range(3)], 1)
    assert clip_scores.shape == (2, 3)
    assert torch.allclose(clip_scores, crop_scores.mean(1), atol=1e-5)  # the clip: the mean of its crops
    assert model.segments(audio[:, :1000]).shape == (2, 1, 59049)  # shorter than a segment: padded
    with pytest.raises(ValueError, match="3\\^\\(blocks \\+ 1\\)"):
        build_model("samplecnn", 3, 64, {"segment_samples": 48000})


def test_resnet_gru_keeps_resnet50s_first_three_stages_and_runs_a_gru_over_time():
    model = build_model("resnet_gru", 4, 128, {})
    stages = [model.layer1, model.layer2, model.layer3]
    assert [len(s) for s in stages] == [3, 4, 6]  # ResNet-50's bottleneck blocks
    assert [s[-1].conv3.out_channels for s in stages] == [256, 512, 1024]
    assert model.stem[0].in_channels == 1 and model.gru.num_layers == 2
    steps = []
    model.gru.register_forward_hook(lambda _module, inputs, _output: steps.append(inputs[0].shape))
    model.eval()
    with torch.inference_mode():
        scores = model(torch.randn(2, 128, 313))  # a 10 s clip's log-mel
    assert scores.shape == (2, 4) and steps == [(2, 20, 1024)]  # 313 frames / 16 → 20 steps of 1024 channels
    narrow = build_model("resnet_gru", 4, 128, {"width_divisor": 4})
    assert narrow.layer3[-1].conv3.out_channels == 256
    with pytest.raises(ValueError, match="width_divisor"):
        build_model("resnet_gru", 4, 128, {"width_divisor": 3})


@pytest.mark.parametrize("name, options", [("samplecnn", SMALL_SAMPLECNN), ("resnet_gru", SMALL_RESNET_GRU)])
def test_the_seed_models_loss_goes_down_on_a_tiny_batch(name, options):
    torch.manual_seed(0)
    model = build_model(name, 4, 64, options)
    audio = _voices(2.0)
    log_mel, labels = _log_mel(audio), torch.arange(4)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    losses = []
    for _ in range(15):
        optimiser.zero_grad()
        loss = F.cross_entropy(logits(model, log_mel, audio), labels)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses
    model.eval()
    with torch.inference_mode():
        assert embed(model, log_mel, audio).shape == (4, model.embedding_size)


@pytest.mark.parametrize("name, options", [
    ("samplecnn", SMALL_SAMPLECNN),
    ("resnet_gru", SMALL_RESNET_GRU),
    ("speaker_net", SMALL_SPEAKER_NET),
    ("speaker_net", {**SMALL_SPEAKER_NET, "fuse_voice_embedding": True}),
    ("reconet", {**SMALL_RECONET, "voice_embedding": True}),
])  # fmt: skip
def test_weights_round_trip_through_safetensors_into_a_fresh_model(tmp_path, name, options):
    torch.manual_seed(0)
    model = build_model(name, 3, 64, options)
    audio = _voices(3.0, f0s=(110.0, 260.0))
    log_mel = _log_mel(audio)
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(2):  # move the weights and batch-norm statistics off their initial values
        optimiser.zero_grad()
        F.cross_entropy(logits(model, log_mel, audio), torch.tensor([0, 1])).backward()
        optimiser.step()
    path = tmp_path / "model.safetensors"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path))
    torch.manual_seed(1)  # a different initialisation
    fresh = build_model(name, 3, 64, options)
    fresh.load_state_dict(load_file(str(path)))  # strict
    model.eval()
    fresh.eval()
    with torch.inference_mode():
        assert torch.allclose(logits(model, log_mel, audio), logits(fresh, log_mel, audio), atol=1e-5)


# every model of train.model, as the small demo library trains it: (name, train overrides, its models section)
DEMO_MODELS = [
    ("speaker_net", {"epochs": 20, "batch_size": 8, "augment": True}, {}),  # remix and the rest of the chain
    ("crnn", {"epochs": 20, "batch_size": 8}, {}),
    ("reconet", {"epochs": 20, "batch_size": 8}, {}),
    # not the seed models samplecnn and resnet_gru: trained from scratch they stay at chance, here (samplecnn
    # narrowed, 12 epochs: song accuracy 0.333 of 3 singers) and on real voices (README); their own tests
    # check that they train, save and load
    ("voice_embedding", {}, {}),  # the default: ECAPA-TDNN
    ("voice_embedding", {}, {"encoder": "ge2e"}),
    ("voice_fusion", {}, {}),
    ("classical", {}, {}),
]

# The CRNN's accuracy on the demo's few held-out clips is a seed lottery in either precision: on the
# small demo with the project's params (8 clips of 4 songs), seeds 0 / 1 / 2, segment accuracy
# 0.75 / 0.5 / 0.5 in float32 and 0.5 / 0.625 / 0.75 in bfloat16; here (6 clips of 3 songs, bfloat16)
# 0.333. It is held instead to the probability it gives the true singer, averaged per singer
# (evaluation.macro_true_probability), which a model blind to its input cannot lift above chance:
# measured 0.52 / 0.42 / 0.45 in float32, 0.47 / 0.44 / 0.53 in bfloat16 there, 0.464 here; chance 0.333.
HELD_TO_PROBABILITY = {"crnn"}


@pytest.mark.slow
@pytest.mark.timeout(3600)  # separating the demo's songs and training seven models on two shared cores
def test_every_model_trained_on_the_small_demo_library_names_the_held_out_songs(small_library, project_dirs):
    """The demo library through the pipeline up to its splits, then each model trained on the song
    split and evaluated on its held-out songs: each must name them well above chance (a broken
    model sits at 1 / the number of singers)."""
    import os
    import subprocess
    import sys

    import pyarrow as pa

    from ml import config
    from ml.tables import read_table
    from ml.training.model_run import evaluate_and_log, train_and_log

    library, _ = small_library
    for stage in ("catalogue", "vocals", "segments", "features", "splits"):
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "materialize", stage, "--library", str(library)],
                              cwd=config.project_root(), capture_output=True, text=True, timeout=1800)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    uri = os.environ["MLFLOW_TRACKING_URI"]
    tables = config.paths(config.load_params(), library).data / "tables"
    releases = lambda asset: pa.concat_tables(read_table(p) for p in sorted((tables / asset).glob("*.parquet")))  # noqa: E731
    segments, features, splits = releases("segments"), releases("features"), read_table(tables / "splits.parquet")
    for name, train, options in DEMO_MODELS:
        params = config.load_params()  # the project's params.yaml: each model's defaults
        params["train"].update(model=name, **train)
        params["models"][name] = {**params["models"].get(name, {}), **options}
        paths = config.paths(params, library)
        out = train_and_log(params, paths, "song", splits, segments, features, uri, "reconet-test", register=False)
        assert out["model"] == name
        if "epochs" in train:
            assert out["epochs_run"] >= 5
        report = evaluate_and_log(params, paths, "song", splits, segments, features, uri)
        m = report.metrics
        chance = 1 / len(out["classes"])
        print(f"{name} {options or ''} on the small demo: {out.get('seconds', 0):.0f} s, segment accuracy "
              f"{m['segment']['accuracy']:.3f} (true-singer probability {m['segment']['macro_true_probability']:.3f}), "
              f"song accuracy {m['song_mean_probability']['accuracy']:.3f} "
              f"({m['song_mean_probability']['count']} songs, chance {chance:.3f})")  # fmt: skip
        assert m["song_mean_probability"]["count"] >= len(out["classes"])  # every artist has a held-out song
        if name in HELD_TO_PROBABILITY:
            assert m["segment"]["macro_true_probability"] >= 1.2 * chance, (name, options)
            continue
        assert m["segment"]["accuracy"] >= 2 * chance, (name, options)
        assert m["song_mean_probability"]["accuracy"] >= 2 * chance, (name, options)
