"""ml.clips.augment: each transform's defining property, seeding, p=0 identity, clip lengths, params parsing.

Only generated signals; the whole file runs in a few seconds on a 2-core CPU.
"""

import dataclasses
import math

import pytest
import torch

from ml.clips import augment as A
from ml.clips.augment import (
    AUDIO_TRANSFORMS,
    SPECTROGRAM_TRANSFORMS,
    AudioAugmenter,
    AugmentParams,
    SpectrogramAugmenter,
)

SR = 16000


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def voice_like(batch: int = 4, seconds: float = 3.0, seed: int = 0) -> torch.Tensor:
    """Harmonic tones with vibrato and gaps, a different pitch per row: a stand-in for sung vocals."""
    g = gen(seed)
    t = torch.arange(int(seconds * SR)) / SR
    f0 = 150 + 200 * torch.rand(batch, 1, generator=g)
    phase = 2 * math.pi * (f0 * t + 0.4 * torch.sin(2 * math.pi * 5 * t))
    tone = sum(torch.sin(k * phase) / k for k in range(1, 8))
    gate = (torch.sin(2 * math.pi * 0.7 * t + 6 * torch.rand(batch, 1, generator=g)) > -0.6).float()
    return (0.2 * tone * gate + 0.002 * torch.randn(batch, t.numel(), generator=g)).float()


def pulse_train(bpm: float, seconds: float = 10.0, first: float = 0.25) -> torch.Tensor:
    """Decaying 200 Hz bursts every beat from ``first`` seconds: a synthetic beat at ``bpm``."""
    t = torch.arange(int(seconds * SR)) / SR
    tau = torch.remainder(t - first, 60 / bpm)
    return (0.5 * torch.sin(2 * math.pi * 200 * tau) * torch.exp(-tau / 0.05))[None]


def log_mel(batch: int = 3, n_mels: int = 128, frames: int = 313, seed: int = 0) -> torch.Tensor:
    """Log-mel-like values (dB, continuous, so every value is distinct)."""
    return -100 + 120 * torch.rand(batch, n_mels, frames, generator=gen(seed))


