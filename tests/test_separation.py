"""Vocal isolation: the PyTorch Spleeter port, its streaming, the stem cache and the vocals rules."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
import torch

from ml import config
from ml.device import pick_device
from ml.separation.separation import SeparationInput, SeparationParams, assess, separate_with_torch
from ml.separation.stems import StemCache
from ml.separation.unet import (
    CHUNK_SAMPLES,
    FRAME_LENGTH,
    SpleeterSeparator,
    load_spleeter,
    separate_array,
    subpixel_weight,
)
from tests.conftest import make_tone

CPU = torch.device("cpu")
SR = 44100


@pytest.fixture(scope="module")
def weights() -> Path:
    path = config.paths().spleeter_weights
    assert path.is_file(), f"{path} is missing: `make setup` converts the official weights"
    return path


@pytest.fixture(scope="module")
def separator(weights) -> SpleeterSeparator:
    return SpleeterSeparator(load_spleeter(weights, CPU), CPU, batch_chunks=4)


def _music(seconds: float, seed: int = 0) -> np.ndarray:
    """A stereo test signal: a chord, a melody and noise bursts."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    chord = sum(0.1 * np.sin(2 * np.pi * f * t) for f in (110.0, 138.6, 164.8))
    melody = 0.2 * np.sin(2 * np.pi * (440 + 60 * np.sin(2 * np.pi * 0.5 * t)) * t) * (np.sin(2 * np.pi * t) > 0)
    bursts = 0.05 * rng.standard_normal(len(t)) * (np.sin(2 * np.pi * 2 * t) > 0.9)
    mono = chord + melody + bursts
    return np.stack([mono, 0.8 * mono + 0.02 * rng.standard_normal(len(t))], axis=1).astype(np.float32)


def test_streaming_in_any_blocks_and_batches_gives_the_same_stems(weights, separator):
    audio = _music(26.0)  # three 512-frame chunks
    vocals, accompaniment = separate_array(separator, audio, block=1 << 18)
    small = SpleeterSeparator(load_spleeter(weights, CPU), CPU, batch_chunks=1)
    vocals_2, accompaniment_2 = separate_array(small, audio, block=12345)
    assert vocals.shape == accompaniment.shape == audio.shape
    np.testing.assert_allclose(vocals_2, vocals, atol=1e-5)
    np.testing.assert_allclose(accompaniment_2, accompaniment, atol=1e-5)
    # the masks sum to one below 11 kHz (the network's 1024 bins): the stems add up to the mix there
    low = lambda x: np.abs(np.fft.rfft(x[:, 0]))[: int(10000 * len(x) / SR)] ** 2  # noqa: E731
    residual = audio - vocals - accompaniment
    assert 10 * np.log10(low(audio).sum() / low(residual).sum()) > 40


@pytest.mark.parametrize("n", [0, 1, 5000, CHUNK_SAMPLES - FRAME_LENGTH, CHUNK_SAMPLES, CHUNK_SAMPLES + 1])
def test_stems_are_exactly_as_long_as_the_input(separator, n):
    audio = _music(n / SR + 0.001)[:n]
    vocals, accompaniment = separate_array(separator, audio)
    assert vocals.shape == accompaniment.shape == (n, 2)


def test_tracks_batched_together_match_tracks_alone(separator):
    a, b = _music(15.0, seed=1), _music(4.0, seed=2)
    blocks = lambda x: (x[i : i + 50000] for i in range(0, len(x), 50000))  # noqa: E731
    together: dict[str, list] = {"a": [], "b": []}
    for block in separator.separate([("a", blocks(a)), ("b", blocks(b))]):
        together[block.key].append(block.vocals)
    for key, audio in (("a", a), ("b", b)):
        alone, _ = separate_array(separator, audio)
        np.testing.assert_allclose(np.concatenate(together[key]), alone, atol=1e-5)


def test_silence_separates_into_silence(separator):
    vocals, accompaniment = separate_array(separator, np.zeros((3 * SR, 2), np.float32))
    assert np.abs(vocals).max() < 1e-6 and np.abs(accompaniment).max() < 1e-6


def test_the_sung_phrases_land_in_the_vocal_stem(separator, small_library):
    library, manifest = small_library
    song = next(f for f in manifest["files"] if f["case"] == "song" and f["path"].endswith(".flac"))
    from ml.audio import load_audio

    audio = load_audio(library / song["path"], SR)
    vocals, accompaniment = separate_array(separator, audio)
    sung = np.zeros(len(audio), bool)
    for start, end in song["vocal_regions"]:
        sung[int(start * SR) : int(end * SR)] = True
    energy = lambda x, mask: float(np.mean(x[mask] ** 2))  # noqa: E731
    # the vocal stem is loud where the voice sings and quiet in the gaps; the backing stays in the other stem
    assert 10 * np.log10(energy(vocals, sung) / energy(vocals, ~sung)) > 15
    assert energy(accompaniment, ~sung) > 10 * energy(vocals, ~sung)


