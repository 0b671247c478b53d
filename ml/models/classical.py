"""The 30 hand-made features of Tzanetakis & Cook (2002, "Musical genre classification of audio
signals", IEEE TSAP 10(5)) per clip, batched in torch on the clip's device.

Analysis frames are 512 samples (32 ms at 16 kHz; ~23 ms at 22.05 kHz as in the paper), hop 256,
Hann window, no padding (frames lie inside the clip); statistics are over the whole clip.

- Timbral texture (19): mean and variance over frames of the spectral centroid (Hz), the 85 % roll-off
  (Hz, the first bin where the cumulative magnitude reaches 85 %), the spectral flux (squared
  difference of successive L2-normalised magnitude spectra) and the zero-crossing rate (crossings per
  sample pair: a sine of f Hz gives 2f/sr); low energy (fraction of frames whose RMS is below the
  clip's mean frame RMS); mean and variance of MFCCs 0-4 (librosa's: 40 Slaney mels, power to dB
  with an 80 dB floor below the clip's peak, orthonormal DCT-II).
- Rhythmic content (6): a beat histogram over 40-200 BPM (1 BPM bins, linear interpolation between
  lags) from the autocorrelation of an onset envelope (half-wave rectified flux of the mel amplitudes
  over the clip's mean mel amplitude, mean removed; autocorrelation per frame): A0, A1 the two highest
  peaks over the histogram's sum, RA = A1 / A0, their tempi P1, P2 (BPM), SUM the histogram's sum.
- Pitch content (5): the clip averaged down to about 8 kHz (over sample pairs at 16 kHz), 256-sample
  frames without overlap; per frame an autocorrelation pitch (divided by the window's autocorrelation as in Boersma
  1993, the first peak within 90 % of the highest, parabolic lag refinement) over MIDI 40-84, kept
  where that peak is >= 0.6 and the frame within 40 dB of the clip's loudest. Histograms count pitched
  frames over all frames, unfolded over MIDI notes and folded over the 12 pitch classes in
  circle-of-fifths order (index 7 * pc mod 12: C=0, G=1, D=2, A=3, ...; its own inverse). FA0 the
  folded maximum, UP0 the MIDI note of the unfolded maximum, FP0 the fifths index of the folded
  maximum, IPO1 the distance in fifths (0-6) between the two largest folded bins (0 with fewer than
  two), SUM the unfolded sum (the fraction of frames with a pitch).

An all-zero clip gives all zeros.
"""

from __future__ import annotations

import math

import torch
import torchaudio
from torch import nn

N_FFT = 512
HOP = 256
N_MELS = 40
N_MFCC = 5
ROLLOFF = 0.85
TOP_DB = 80.0
BPM_MIN, BPM_MAX = 40, 200
MIDI_MIN, MIDI_MAX = 40, 84
VOICING = 0.6
_CHUNK = 16  # clips per pass: bounds the (chunk, frames, 257) spectra

FEATURE_NAMES: tuple[str, ...] = (
    *(f"{n}_{s}" for n in ("centroid", "rolloff", "flux", "zcr") for s in ("mean", "var")),
    "low_energy",
    *(f"mfcc{i}_{s}" for i in range(N_MFCC) for s in ("mean", "var")),
    "beat_A0", "beat_A1", "beat_RA", "beat_P1", "beat_P2", "beat_SUM",
    "pitch_FA0", "pitch_UP0", "pitch_FP0", "pitch_IPO1", "pitch_SUM",
)  # fmt: skip


def _hz(midi: float) -> float:
    return 440.0 * 2 ** ((midi - 69) / 12)


