"""The audio half of augmentation: transforms on clips ``[B, T]`` (mono waveforms, before the
log-mel) and :class:`AudioAugmenter`, their chain (see the package docstring for the order)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import Tensor

from ml.clips.augment.params import AUDIO_TRANSFORMS, AugmentParams
from ml.clips.augment.sampling import _apply_rows, _per_row, _randint, _randn, _select, _uniform

# ----------------------------------------------------------------------------------------------
# Audio transforms (plain functions; clips: [B, T])
# ----------------------------------------------------------------------------------------------


def rms(x: Tensor) -> Tensor:
    """Root mean square of each row of ``x`` [B, T] -> [B]."""
    return x.float().pow(2).mean(-1).sqrt()


def snr_db(clean: Tensor, noisy: Tensor) -> Tensor:
    """Measured SNR (dB) of ``noisy`` against ``clean``, per row: 10·log10(P(clean) / P(noisy − clean))."""
    clean, noisy = clean.float(), noisy.float()
    return 10 * torch.log10(clean.pow(2).mean(-1) / (noisy - clean).pow(2).mean(-1))


def add_noise_at_snr(clips: Tensor, noise: Tensor, snr: float | Tensor) -> Tensor:
    """``clips + g·noise`` with ``g`` per row such that the result's SNR against the clip is ``snr`` dB.

    SNR = 10·log10(mean(clip²) / mean((g·noise)²)), so ``g = sqrt(P_clip / (P_noise·10^(snr/10)))``.
    A silent clip (P_clip = 0) gets g = 0 and stays exactly silent.
    """
    x = clips.float()
    p_clip = x.pow(2).mean(-1, keepdim=True)
    p_noise = noise.float().pow(2).mean(-1, keepdim=True)
    gain = torch.sqrt(p_clip / (p_noise.clamp_min(1e-20) * 10 ** (_per_row(snr, x) / 10)))
    return (x + gain * noise).to(clips.dtype)


def gaussian_noise(clips: Tensor, snr: float | Tensor, generator: torch.Generator | None = None) -> Tensor:
    """White gaussian noise added at ``snr`` dB per row (RecoNet report: gaussian noise, p=.5)."""
    noise = _randn(generator, tuple(clips.shape), clips.device)
    return add_noise_at_snr(clips, noise, snr)


def pink_noise_like(shape: tuple[int, int], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Pink noise [B, T]: white noise shaped in the rfft domain to a 1/f power spectrum (no DC)."""
    n = shape[-1]
    white = _randn(generator, tuple(shape), device)
    spectrum = torch.fft.rfft(white, dim=-1)
    k = torch.arange(spectrum.shape[-1], device=device, dtype=torch.float32)
    shape_filter = torch.where(k > 0, k.clamp_min(1).rsqrt(), torch.zeros_like(k))  # amplitude 1/sqrt(f)
    return torch.fft.irfft(spectrum * shape_filter, n=n, dim=-1)


