"""Tzanetakis & Cook's 30 features (ml.models.classical) on signals whose values are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ml.models.classical import FEATURE_NAMES, ClassicalFeatures, tzanetakis_features

SR = 16000


def _t(seconds: float) -> torch.Tensor:
    return torch.arange(int(seconds * SR), dtype=torch.float64) / SR


def _sine(freq: float, seconds: float = 3.0, amp: float = 0.5) -> torch.Tensor:
    return (amp * torch.sin(2 * math.pi * freq * _t(seconds) + 0.3)).float()


def _harmonic(freq: float, seconds: float = 3.0) -> torch.Tensor:
    t = _t(seconds)
    return (0.2 * sum(torch.sin(2 * math.pi * freq * h * t) / h for h in range(1, 6))).float()


def _features(*clips: torch.Tensor) -> dict[str, torch.Tensor]:
    out = tzanetakis_features(torch.stack(clips), SR)
    return dict(zip(FEATURE_NAMES, out.T, strict=True))


def test_names_shape_and_module():
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES)) == 30
    audio = torch.randn(3, 2 * SR) * 0.1
    out = tzanetakis_features(audio, SR)
    assert out.shape == (3, 30) and out.dtype == torch.float32 and torch.isfinite(out).all()
    model = ClassicalFeatures()
    assert model.embedding_size == 30
    assert torch.equal(model.embed(audio), out)
    with pytest.raises(ValueError):
        tzanetakis_features(torch.zeros(1, 500), SR)


def test_sine_timbre():
    f = _features(_sine(1000.0))
    assert f["centroid_mean"].item() == pytest.approx(1000, rel=0.03)
    assert 950 <= f["rolloff_mean"].item() <= 1100  # the bin where 85 % of the magnitude is reached
    assert f["flux_mean"].item() < 1e-4
    assert f["zcr_mean"].item() == pytest.approx(2 * 1000 / SR, rel=0.02)  # crossings per sample
    assert f["zcr_var"].item() < 1e-6


def test_white_noise_centroid():
    noise = torch.from_numpy(np.random.default_rng(0).standard_normal(3 * SR).astype(np.float32)) * 0.1
    f = _features(noise)
    assert f["centroid_mean"].item() == pytest.approx(SR / 4, rel=0.05)
    assert f["flux_mean"].item() > 0.1


def test_click_train_tempo():
    clicks = torch.zeros(6 * SR)
    clicks[:: SR // 2] = 1.0  # 120 BPM
    f = _features(clicks)
    assert f["beat_P1"].item() == pytest.approx(120, rel=0.03)
    assert f["beat_A0"].item() >= f["beat_A1"].item() > 0
    assert 0 < f["beat_RA"].item() <= 1 and f["beat_SUM"].item() > 0


def test_steady_a4_pitch():
    f = _features(_harmonic(440.0))
    assert f["pitch_UP0"].item() == 69
    assert f["pitch_FP0"].item() == (7 * 9) % 12  # A's place on the circle of fifths (C=0, G=1, D=2, A=3)
    assert f["pitch_SUM"].item() > 0.95 and f["pitch_FA0"].item() > 0.95


def test_fifth_interval():
    f = _features(torch.cat([_harmonic(440.0, 2.0), _harmonic(659.26, 1.0)]))  # A4 then E5
    assert f["pitch_UP0"].item() == 69 and f["pitch_FP0"].item() == 3
    assert f["pitch_IPO1"].item() == 1  # a fifth apart


def test_low_energy():
    t = _t(4.0)
    gain = torch.where(t < 1.0, 0.5, 0.01)  # loud for the first quarter
    f = _features((gain * torch.sin(2 * math.pi * 300 * t)).float())
    assert f["low_energy"].item() == pytest.approx(0.75, abs=0.02)


def test_silence_is_zeros():
    out = tzanetakis_features(torch.zeros(2, 2 * SR), SR)
    assert torch.equal(out, torch.zeros(2, 30))
    quiet = tzanetakis_features(torch.full((1, 2 * SR), 1e-3), SR)  # constant, spectrally silent past DC
    assert torch.isfinite(quiet).all()


def test_mfcc_matches_librosa():
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng(1)
    n = 3 * SR
    y = rng.standard_normal(n) * 0.1 + 0.3 * np.sin(2 * np.pi * 220 * np.arange(n) / SR)
    y = (y * np.linspace(0.1, 1.0, n)).astype(np.float32)
    ref = librosa.feature.mfcc(y=y, sr=SR, n_mfcc=5, n_fft=512, hop_length=256, n_mels=40, center=False)
    f = _features(torch.from_numpy(y))
    for i in range(5):
        assert f[f"mfcc{i}_mean"].item() == pytest.approx(ref[i].mean(), rel=1e-3, abs=1e-2)
        assert f[f"mfcc{i}_var"].item() == pytest.approx(ref[i].var(), rel=1e-2, abs=1e-2)


def test_mfcc0_orders_loudness():
    noise = torch.randn(2 * SR)
    f = _features(noise * 0.01, noise * 0.1, noise * 1.0)
    assert (f["mfcc0_mean"].diff() > 0).all()


def test_batch_consistency():
    rng = np.random.default_rng(2)
    clips = torch.stack([_harmonic(220.0), _sine(1000.0), torch.from_numpy(rng.standard_normal(3 * SR) * 0.1).float()])
    batch = tzanetakis_features(torch.cat([clips] * 7), SR)  # 21 clips: crosses the 16-clip chunks
    for i in range(3):
        alone = tzanetakis_features(clips[i : i + 1], SR)[0]
        torch.testing.assert_close(batch[i], alone, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(batch[i + 18], alone, rtol=1e-4, atol=1e-5)