@pytest.mark.parametrize(("cin", "cout", "h", "w"), [(3, 2, 5, 7), (8, 1, 6, 4), (1, 4, 1, 1)])
def test_the_subpixel_decoder_equals_the_transposed_convolution(cin, cout, h, w):
    """The speed-up of the decoder changes no sum: a 5×5 stride-2 transposed convolution with TF's
    'same' crop equals a 3×3 convolution with 4× the channels and a pixel shuffle."""
    gen = torch.Generator().manual_seed(cin * 100 + cout)
    weight, bias = torch.randn(cin, cout, 5, 5, generator=gen), torch.randn(cout, generator=gen)
    x = torch.randn(2, cin, h, w, generator=gen)
    expected = torch.nn.functional.conv_transpose2d(x, weight, bias, stride=2)[:, :, 1 : 2 * h + 1, 1 : 2 * w + 1]
    conv = torch.nn.functional.conv2d(x, subpixel_weight(weight), bias.repeat_interleave(4), padding=1)
    got = torch.nn.functional.pixel_shuffle(conv, 2)
    assert got.shape == expected.shape == (2, cout, 2 * h, 2 * w)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_new_weights_replace_the_derived_decoder_weights(weights):
    """The derived sub-pixel weights follow the module's weights (load_state_dict, .to())."""
    model = load_spleeter(weights, CPU)
    x = torch.rand(1, 2, 64, 128)
    with torch.inference_mode():
        before = model.vocals(x)
        model.vocals.load_state_dict(model.accompaniment.state_dict())
        assert torch.equal(model.vocals(x), model.accompaniment(x))
        assert not torch.allclose(before, model.vocals(x))


def test_a_weight_file_of_another_model_is_refused(tmp_path):
    from safetensors.torch import save_file

    bogus = tmp_path / "other.safetensors"
    save_file({"conv.weight": torch.zeros(3, 3)}, str(bogus))
    with pytest.raises(ValueError, match="other.safetensors: not a Spleeter 2-stems weight file"):
        load_spleeter(bogus, CPU)
    with pytest.raises(FileNotFoundError, match="make setup"):
        load_spleeter(tmp_path / "missing.safetensors", CPU)


def test_device_choice(monkeypatch):
    monkeypatch.delenv("RECONET_DEVICE", raising=False)
    assert pick_device("cpu") == CPU
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("RECONET_DEVICE", "cpu")
    assert pick_device("cuda") == CPU  # the environment wins
    monkeypatch.setenv("RECONET_DEVICE", "tpu-please")
    with pytest.raises(ValueError, match="unknown device"):
        pick_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("RECONET_DEVICE", "cuda")
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            pick_device()


def test_rules_after_separation(weights, small_library, tmp_path):
    """A sung track keeps its vocals; silence, an instrumental and an undecodable file are rejected."""
    library, manifest = small_library
    song = next(f for f in manifest["files"] if f["case"] == "song")
    instrumental = next(f for f in manifest["files"] if f["case"] == "instrumental")
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros((35 * SR, 2)), SR)
    tones = make_tone(tmp_path / "organ.flac", "flac", seconds=35.0, freq=220.0)
    broken = tmp_path / "broken.ogg"
    broken.write_bytes(b"OggS" + os.urandom(4000))
    inputs = {
        "song": library / song["path"], "demo_instrumental": library / instrumental["path"],
        "silence": silence, "organ": tones, "broken": broken,
    }  # fmt: skip
    cache = StemCache(tmp_path / "stems", "torch", "0" * 64)
    todo = [SeparationInput(f"id-{name}", path) for name, path in inputs.items()]
    failures = separate_with_torch(todo, cache, weights, CPU, SeparationParams())
    assert [f.track_id for f in failures] == ["id-broken"] and "broken.ogg" in failures[0].detail

    tracks = pa.Table.from_pylist([{"track_id": f"id-{n}", "release": "r", "path": n, "artist": "a"} for n in inputs])
    result = assess(tracks, cache, failures, SeparationParams(), tmp_path / "stems")
    reasons = {r["path"]: r["reason"] for r in result.rejected.to_pylist()}
    assert reasons == {"demo_instrumental": "instrumental", "silence": "silent", "organ": "instrumental",
                       "broken": "undecodable"}  # fmt: skip
    assert result.vocals.column("path").to_pylist() == ["song"]
    kept = result.vocals.to_pylist()[0]
    assert (tmp_path / "stems" / kept["vocals_path"]).is_file()
    assert abs(kept["duration_s"] - song["duration_s"]) < 0.1
    assert set(result.rejected.column("stage").to_pylist()) == {"vocals"}


KILL_SCRIPT = """
import sys, torch
from pathlib import Path
from ml.separation.separation import SeparationInput, SeparationParams, separate_with_torch
from ml.separation.stems import StemCache
cache = StemCache(sys.argv[2], "torch", "0" * 64)
separate_with_torch([SeparationInput("long", Path(sys.argv[1]))], cache, Path(sys.argv[3]), torch.device("cpu"),
                    SeparationParams(batch_chunks=1))
"""