def pink_noise(clips: Tensor, snr: float | Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Pink (1/f) noise added at ``snr`` dB per row (RecoNet report: pink noise, p=.5)."""
    return add_noise_at_snr(clips, pink_noise_like(tuple(clips.shape), generator, clips.device), snr)


def time_shift(clips: Tensor, shifts: Tensor) -> Tensor:
    """Circular shift of each row by its own ``shifts[b]`` samples, like ``torch.roll`` (RecoNet: p=.3).

    ``out[b, t] = clips[b, (t - shifts[b]) mod T]``: samples leaving one end come back at the other, so the
    clip's values (and its energy) are unchanged, only moved.
    """
    n = clips.shape[-1]
    t = torch.arange(n, device=clips.device)
    index = torch.remainder(t - shifts.to(clips.device).long().reshape(-1, 1), n)
    return clips.gather(-1, index)


def volume_modulation(
    clips: Tensor, depth: float | Tensor, rate_hz: float | Tensor, phase: float | Tensor, sample_rate: int
) -> Tensor:
    """Multiply by gain(t) = 1 + depth·sin(2π·rate_hz·t + phase), t in seconds (RecoNet "volume control").

    With depth <= 1 the gain stays within [1 − depth, 1 + depth] and never turns negative.
    """
    x = clips.float()
    t = torch.arange(x.shape[-1], device=x.device, dtype=torch.float32) / sample_rate
    gain = 1 + _per_row(depth, x) * torch.sin(2 * math.pi * _per_row(rate_hz, x) * t + _per_row(phase, x))
    return (x * gain).to(clips.dtype)


def onset_strength(clips: Tensor, sample_rate: int) -> tuple[Tensor, float]:
    """Spectral-flux onset envelope [B, frames] at 100 frames/s, and its frame rate.

    Power spectrogram (32 ms Hann window, 10 ms hop) summed into 64 equal-width bands, in dB floored
    80 dB under each clip's maximum; the envelope is the mean over the bands of the positive
    frame-to-frame increase. Value ``i`` measures the rise from frame ``i`` to ``i + 1``, i.e. an onset
    near ``(i + 1)·hop``.
    """
    x = clips.float()
    hop = max(1, round(sample_rate * 0.010))
    n_fft = 2 ** math.ceil(math.log2(sample_rate * 0.032))
    if x.shape[-1] < n_fft:
        x = F.pad(x, (0, n_fft - x.shape[-1]))
    window = torch.hann_window(n_fft, device=x.device)
    spec = torch.view_as_real(torch.stft(x, n_fft, hop, window=window, center=True, return_complex=True))
    power = spec.pow(2).sum(-1)[..., 1:, :]  # [B, n_fft/2, frames], DC dropped
    bands = power.reshape(*power.shape[:-2], 64, -1, power.shape[-1]).sum(-2)  # 64 equal-width bands
    db = 10 * torch.log10(bands + 1e-12)
    db = torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - 80)
    flux = (db[..., 1:] - db[..., :-1]).clamp_min(0).mean(-2)
    return flux, sample_rate / hop


def _tempo_from_envelope(env: Tensor, fps: float, min_bpm: float, max_bpm: float) -> Tensor:
    """Beat period (in envelope frames, fractional) from the envelope's autocorrelation, per row."""
    n = env.shape[-1]
    lag_lo = max(1, math.floor(fps * 60 / max_bpm))
    lag_hi = min(n - 2, math.ceil(fps * 60 / min_bpm))
    if lag_hi <= lag_lo:  # clip too short to see two beats: fall back to 120 BPM
        return torch.full((env.shape[0],), fps * 0.5, device=env.device)
    centred = env - env.mean(-1, keepdim=True)
    spectrum = torch.fft.rfft(centred, n=2 * n, dim=-1)
    ac = torch.fft.irfft(spectrum.abs().pow(2), n=2 * n, dim=-1)[..., :n]
    ac = ac / ac[..., :1].clamp_min(1e-12)
    lags = torch.arange(lag_lo, lag_hi + 1, device=env.device, dtype=torch.float32)
    # A broad log-normal tempo prior (120 BPM, one octave), as librosa's beat tracker: breaks octave ties.
    prior = torch.exp(-0.5 * torch.log2(fps * 60 / lags / 120.0) ** 2)
    window = ac[..., lag_lo : lag_hi + 1]
    best = (window * prior).argmax(-1) + lag_lo
    # Parabolic interpolation of the peak for a sub-frame period.
    a, b, c = (ac.gather(-1, (best + d).unsqueeze(-1)).squeeze(-1) for d in (-1, 0, 1))
    denom = a - 2 * b + c
    delta = torch.where(denom.abs() > 1e-12, 0.5 * (a - c) / denom, torch.zeros_like(denom)).clamp(-0.5, 0.5)
    period = best.float() + delta
    return period.clamp(fps * 60 / max_bpm, fps * 60 / min_bpm)


def estimate_beat_grid(
    clips: Tensor, sample_rate: int, min_bpm: float = 60.0, max_bpm: float = 180.0
) -> tuple[Tensor, Tensor]:
    """Tempo (BPM) and the time of the first beat (s) of each clip: ``(bpm [B], first_beat_s [B])``.

    The tempo is the autocorrelation peak of the spectral-flux onset envelope (:func:`onset_strength`)
    within [min_bpm, max_bpm]; the phase is the offset whose beat grid collects the most onset strength.
    """
    env, fps = onset_strength(clips, sample_rate)
    period = _tempo_from_envelope(env, fps, min_bpm, max_bpm)  # frames
    n = env.shape[-1]
    n_offsets = math.ceil(fps * 60 / min_bpm) + 1
    n_beats = math.ceil(n / max(fps * 60 / max_bpm, 1.0)) + 1
    offsets = torch.arange(n_offsets, device=env.device, dtype=torch.float32)
    beats = torch.arange(n_beats, device=env.device, dtype=torch.float32)
    index = torch.round(offsets[None, :, None] + beats[None, None, :] * period[:, None, None]).long()
    valid = (index < n) & (offsets[None, :, None] < period[:, None, None])
    gathered = env.gather(-1, index.clamp_max(n - 1).reshape(env.shape[0], -1)).reshape(index.shape)
    count = valid.sum(-1)
    score = (gathered * valid).sum(-1) / count.clamp_min(1)
    score = torch.where(count > 0, score, torch.full_like(score, -torch.inf))
    offset = score.argmax(-1).float()
    hop_s = 1.0 / fps
    first_beat = torch.remainder((offset + 1) * hop_s, period * hop_s)
    return 60.0 / (period * hop_s), first_beat


def estimate_tempo(clips: Tensor, sample_rate: int, min_bpm: float = 60.0, max_bpm: float = 180.0) -> Tensor:
    """Estimated tempo (BPM) of each clip [B] (see :func:`estimate_beat_grid`)."""
    return estimate_beat_grid(clips, sample_rate, min_bpm, max_bpm)[0]


def click_track(
    clips: Tensor,
    sample_rate: int,
    bpm: float | Tensor,
    first_beat_s: float | Tensor,
    level_db: float | Tensor,
    duration_s: float | Tensor = 0.015,
    frequency_hz: float = 1000.0,
) -> Tensor:
    """Add clicks on a beat grid (RecoNet report: click track at the perceived tempo, p=.25).

    A click is a ``frequency_hz`` sine starting at each beat ``first_beat_s + k·60/bpm`` (k any integer,
    so the grid covers the whole clip), decaying as exp(−5·τ/duration) and cut at ``duration_s``. Its peak
    amplitude is the clip's RMS times 10^(level_db/20), per row (a silent clip gets no clicks).
    """
    x = clips.float()
    t = torch.arange(x.shape[-1], device=x.device, dtype=torch.float32) / sample_rate
    period = 60.0 / _per_row(bpm, x)
    duration = _per_row(duration_s, x)
    tau = torch.remainder(t - _per_row(first_beat_s, x), period)
    click = torch.sin(2 * math.pi * frequency_hz * tau) * torch.exp(-5 * tau / duration) * (tau < duration)
    amplitude = rms(x).unsqueeze(-1) * 10 ** (_per_row(level_db, x) / 20)
    return (x + amplitude * click).to(clips.dtype)


def _stretch(spec: Tensor, rate: float, hop: int, n_fft: int) -> Tensor:
    """Phase-vocoder time stretch of a complex STFT [..., bins, frames] by ``rate`` (< 1: longer).

    Standard phase vocoder (magnitudes interpolated between frames, phases advanced by each bin's
    instantaneous frequency) with identity phase locking (Laroche & Dolson 1999): every bin keeps its
    analysis phase offset from the spectral peak it belongs to, which keeps partials coherent (the
    plain phase vocoder, e.g. torchaudio's, loses up to half the energy of a steady tone when stretching).
    """
    spec = spec.transpose(-1, -2)  # [..., frames, bins]: frames indexed, bins contiguous
    n_frames, n_bins = spec.shape[-2:]
    device = spec.device
    steps = torch.arange(0, n_frames - 1, rate, device=device, dtype=torch.float64)
    frac = (steps - steps.floor()).float().unsqueeze(-1)
    i0 = steps.long()
    mag, ang = spec.abs(), spec.angle()
    omega = (2 * math.pi * hop / n_fft) * torch.arange(n_bins, device=device, dtype=mag.dtype)
    dev = ang[..., 1:, :] - ang[..., :-1, :] - omega
    advance = dev - (2 * math.pi) * torch.round(dev / (2 * math.pi)) + omega  # phase advance per hop
    # Region of influence: each bin's local maximum (within ±2 bins, followed twice: up to ±6 bins).
    _, peak = F.max_pool1d(mag.reshape(-1, 1, n_bins), 5, 1, 2, return_indices=True)
    peak = peak.gather(-1, peak).gather(-1, peak).reshape(mag.shape)
    offset = ang - ang.gather(-1, peak)
    advance = advance.index_select(-2, i0)
    phase_acc = torch.cumsum(advance, -2) - advance + ang[..., :1, :]
    phase = phase_acc.gather(-1, peak.index_select(-2, i0)) + offset.index_select(-2, i0)
    magnitude = torch.lerp(mag.index_select(-2, i0), mag.index_select(-2, i0 + 1), frac)
    return torch.polar(magnitude, phase).transpose(-1, -2)


def pitch_shift(clips: Tensor, n_steps: float, sample_rate: int, n_fft: int = 512) -> Tensor:
    """Shift every row's pitch by ``n_steps`` semitones, keeping its length (the genre report: ±1 semitone).

    Time-stretch by the pitch ratio r with a phase vocoder (:func:`_stretch`, ``n_fft`` window, hop
    ``n_fft/4``), then resample by 1/r. r is approximated by a fraction with denominator <= 100 (within
    0.03 cents of 2^(n/12) for ±1 and ±2 semitones) so the resampling kernel stays small; ``sample_rate``
    is the clips' rate (the result does not depend on it beyond the window length in seconds).
    """
    if n_steps == 0:
        return clips
    ratio = Fraction(2 ** (float(n_steps) / 12)).limit_denominator(100)
    x = clips.float()
    n = x.shape[-1]
    hop = n_fft // 4
    window = torch.hann_window(n_fft, device=x.device)
    padded = F.pad(x, (0, max(0, n_fft - n)))
    spec = torch.stft(padded, n_fft, hop, window=window, center=True, return_complex=True)
    stretched = _stretch(spec, ratio.denominator / ratio.numerator, hop, n_fft)
    length = round(padded.shape[-1] * ratio.numerator / ratio.denominator)
    y = torch.istft(stretched, n_fft, hop, window=window, center=True, length=length)
    y = AF.resample(y, ratio.numerator, ratio.denominator)
    y = y[..., :n] if y.shape[-1] >= n else F.pad(y, (0, n - y.shape[-1]))
    return y.to(clips.dtype)


def remix(
    clips: Tensor, accompaniment: Tensor, source_rows: Tensor, vocal_to_accompaniment_db: float | Tensor
) -> Tensor:
    """Each clip over another row's accompaniment: ``clips[b] + g[b]·accompaniment[source_rows[b]]``.

    ``g`` sets the vocal-to-accompaniment ratio 20·log10(RMS(clip) / RMS(g·accompaniment)) to the given
    dB. A silent accompaniment (or a silent clip) gets g = 0.
    """
    x = clips.float()
    acc = accompaniment.float().index_select(0, source_rows.to(x.device).long())
    acc_rms = rms(acc).unsqueeze(-1)
    gain = rms(x).unsqueeze(-1) / (acc_rms.clamp_min(1e-20) * 10 ** (_per_row(vocal_to_accompaniment_db, x) / 20))
    gain = torch.where(acc_rms > 0, gain, torch.zeros_like(gain))
    return (x + gain * acc).to(clips.dtype)


class AudioAugmenter:
    """The audio chain (:data:`AUDIO_TRANSFORMS`, in that order) on batches of clips [B, T].

    ``AudioAugmenter(params, sample_rate)(clips, generator, accompaniment=None)``. ``params`` is an
    :class:`AugmentParams` or the ``augment:`` mapping of params.yaml. ``accompaniment`` [B, T] is the
    accompaniment stem at the same place of each clip's own track; without it (or with a single-row
    batch) remix is skipped.
    """

    def __init__(self, params: AugmentParams | Mapping[str, Any] | None = None, sample_rate: int = 16000):
        self.params = params if isinstance(params, AugmentParams) else AugmentParams.from_params(params)
        self.sample_rate = int(sample_rate)

    def __call__(self, clips: Tensor, generator: torch.Generator, accompaniment: Tensor | None = None) -> Tensor:
        _check_clips(clips, accompaniment)
        for name in AUDIO_TRANSFORMS:
            clips = self._run(name, clips, generator, accompaniment, getattr(self.params, name).p)
        return clips

    def apply(
        self,
        name: str,
        clips: Tensor,
        generator: torch.Generator,
        accompaniment: Tensor | None = None,
        p: float | None = None,
    ) -> Tensor:
        """Apply the one transform ``name`` alone, with its configured ``p`` or the given one (1: every row)."""
        if name not in AUDIO_TRANSFORMS:
            raise ValueError(f"unknown audio transform {name!r}; known: {', '.join(AUDIO_TRANSFORMS)}")
        _check_clips(clips, accompaniment)
        return self._run(name, clips, generator, accompaniment, getattr(self.params, name).p if p is None else p)

    def _run(self, name: str, clips: Tensor, g: torch.Generator, accompaniment: Tensor | None, p: float) -> Tensor:
        if name == "remix" and (accompaniment is None or clips.shape[0] < 2):
            return clips
        rows = _select(g, clips.shape[0], p, clips.device)
        if rows is None:
            return clips
        return getattr(self, "_" + name)(clips, rows, g, accompaniment)

    def _gaussian_noise(self, clips: Tensor, rows: Tensor, g: torch.Generator, _acc) -> Tensor:
        prm = self.params.gaussian_noise
        snr = _uniform(g, (rows.numel(),), prm.snr_db, clips.device)
        return _apply_rows(clips, rows, lambda x, _: gaussian_noise(x, snr, g))

    def _pink_noise(self, clips: Tensor, rows: Tensor, g: torch.Generator, _acc) -> Tensor:
        prm = self.params.pink_noise
        snr = _uniform(g, (rows.numel(),), prm.snr_db, clips.device)
        return _apply_rows(clips, rows, lambda x, _: pink_noise(x, snr, g))

    def _time_shift(self, clips: Tensor, rows: Tensor, g: torch.Generator, _acc) -> Tensor:
        limit = math.floor(self.params.time_shift.max_fraction * clips.shape[-1])
        shifts = _randint(g, (rows.numel(),), -limit, limit, clips.device)
        return _apply_rows(clips, rows, lambda x, _: time_shift(x, shifts))

    def _volume_modulation(self, clips: Tensor, rows: Tensor, g: torch.Generator, _acc) -> Tensor:
        prm, n = self.params.volume_modulation, rows.numel()
        depth = _uniform(g, (n,), prm.depth, clips.device)
        rate = _uniform(g, (n,), prm.rate_hz, clips.device)
        phase = _uniform(g, (n,), (0.0, 2 * math.pi), clips.device)
        return _apply_rows(clips, rows, lambda x, _: volume_modulation(x, depth, rate, phase, self.sample_rate))

    def _click_track(self, clips: Tensor, rows: Tensor, g: torch.Generator, _acc) -> Tensor:
        prm, n = self.params.click_track, rows.numel()
        level = _uniform(g, (n,), prm.level_db, clips.device)
        duration = _uniform(g, (n,), prm.duration_ms, clips.device) / 1000

        def add_clicks(x: Tensor, _rows: Tensor) -> Tensor:
            bpm, first = estimate_beat_grid(x, self.sample_rate, prm.min_bpm, prm.max_bpm)
            return click_track(x, self.sample_rate, bpm, first, level, duration, prm.frequency_hz)

        return _apply_rows(clips, rows, add_clicks)

    def _pitch_shift(self, clips: Tensor, rows: Tensor, g: torch.Generator, _acc) -> Tensor:
        prm = self.params.pitch_shift
        choices = torch.tensor(prm.semitones, dtype=torch.float32)
        steps = choices[_randint(g, (rows.numel(),), 0, len(choices) - 1, torch.device("cpu"))]
        out = clips.clone()
        for step in sorted(set(steps.tolist())):  # one batched call per distinct shift
            group = rows[(steps == step).to(rows.device)]
            out[group] = pitch_shift(clips.index_select(0, group), step, self.sample_rate, prm.n_fft)
        return out

    def _remix(self, clips: Tensor, rows: Tensor, g: torch.Generator, accompaniment: Tensor) -> Tensor:
        batch = clips.shape[0]
        # A roll by k in 1..B-1 is a derangement: every clip gets a different row's accompaniment.
        k = _randint(g, (1,), 1, batch - 1, clips.device)
        level = _uniform(g, (rows.numel(),), self.params.remix.vocal_to_accompaniment_db, clips.device)
        return _apply_rows(clips, rows, lambda x, r: remix(x, accompaniment, (r + k) % batch, level))


def _check_clips(clips: Tensor, accompaniment: Tensor | None) -> None:
    if clips.ndim != 2:
        raise ValueError(f"clips must be [batch, samples], got shape {tuple(clips.shape)}")
    if accompaniment is not None and accompaniment.shape != clips.shape:
        raise ValueError(f"accompaniment shape {tuple(accompaniment.shape)} differs from clips {tuple(clips.shape)}")