def peak_hz(x: torch.Tensor) -> float:
    """Frequency of the largest spectral peak of a 1-D signal (1 Hz bins over the middle second)."""
    mid = x.shape[-1] // 2
    seg = x[mid - SR // 2 : mid + SR // 2] * torch.hann_window(SR)
    return float(torch.fft.rfft(seg).abs().argmax())


ALL_ON = AugmentParams().with_p(1.0)


# ---- audio transforms --------------------------------------------------------------------------


@pytest.mark.parametrize("noise", [A.gaussian_noise, A.pink_noise])
def test_noise_hits_the_drawn_snr(noise):
    clips = voice_like(6)
    snr = torch.tensor([10.0, 14.0, 18.0, 22.0, 26.0, 30.0])
    out = noise(clips, snr, gen())
    assert torch.allclose(A.snr_db(clips, out), snr, atol=0.1)


@pytest.mark.parametrize("name", ["gaussian_noise", "pink_noise"])
def test_noise_augmenter_snr_within_range_and_silence_stays_silent(name):
    clips = torch.cat([voice_like(7), torch.zeros(1, 3 * SR)])
    out = AudioAugmenter(ALL_ON, SR).apply(name, clips, gen())
    measured = A.snr_db(clips[:7], out[:7])
    assert ((measured > 10 - 0.1) & (measured < 30 + 0.1)).all()
    assert measured.std() > 1  # drawn per clip
    assert torch.equal(out[7], clips[7])


def test_pink_noise_has_a_one_over_f_spectrum():
    noise = A.pink_noise_like((8, 10 * SR), gen(), torch.device("cpu"))
    power = torch.fft.rfft(noise).abs().pow(2).mean(0)
    freqs = torch.fft.rfftfreq(10 * SR, 1 / SR)
    band = (freqs > 50) & (freqs < 5000)
    x, y = freqs[band].log10(), power[band].log10()
    slope = ((x - x.mean()) * (y - y.mean())).sum() / (x - x.mean()).pow(2).sum()
    assert -1.1 < slope < -0.9
    white = torch.fft.rfft(torch.randn(8, 10 * SR, generator=gen())).abs().pow(2).mean(0)
    xw, yw = x, white[band].log10()
    assert abs(((xw - xw.mean()) * (yw - yw.mean())).sum() / (xw - xw.mean()).pow(2).sum()) < 0.1


def test_time_shift_is_circular_and_energy_preserving():
    clips = voice_like(3)
    shifts = torch.tensor([5, -12345, 3 * SR - 1])
    out = A.time_shift(clips, shifts)
    for row, s in enumerate(shifts.tolist()):
        assert torch.equal(out[row], torch.roll(clips[row], s))
    shifted = AudioAugmenter(ALL_ON, SR).apply("time_shift", clips, gen())
    assert not torch.equal(shifted, clips)
    assert torch.equal(shifted.sort(-1).values, clips.sort(-1).values)


def test_volume_modulation_gain_is_bounded_by_depth():
    clips = 0.5 * torch.ones(2, SR)
    out = A.volume_modulation(clips, torch.tensor([0.1, 0.5]), torch.tensor([2.0, 0.5]), 0.3, SR)
    gain = out / clips
    t = torch.arange(SR) / SR
    expected = 1 + torch.tensor([[0.1], [0.5]]) * torch.sin(2 * math.pi * torch.tensor([[2.0], [0.5]]) * t + 0.3)
    assert torch.allclose(gain, expected, atol=1e-5)
    assert (gain[0] >= 0.9 - 1e-6).all() and (gain[0] <= 1.1 + 1e-6).all()
    assert (gain[1] >= 0.5 - 1e-6).all() and (gain[1] <= 1.5 + 1e-6).all()
    # Through the augmenter: depth within its range [0.1, 0.5].
    ones = torch.ones(16, 3 * SR)
    gain = AudioAugmenter(ALL_ON, SR).apply("volume_modulation", ones, gen())
    depth = (gain - 1).abs().amax(-1)
    assert (depth <= 0.5 + 1e-6).all() and (depth > 0).all()


@pytest.mark.parametrize("bpm", [90.0, 120.0, 150.0])
def test_tempo_estimate_of_a_pulse_train(bpm):
    est, first = A.estimate_beat_grid(pulse_train(bpm), SR)
    assert abs(est.item() / bpm - 1) < 0.03
    assert abs(first.item() - 0.25 % (60 / bpm)) < 0.02


def test_click_track_adds_clicks_on_the_beat_grid():
    clip = pulse_train(120.0)
    out = AudioAugmenter(ALL_ON, SR).apply("click_track", clip, gen())
    added = (out - clip)[0]
    assert added.abs().max() > 0
    # Click onsets: 5 ms frames where the added signal starts.
    frames = added.reshape(-1, 80).abs().amax(-1) > 0.05 * added.abs().max()
    starts = torch.nonzero(frames[1:] & ~frames[:-1]).squeeze(-1) + 1
    onsets = starts.float() * 80 / SR
    spacing = onsets.diff()
    assert len(onsets) >= 18
    assert (spacing - 0.5).abs().max() < 0.015
    assert (torch.remainder(onsets - 0.25 + 0.25, 0.5) - 0.25).abs().max() < 0.02  # on the pulses
    # Peak level relative to the clip's RMS within the configured range (0..10 dB), up to the decay.
    level = 20 * torch.log10(added.abs().max() / A.rms(clip)[0])
    assert -1.5 < level < 10.01


def test_click_track_plain_function_and_silence():
    clips = torch.cat([voice_like(1, 2.0), torch.zeros(1, 2 * SR)])
    out = A.click_track(clips, SR, bpm=torch.tensor([100.0, 100.0]), first_beat_s=0.1, level_db=6.0, duration_s=0.01)
    added = out[0] - clips[0]
    t = torch.arange(2 * SR) / SR
    tau = torch.remainder(t - 0.1, 0.6)
    assert (added[(tau > 0.0101) & (tau < 0.599)] == 0).all() and added[tau < 0.0099].abs().max() > 0
    assert torch.equal(out[1], clips[1])


@pytest.mark.parametrize("steps,expected", [(1, 466.16), (-1, 415.30)])
def test_pitch_shift_moves_a_tone_by_a_semitone(steps, expected):
    t = torch.arange(3 * SR) / SR
    tone = 0.5 * torch.sin(2 * math.pi * 440 * t).repeat(2, 1)
    out = A.pitch_shift(tone, steps, SR)
    assert out.shape == tone.shape
    assert abs(peak_hz(out[0]) - expected) <= 2
    assert abs(A.rms(out[0, SR // 10 : -SR // 10]) / A.rms(tone[0]) - 1) < 0.05


def test_pitch_shift_augmenter_shifts_each_row_by_a_drawn_step():
    t = torch.arange(2 * SR) / SR
    tone = 0.5 * torch.sin(2 * math.pi * 440 * t).repeat(8, 1)
    out = AudioAugmenter(ALL_ON, SR).apply("pitch_shift", tone, gen(3))
    peaks = sorted({round(peak_hz(row)) for row in out})
    assert all(min(abs(p - 466), abs(p - 415)) <= 2 for p in peaks)
    assert len(peaks) >= 2  # both directions drawn among 8 rows


def test_remix_adds_another_rows_accompaniment_at_the_drawn_level():
    clips, acc = voice_like(4), torch.randn(4, 3 * SR, generator=gen(1))
    level = torch.tensor([-5.0, 0.0, 4.0, 10.0])
    source = torch.tensor([1, 2, 3, 0])
    out = A.remix(clips, acc, source, level)
    residual = out - clips
    for row in range(4):
        g = residual[row].dot(acc[source[row]]) / acc[source[row]].pow(2).sum()
        assert torch.allclose(residual[row], g * acc[source[row]], atol=1e-5)
        vocal_to_acc = 20 * torch.log10(A.rms(clips[row : row + 1]) / A.rms(residual[row : row + 1]))
        assert abs(vocal_to_acc.item() - level[row].item()) < 0.1


def test_remix_augmenter_uses_a_different_row_and_skips_without_accompaniment():
    clips, acc = voice_like(5), torch.randn(5, 3 * SR, generator=gen(1))
    augmenter = AudioAugmenter(ALL_ON, SR)
    out = augmenter.apply("remix", clips, gen(), accompaniment=acc)
    residual = out - clips
    for row in range(5):
        corr = torch.nn.functional.cosine_similarity(residual[row : row + 1], acc)
        source = int(corr.argmax())
        assert source != row and corr[source] > 0.9999
        ratio = 20 * torch.log10(A.rms(clips[row : row + 1]) / A.rms(residual[row : row + 1]))
        assert -5.1 < ratio.item() < 10.1
    assert augmenter.apply("remix", clips, gen()) is clips
    assert torch.equal(augmenter.apply("remix", clips[:1], gen(), accompaniment=acc[:1]), clips[:1])


# ---- spectrogram transforms --------------------------------------------------------------------


def test_brightness_adds_exactly_the_gain():
    lm = log_mel()
    out = A.brightness(lm, torch.tensor([-6.0, 0.5, 6.0]))
    assert torch.allclose(out - lm, torch.tensor([-6.0, 0.5, 6.0]).reshape(3, 1, 1).expand_as(lm), atol=1e-4)
    out = SpectrogramAugmenter(ALL_ON).apply("brightness", lm, gen())
    diff = (out - lm).flatten(1)
    assert (diff.amax(1) - diff.amin(1) < 1e-4).all()  # one gain per sample
    assert (diff.abs().amax(1) <= 6 + 1e-4).all()


def test_time_roll_is_circular():
    lm = log_mel()
    out = A.time_roll(lm, torch.tensor([1, -100, 312]))
    for row, s in enumerate([1, -100, 312]):
        assert torch.equal(out[row], torch.roll(lm[row], s, dims=-1))
    out = SpectrogramAugmenter(ALL_ON).apply("time_roll", lm, gen())
    assert torch.equal(out.sort(-1).values, lm.sort(-1).values)


def test_time_and_frequency_masks_fill_exactly_the_band():
    lm = log_mel(2)
    fill = lm.amin(dim=(1, 2))
    out = A.time_mask(lm, torch.tensor([[10, 200], [0, 0]]), torch.tensor([[5, 1], [3, 0]]))
    expected = lm.clone()
    expected[0, :, 10:15] = fill[0]
    expected[0, :, 200] = fill[0]
    expected[1, :, 0:3] = fill[1]
    assert torch.equal(out, expected)
    out = A.frequency_mask(lm, torch.tensor([[120], [7]]), torch.tensor([[8], [16]]))
    expected = lm.clone()
    expected[0, 120:128, :] = fill[0]
    expected[1, 7:23, :] = fill[1]
    assert torch.equal(out, expected)


def test_mask_rectangles_fill_exactly_the_rectangles():
    lm = log_mel(1)
    out = A.mask_rectangles(lm, torch.tensor([[3, 50]]), torch.tensor([[4, 10]]), torch.tensor([[7, 300]]),
                            torch.tensor([[2, 13]]), fill=-123.0)  # fmt: skip
    expected = lm.clone()
    expected[0, 3:7, 7:9] = -123.0
    expected[0, 50:60, 300:313] = -123.0
    assert torch.equal(out, expected)


def _changed_bbox(before: torch.Tensor, after: torch.Tensor) -> tuple[slice, slice]:
    rows, cols = torch.nonzero(before != after, as_tuple=True)
    return slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1)


def test_augmenter_masks_stay_within_their_sizes():
    lm = log_mel(4)
    fill = lm.amin(dim=(1, 2))
    augmenter = SpectrogramAugmenter(ALL_ON)
    cut = augmenter.apply("cutout", lm, gen())
    for b in range(4):
        mels, frames = _changed_bbox(lm[b], cut[b])
        assert (cut[b, mels, frames] == fill[b]).all()  # one full rectangle of the fill value
        assert 0.1 * 128 - 1 <= mels.stop - mels.start <= 0.3 * 128 + 1
        assert 0.1 * 313 - 1 <= frames.stop - frames.start <= 0.3 * 313 + 1
        assert int((cut[b] != lm[b]).sum()) <= (mels.stop - mels.start) * (frames.stop - frames.start)
    drop = augmenter.apply("coarse_dropout", lm, gen())
    changed = drop != lm
    assert (drop[changed] == fill.reshape(4, 1, 1).expand_as(lm)[changed]).all()
    assert (changed.flatten(1).sum(1) <= 12 * round(0.08 * 128) * round(0.08 * 313)).all()
    assert (changed.flatten(1).sum(1) > 0).all()
    tm = augmenter.apply("time_mask", lm, gen())
    masked_frames = (tm == fill.reshape(4, 1, 1)).all(1)
    assert torch.equal((tm != lm).any(1), masked_frames & (lm != fill.reshape(4, 1, 1)).any(1))
    assert (masked_frames.sum(-1) <= 2 * 40).all()
    fm = augmenter.apply("frequency_mask", lm, gen())
    masked_bands = (fm == fill.reshape(4, 1, 1)).all(2)
    assert (masked_bands.sum(-1) <= 2 * 16).all()
    assert torch.equal((fm != lm).any(2), masked_bands)


# ---- chain properties --------------------------------------------------------------------------


def test_p_zero_is_the_identity_for_every_transform():
    clips, acc, lm = voice_like(3), torch.randn(3, 3 * SR), log_mel()
    params = AugmentParams().with_p(0.0)
    audio, spec = AudioAugmenter(params, SR), SpectrogramAugmenter(params)
    g = gen()
    state = g.get_state()
    assert audio(clips, g, acc) is clips
    assert spec(lm, g) is lm
    for name in AUDIO_TRANSFORMS:
        assert audio.apply(name, clips, g, acc) is clips
    for name in SPECTROGRAM_TRANSFORMS:
        assert spec.apply(name, lm, g) is lm
    assert torch.equal(g.get_state(), state)  # nothing drawn


def test_each_row_decides_for_itself_and_unselected_rows_are_untouched():
    clips = voice_like(32, 1.0)
    params = AugmentParams().with_p(0.5)
    for name in AUDIO_TRANSFORMS:
        out = AudioAugmenter(params, SR).apply(name, clips, gen(1), accompaniment=torch.randn_like(clips))
        same = (out == clips).all(-1)
        assert 0 < int(same.sum()) < 32, name
    lm = log_mel(32, frames=40)
    for name in SPECTROGRAM_TRANSFORMS:
        out = SpectrogramAugmenter(params).apply(name, lm, gen(1))
        same = (out == lm).flatten(1).all(-1)
        assert 0 < int(same.sum()) < 32, name


def test_same_seed_same_output_different_seed_different_output():
    clips, acc, lm = voice_like(4, 1.0), torch.randn(4, SR, generator=gen(9)), log_mel(4, frames=32)
    for params in (AugmentParams(), ALL_ON):
        audio, spec = AudioAugmenter(params, SR), SpectrogramAugmenter(params)
        a1, a2, a3 = (audio(clips, gen(s), acc) for s in (7, 7, 8))
        assert torch.equal(a1, a2) and not torch.equal(a1, a3)
        s1, s2, s3 = (spec(lm, gen(s)) for s in (7, 7, 8))
        assert torch.equal(s1, s2) and not torch.equal(s1, s3)


@pytest.mark.parametrize("seconds", [1.0, 3.0, 10.0])
def test_whole_chains_work_for_any_clip_length(seconds):
    clips = voice_like(2, seconds)
    out = AudioAugmenter(ALL_ON, SR)(clips, gen(), accompaniment=torch.randn_like(clips))
    assert out.shape == clips.shape and out.dtype == clips.dtype and torch.isfinite(out).all()
    frames = int(seconds * SR) // 512 + 1
    lm = log_mel(2, frames=frames)
    out = SpectrogramAugmenter(ALL_ON)(lm, gen())
    assert out.shape == lm.shape and torch.isfinite(out).all()


def test_real_log_mel_pipeline():
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(sample_rate=SR, n_fft=2048, hop_length=512, n_mels=128)
    to_db = torchaudio.transforms.AmplitudeToDB(top_db=80)
    clips = AudioAugmenter(AugmentParams(), SR)(voice_like(2, 10.0), gen())
    lm = to_db(mel(clips))
    assert lm.shape == (2, 128, 313)
    out = SpectrogramAugmenter(ALL_ON)(lm, gen())
    assert out.shape == lm.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu_with_a_cpu_generator():
    clips, lm = voice_like(3, 1.0), log_mel(3, frames=32)
    params = dataclasses.replace(ALL_ON, pitch_shift=dataclasses.replace(ALL_ON.pitch_shift, p=0.0))
    cpu = AudioAugmenter(params, SR)(clips, gen(), clips.flip(0))
    cuda = AudioAugmenter(params, SR)(clips.cuda(), gen(), clips.flip(0).cuda())
    assert cuda.device.type == "cuda" and torch.allclose(cuda.cpu(), cpu, atol=1e-3)
    assert torch.equal(SpectrogramAugmenter(ALL_ON)(lm.cuda(), gen()).cpu(), SpectrogramAugmenter(ALL_ON)(lm, gen()))
    shifted = AudioAugmenter(ALL_ON, SR).apply("pitch_shift", clips.cuda(), torch.Generator("cuda").manual_seed(0))
    assert shifted.device.type == "cuda" and shifted.shape == clips.shape


# ---- parameters --------------------------------------------------------------------------------


def test_params_from_mapping_defaults_and_overrides():
    params = AugmentParams.from_params({"gaussian_noise": {"p": 0.2, "snr_db": [5, 15]}, "time_mask": None})
    assert params.gaussian_noise.p == 0.2 and params.gaussian_noise.snr_db == (5.0, 15.0)
    assert params.pink_noise == AugmentParams().pink_noise
    assert AugmentParams.from_params(None) == AugmentParams()
    assert AugmentParams().click_track.p == 0.25 and AugmentParams().brightness.p == 0.4


def test_params_yaml_section_parses():
    from ml.config import load_params

    section = load_params().get("augment")
    if section is None:
        pytest.skip("params.yaml has no augment section")
    assert AugmentParams.from_params(section) == AugmentParams()  # params.yaml holds the defaults


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"gausian_noise": {"p": 0.5}}, "gausian_noise"),
        ({"pink_noise": {"snr": [10, 30]}}, "snr"),
        ({"augment": {}}, "whole params.yaml"),
        ({"brightness": {"p": 1.5}}, "brightness.p"),
        ({"remix": {"vocal_to_accompaniment_db": [10, -5]}}, "vocal_to_accompaniment_db"),
        ({"time_mask": {"max_width": 2.5}}, "max_width"),
        ({"cutout": {"mel_fraction": 0.2}}, "mel_fraction"),
        ({"coarse_dropout": {"count": [4.5, 12]}}, "count"),
        ({"time_shift": {"max_fraction": 1.5}}, "max_fraction"),
        ({"click_track": {"min_bpm": 200}}, "min_bpm"),
        ({"volume_modulation": {"depth": [0.1, 1.5]}}, "depth"),
    ],
)
def test_bad_params_raise_naming_the_key(bad, match):
    with pytest.raises(ValueError, match=match):
        AugmentParams.from_params(bad)


def test_unknown_transform_name_raises():
    with pytest.raises(ValueError, match="unknown audio transform"):
        AudioAugmenter().apply("reverb", voice_like(1, 1.0), gen())
    with pytest.raises(ValueError, match="unknown spectrogram transform"):
        SpectrogramAugmenter().apply("blur", log_mel(1), gen())