def test_a_killed_separation_leaves_no_partial_stem_and_a_rerun_completes(weights, tmp_path):
    long_file = make_tone(tmp_path / "long.flac", "flac", seconds=240.0)
    stems = tmp_path / "stems"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(long_file), str(stems), str(weights)],
                            cwd=config.project_root())  # fmt: skip
    cache = StemCache(stems, "torch", "0" * 64)
    deadline = time.monotonic() + 120
    partial = []
    while time.monotonic() < deadline and proc.poll() is None:
        partial = [p for p in stems.rglob(".long.tmp-*/vocals.flac") if p.stat().st_size > 0]
        if partial:
            break
        time.sleep(0.2)
    assert partial, "the separation never started writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert cache.get("long") is None  # nothing half-written under the final name
    assert cache.clean_partial() == 1 and not list(stems.rglob(".long.tmp-*"))

    failures = separate_with_torch([SeparationInput("long", long_file)], cache, weights, CPU, SeparationParams())
    entry = cache.get("long")
    assert failures == [] and entry is not None
    assert abs(sf.info(entry.vocals).duration - 240.0) < 0.01
    assert entry.activity().shape == (2, 2400)


def test_a_failing_stem_write_stops_the_batch_and_leaves_no_partial_entry(weights, tmp_path, monkeypatch):
    """Decoding and writing run beside the network: an error in the writer (a full disk, say)
    reaches the caller, no entry is left half-written, and no helper thread keeps running."""
    import threading

    from ml.separation.stems import StemWriter

    first = make_tone(tmp_path / "first.flac", "flac", seconds=30.0)
    second = make_tone(tmp_path / "second.flac", "flac", seconds=30.0, freq=330.0)
    cache = StemCache(tmp_path / "stems", "torch", "0" * 64)
    real_write, calls = StemWriter.write, []

    def write_until_the_disk_fills(self, *blocks):
        calls.append(self.final_dir.name)
        if len(calls) > 2:
            raise OSError(28, "No space left on device")
        real_write(self, *blocks)

    monkeypatch.setattr(StemWriter, "write", write_until_the_disk_fills)
    todo = [SeparationInput("first", first), SeparationInput("second", second)]
    with pytest.raises(OSError, match="No space left"):
        separate_with_torch(todo, cache, weights, CPU, SeparationParams())
    assert cache.get("first") is None and cache.get("second") is None
    assert not list((tmp_path / "stems").rglob(".*.tmp-*")), "a partial entry was left behind"
    assert not [t for t in threading.enumerate() if t.name in ("reconet-decode", "reconet-write")]


def test_the_cpu_transforms_equal_torch_fft(separator):
    """On the CPU the STFT goes through scipy's FFT; it must give torch.fft's transform."""
    frames = torch.from_numpy(_music(3.0)[:, 0].copy()).unfold(0, FRAME_LENGTH, 1024)
    spectrum = separator._rfft(frames)
    assert torch.allclose(spectrum, torch.fft.rfft(frames, dim=-1), atol=1e-3)
    assert torch.allclose(separator._irfft(spectrum), frames, atol=1e-5)


def test_the_stem_entry_levels_match_a_float64_reference(tmp_path):
    """Levels are summed in float32 within a 100 ms frame: the dB figures must still be exact."""
    from ml.audio import to_mono
    from ml.separation.stems import ACTIVITY_FRAME, StemWriter

    mix = _music(7.3, seed=3)
    mix[: SR // 2] = 0.0  # a silent start: frames at the floor
    vocals = 0.3 * mix + 0.01
    writer = StemWriter(tmp_path / "entry")
    for start, stop in ((0, 1000), (1000, 50_000), (50_000, 50_001), (50_001, len(mix))):  # blocks of any size
        writer.write(vocals[start:stop], mix[start:stop] - vocals[start:stop], mix[start:stop])
    entry = writer.commit({})

    def frame_db(signal: np.ndarray) -> np.ndarray:
        mono = signal.astype(np.float64).mean(axis=1)
        edges = range(0, len(mono), ACTIVITY_FRAME)
        rms = np.array([np.sqrt(np.mean(mono[i : i + ACTIVITY_FRAME] ** 2)) for i in edges])
        return np.maximum(20 * np.log10(np.maximum(rms, 1e-12)), -120.0)

    assert np.array_equal(to_mono(mix), mix.mean(axis=1))
    assert np.allclose(entry.activity(), [frame_db(vocals), frame_db(mix)], atol=1e-3)
    energy = {name: np.sum(s.astype(np.float64).mean(axis=1) ** 2) for name, s in (("v", vocals), ("m", mix))}
    assert entry.meta["vocal_to_mix_db"] == pytest.approx(10 * np.log10(energy["v"] / energy["m"]), abs=1e-4)
    assert entry.meta["mix_dbfs"] == pytest.approx(10 * np.log10(energy["m"] / len(mix)), abs=1e-4)