def _constants(sample_rate: int, device: torch.device) -> dict[str, torch.Tensor]:
    window = torch.hann_window(N_FFT, device=device)
    half_window = torch.hann_window(N_FFT // 2, device=device)
    w_acf = torch.fft.irfft(_power(torch.fft.rfft(half_window, N_FFT)), N_FFT)
    freqs = torch.linspace(0, sample_rate / 2, N_FFT // 2 + 1, device=device)
    fb = torchaudio.functional.melscale_fbanks(N_FFT // 2 + 1, 0.0, sample_rate / 2, N_MELS, sample_rate,
                                               norm="slaney", mel_scale="slaney")  # fmt: skip
    return {
        "window": window,
        "half_window": half_window,
        "w_acf": w_acf / w_acf[0],
        "freqs": freqs,
        "ones_freqs": torch.stack([torch.ones_like(freqs), freqs], dim=1),
        "fb_ones": torch.cat([fb, torch.ones(N_FFT // 2 + 1, 1)], dim=1).to(device),  # mels and the energy
        "dct": torchaudio.functional.create_dct(N_MFCC, N_MELS, "ortho").to(device),
    }


def _mean_var(x: torch.Tensor) -> list[torch.Tensor]:
    """(B, F[, K]) → mean and variance over frames, per trailing column."""
    mean, var = x.mean(1), x.var(1, correction=0)
    return [mean, var] if x.dim() == 2 else [t for i in range(x.shape[2]) for t in (mean[:, i], var[:, i])]


def _beat(mel: torch.Tensor, frame_rate: float) -> list[torch.Tensor]:
    amplitude = mel.sqrt()
    onset = (amplitude[:, 1:] - amplitude[:, :-1]).clamp_min(0).sum(-1)
    onset = onset / amplitude.sum(-1).mean(1, keepdim=True).clamp_min(1e-20)  # relative to the clip's level
    onset = onset - onset.mean(1, keepdim=True)
    lags = 60 * frame_rate / torch.arange(BPM_MIN, BPM_MAX + 1, device=mel.device, dtype=torch.float32)
    n = 2 ** math.ceil(math.log2(2 * max(onset.shape[1], int(lags[0]) + 2)))
    acf = torch.fft.irfft(_power(torch.fft.rfft(onset, n)), n) / onset.shape[1]
    i0 = lags.floor().long()
    frac = lags - i0
    hist = (acf[:, i0] * (1 - frac) + acf[:, i0 + 1] * frac).clamp_min(0)  # (B, 161), bin k = BPM_MIN + k
    total = hist.sum(1)
    inner = hist[:, 1:-1]
    peak = (inner > hist[:, :-2]) & (inner >= hist[:, 2:])
    value, index = torch.where(peak, inner, -1.0).topk(2, dim=1)
    found = value > 0
    amp = torch.where(found, value, 0) / total.clamp_min(1e-20).unsqueeze(1)
    bpm = torch.where(found, index + BPM_MIN + 1, 0).float()
    return [amp[:, 0], amp[:, 1], amp[:, 1] / amp[:, 0].clamp_min(1e-10), bpm[:, 0], bpm[:, 1], total]


def _pitch(x: torch.Tensor, sample_rate: int, k: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    factor = max(1, round(sample_rate / 8000))  # means over `factor` samples: a box low-pass, decimated
    rate = sample_rate / factor
    low = x[:, : x.shape[1] // factor * factor].reshape(x.shape[0], -1, factor).mean(-1)
    frames = low.unfold(1, N_FFT // 2, N_FFT // 2) * k["half_window"]  # (B, F', N/2): 32 ms, no overlap
    lo, hi = math.floor(rate / _hz(MIDI_MAX)), math.ceil(rate / _hz(MIDI_MIN))
    acf = torch.fft.irfft(_power(torch.fft.rfft(frames, N_FFT)), N_FFT)[..., : hi + 2]
    energy = acf[..., 0]
    r = acf / energy.clamp_min(1e-20).unsqueeze(-1) / k["w_acf"][: hi + 2]
    seg, left, right = r[..., lo : hi + 1], r[..., lo - 1 : hi], r[..., lo + 1 : hi + 2]
    peak = (seg >= left) & (seg > right)
    best = torch.where(peak, seg, -1.0).amax(-1, keepdim=True)
    first = (peak & (seg >= 0.9 * best)).float().argmax(-1, keepdim=True)  # the shortest near-best lag
    a, b, c = left.gather(-1, first), seg.gather(-1, first), right.gather(-1, first)
    denom = a - 2 * b + c
    delta = torch.where(denom < 0, 0.5 * (a - c) / denom.clamp_max(-1e-10), 0).clamp(-0.5, 0.5)
    lag = (lo + first + delta).squeeze(-1)
    note = (69 + 12 * torch.log2(rate / lag / 440)).round().long().clamp(0, 127)
    loud = (energy > 0) & (energy >= 1e-4 * energy.amax(1, keepdim=True))  # within 40 dB of the loudest
    voiced = ((best.squeeze(-1) >= VOICING) & loud).float() / frames.shape[1]
    unfolded = voiced.new_zeros(voiced.shape[0], 128).scatter_add_(1, note, voiced)
    folded = voiced.new_zeros(voiced.shape[0], 12).scatter_add_(1, (7 * note) % 12, voiced)
    top, where = folded.topk(2, dim=1)
    d = (where[:, 1] - where[:, 0]).abs()
    ipo = torch.where(top[:, 1] > 0, torch.minimum(d, 12 - d), 0).float()
    return [top[:, 0], unfolded.argmax(1).float(), folded.argmax(1).float(), ipo, unfolded.sum(1)]


def _power(spec: torch.Tensor) -> torch.Tensor:
    return spec.real.square() + spec.imag.square()


def _blocks(x: torch.Tensor, n_frames: int) -> torch.Tensor:
    """(B, T) → (B, F) sums over each frame's N samples, as sums of its two hop-long halves."""
    block = x[:, : (n_frames + 1) * HOP].reshape(x.shape[0], n_frames + 1, HOP).sum(-1)
    return block[:, :-1] + block[:, 1:]


def _features(x: torch.Tensor, sample_rate: int, k: dict[str, torch.Tensor]) -> torch.Tensor:
    frames = x.unfold(1, N_FFT, HOP)  # (B, F, N) view
    n_frames = frames.shape[1]
    mag = torch.fft.rfft(frames * k["window"]).abs()  # (B, F, N/2 + 1)
    power = mag * mag
    total, weighted = (mag @ k["ones_freqs"]).unbind(-1)
    centroid = weighted / total.clamp_min(1e-20)
    below = torch.searchsorted(mag.cumsum(-1), ROLLOFF * total.unsqueeze(-1)).squeeze(-1)  # bins under 85 %
    rolloff = k["freqs"][below.clamp_max(N_FFT // 2)]
    mel_energy = power @ k["fb_ones"]
    mel, norm = mel_energy[..., :-1], mel_energy[..., -1].sqrt()
    on = (norm > 0).float()  # flux = 2 - 2 cos between successive spectra, a silent one being the zero vector
    cos = (mag[:, 1:] * mag[:, :-1]).sum(-1) / (norm[:, 1:] * norm[:, :-1]).clamp_min(1e-20)
    flux = (on[:, 1:] + on[:, :-1] - 2 * cos).clamp_min(0)
    sign = x >= 0
    crossing = nn.functional.pad((sign[:, 1:] != sign[:, :-1]).float(), (0, 1))
    zcr = _blocks(crossing, n_frames) / N_FFT  # sample pairs starting in the frame
    rms = _blocks(x.square(), n_frames).div(N_FFT).sqrt()
    low_energy = (rms < rms.mean(1, keepdim=True)).float().mean(1)
    db = 10 * torch.log10(mel.clamp_min(1e-10))
    db = torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - TOP_DB)
    mfcc = db @ k["dct"]
    columns = [*_mean_var(centroid), *_mean_var(rolloff), *_mean_var(flux), *_mean_var(zcr), low_energy,
               *_mean_var(mfcc), *_beat(mel, sample_rate / HOP), *_pitch(x, sample_rate, k)]  # fmt: skip
    out = torch.stack(columns, dim=1)
    return torch.where(x.abs().amax(1, keepdim=True) > 0, torch.nan_to_num(out), 0)


def tzanetakis_features(audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Clips (B, T) → (B, 30) float32 in the order of ``FEATURE_NAMES``, on the clips' device."""
    if audio.dim() != 2 or audio.shape[1] < N_FFT + HOP:
        raise ValueError(f"audio must be (B, T) with T >= {N_FFT + HOP} samples")
    audio = audio.float()
    k = _constants(sample_rate, audio.device)
    return torch.cat([_features(chunk, sample_rate, k) for chunk in audio.split(_CHUNK)])


class ClassicalFeatures(nn.Module):
    """Tzanetakis & Cook's features as an embedding extractor: ``embed(audio)`` (B, T) → (B, 30)."""

    embedding_size = len(FEATURE_NAMES)

    def __init__(self, sample_rate: int = 16000) -> None:
        super().__init__()
        self.sample_rate = sample_rate

    @torch.no_grad()
    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        return tzanetakis_features(audio, self.sample_rate)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.embed(audio)
