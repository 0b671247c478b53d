"""The one precision choice (ml/device.py) and what follows it: stems, embeddings and runs keyed by
the precision, and bfloat16 separation at parity with float32 where the CPU has bfloat16 units."""

import numpy as np
import pytest
import torch

from ml import config
from ml.device import cpu_bf16_flags, pick_precision, precision_from_params
from ml.separation.separation import SeparationInput, SeparationParams, separate_with_torch, stem_cache
from ml.separation.stems import StemCache
from tests.test_separation import _music

CPU = torch.device("cpu")
SHA = "1" * 64


@pytest.fixture
def cpu_with_bf16(monkeypatch):
    """Fake the CPU's capability through the one function that reads it: ``fake(True)`` gives it
    bfloat16 units, ``fake(False)`` none."""
    monkeypatch.delenv("RECONET_PRECISION", raising=False)

    def fake(has: bool) -> None:
        monkeypatch.setattr("ml.device.cpu_bf16_flags", lambda: ("avx512_bf16",) if has else ())

    return fake


def test_auto_is_bf16_exactly_on_a_cpu_with_bfloat16_units(cpu_with_bf16, monkeypatch):
    cpu_with_bf16(True)
    assert pick_precision(CPU) == torch.bfloat16
    assert precision_from_params({"compute": {"precision": "auto"}}, CPU) == torch.bfloat16
    assert precision_from_params({"compute": {"precision": "fp32"}}, CPU) == torch.float32
    cpu_with_bf16(False)
    assert pick_precision(CPU) == torch.float32
    assert pick_precision(CPU, "bf16") == torch.bfloat16  # asked for: runs (emulated) anyway
    # on CUDA, auto follows the stage's own float16 switch, as before (no GPU needed to decide)
    assert pick_precision("cuda", "auto", cuda_half=True) == torch.float16
    assert pick_precision("cuda", "auto", cuda_half=False) == torch.float32
    assert pick_precision("cuda", "fp32", cuda_half=True) == torch.float32
    monkeypatch.setenv("RECONET_PRECISION", "bf16")  # the environment wins over params.yaml
    assert precision_from_params({"compute": {"precision": "fp32"}}, CPU) == torch.bfloat16
    monkeypatch.setenv("RECONET_PRECISION", "fp8")
    with pytest.raises(ValueError, match="fp8.*RECONET_PRECISION"):
        pick_precision(CPU)


def test_the_cpu_flags_come_from_cpuinfo(tmp_path):
    without, with_bf16 = tmp_path / "avx512", tmp_path / "bf16"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n\n"
                       "processor\t: 1\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")  # fmt: skip
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert cpu_bf16_flags(str(without)) == ()
    assert cpu_bf16_flags(str(with_bf16)) == ("avx512_bf16", "amx_bf16")
    assert cpu_bf16_flags(str(tmp_path / "absent")) == ()  # not Linux: none


def test_the_stem_cache_keys_on_the_precision(cpu_with_bf16):
    cpu_with_bf16(True)
    auto = SeparationParams.from_params({"compute": {"precision": "auto"}})
    fp32 = SeparationParams.from_params({"compute": {"precision": "fp32"}})
    bf16, plain = stem_cache("s", auto, SHA, CPU), stem_cache("s", fp32, SHA, CPU)
    assert bf16.identity == f"torch-{SHA}-bf16" and bf16.directory.name == "torch-111111111111-bf16"
    assert plain.identity == f"torch-{SHA}" and plain.directory == StemCache("s", "torch", SHA).directory
    official = SeparationParams.from_params({"compute": {"precision": "bf16"}}, backend="spleeter")
    assert stem_cache("s", official, SHA, CPU).identity == f"spleeter-{SHA}"  # the reference is float32
    cpu_with_bf16(False)
    assert stem_cache("s", auto, SHA, CPU).identity == f"torch-{SHA}"
    half = SeparationParams(half_precision=True, precision="fp32")  # fp32 overrides float16 on CUDA too
    assert stem_cache("s", half, SHA, "cuda").identity == f"torch-{SHA}"


def test_training_precision_and_the_run_identity(cpu_with_bf16):
    from ml.training.model_run import run_identity
    from ml.training.training import TrainParams, training_precision

    params = config.load_params()
    params = {**params, "compute": {**params.get("compute", {}), "device": "cpu", "precision": "auto"}}
    settings = TrainParams.from_params(params)
    cpu_with_bf16(True)
    assert training_precision(params, CPU) == torch.bfloat16  # auto: bfloat16 autocast where the CPU has the units
    assert run_identity(params, config.paths(), settings)["precision"] == "bf16"  # another run than float32's
    fp32 = {**params, "compute": {**params["compute"], "precision": "fp32"}}
    assert training_precision(fp32, CPU) == torch.float32
    cpu_with_bf16(False)
    assert training_precision(params, CPU) == torch.float32
    explicit = {**params, "compute": {**params["compute"], "precision": "bf16"}}
    assert training_precision(explicit, CPU) == torch.bfloat16  # asked for: emulated, but asked
    assert "precision" not in run_identity(params, config.paths(), settings)  # float32 runs keep their digest
    crnn = {**params, "train": {**params["train"], "model": "crnn", "mixed_precision": True}}
    embedding = {**params, "train": {**params["train"], "model": "voice_embedding", "mixed_precision": True}}
    assert training_precision(crnn, torch.device("cuda")) == torch.float16
    assert training_precision(embedding, torch.device("cuda")) == torch.float32  # a frozen encoder: inference


def test_embeddings_are_cached_per_precision_and_agree():
    from ml.identification.backend import BackendParams, ClipEmbedder

    ge2e = BackendParams(encoder="ge2e")
    fp32 = ClipEmbedder("voice_embedding", ge2e, CPU, precision=torch.float32)
    bf16 = ClipEmbedder("voice_embedding", ge2e, CPU, precision=torch.bfloat16)
    assert fp32.key != bf16.key
    classical = [ClipEmbedder("classical", BackendParams(), CPU, precision=p) for p in (torch.float32, torch.bfloat16)]
    assert classical[0].key == classical[1].key  # the classical features are float32 either way
    t = np.arange(3 * 16000) / 16000
    voice = np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.3 * np.sin(2 * np.pi * 360 * t)
    audio = torch.from_numpy(0.1 * np.stack([voice, np.roll(voice, 800)])).float()
    a, b = fp32.embed(audio), bf16.embed(audio)
    assert np.all(np.sum(a * b, axis=1) > 0.99)  # unit vectors: cosine


@pytest.mark.skipif(not cpu_bf16_flags(), reason="this CPU has no bfloat16 units (avx512_bf16 / amx_bf16 in "
                    "/proc/cpuinfo): auto separates in float32 here, and bfloat16 would only be emulated")  # fmt: skip
def test_bf16_separation_matches_fp32_and_has_its_own_stems(tmp_path, monkeypatch):
    import soundfile as sf

    monkeypatch.delenv("RECONET_PRECISION", raising=False)
    song = tmp_path / "clip.wav"
    sf.write(song, _music(6.0), 44100)
    weights = config.paths().spleeter_weights
    stems = {}
    for precision in ("fp32", "auto"):
        settings = SeparationParams.from_params({"compute": {"precision": precision}})
        cache = stem_cache(tmp_path / "stems", settings, SHA, CPU)
        assert separate_with_torch([SeparationInput("clip", song)], cache, weights, CPU, settings) == []
        entry = cache.get("clip")
        assert entry.meta["precision"] == cache.precision == ("fp32" if precision == "fp32" else "bf16")
        stems[cache.precision] = {n: sf.read(entry.directory / f"{n}.flac")[0] for n in ("vocals", "accompaniment")}
    for name in ("vocals", "accompaniment"):
        reference, estimate = stems["fp32"][name], stems["bf16"][name]
        snr = 10 * np.log10(np.sum(reference**2) / np.sum((reference - estimate) ** 2))
        assert snr >= 25, f"{name}: bfloat16 stems at {snr:.1f} dB SNR against float32"
