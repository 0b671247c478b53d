"""On-the-fly data augmentation: batch-wise, seeded, on the batch's device.

Training batches pass through two chains: :class:`AudioAugmenter` on the waveforms (before the
log-mel), then :class:`SpectrogramAugmenter` on the log-mels. Both are built from the ``augment:``
section of params.yaml (:meth:`AugmentParams.from_params`). Every transform

* works on the whole batch at once with tensor ops, on the batch's device (CPU or CUDA);
* decides per sample (per row of the batch) whether to apply itself, with its probability ``p``;
* draws every random number from the ``torch.Generator`` it is given, so the same seed gives the same
  output. The generator may live on the CPU or on the batch's device: numbers are drawn on the
  generator's device and moved, so a CPU generator gives the same augmentation on CPU and CUDA (a
  generator on the batch's device is faster for the noise transforms on CUDA);
* is the exact identity when ``p == 0`` (the input tensor itself is returned, nothing is drawn), and
  leaves the rows it does not select bit-for-bit unchanged.

Each transform is also a plain function with explicit parameters (``gaussian_noise(clips, snr_db)``,
``time_mask(log_mel, start, width)``...), and one named transform can be applied alone with
``AudioAugmenter.apply(name, ...)`` / ``SpectrogramAugmenter.apply(name, ...)`` (the figure script
``scripts/render_augmentations.py`` does).

Audio chain (``clips: Tensor[B, T]``, mono), in this fixed order — :data:`AUDIO_TRANSFORMS`:

1. ``remix`` — the clip's vocals over another clip's accompaniment (needs ``accompaniment``; first, while
   the accompaniment rows are still aligned with the clips).
2. ``pitch_shift`` — ±1 semitone, duration kept (the genre report: SoX pitch shift by half a tone).
3. ``time_shift`` — circular time shift (RecoNet report, p=.3).
4. ``volume_modulation`` — sine volume modulation (RecoNet report "volume control", p=.1).
5. ``click_track`` — clicks on the clip's estimated beat grid (RecoNet report, p=.25); after the
   transforms above so the clicks follow the clip as it now is, before the noise so that the tempo
   estimate is not disturbed by it.
6. ``pink_noise`` — 1/f noise at a drawn SNR (RecoNet report, p=.5).
7. ``gaussian_noise`` — white noise at a drawn SNR (RecoNet report, p=.5). Each noise's SNR is measured
   against the clip as it enters that step.

Spectrogram chain (``log_mel: Tensor[B, n_mels, frames]`` in dB), in this order —
:data:`SPECTROGRAM_TRANSFORMS`:

1. ``brightness`` — a global gain in dB (RecoNet report "random brightness", p=.4).
2. ``time_roll`` — circular roll along time (the fingerprint report's "spectrogram rolling").
3. ``frequency_mask`` and 4. ``time_mask`` — SpecAugment masks (the fingerprint report).
5. ``cutout`` and 6. ``coarse_dropout`` — one large / many small rectangles (RecoNet report).

Masked cells are set to the sample's minimum over its whole log-mel (computed before the mask), i.e.
to its silence floor: in a dB spectrogram, 0 would be a loud value, while the minimum reads as "nothing
here", which is what the reports' zero-fill means on their [0, 1]-normalised images.

Silence: the noise, remix and click-track levels are relative to the clip's own RMS, so a clip that
is pure digital silence stays silence (an SNR against silence is undefined, and noise at an arbitrary
absolute floor would invent a signal the clip does not have).

Speed (measured on the 2-core development CPU, torch 2.9.1, 32 clips × 10 s at 16 kHz, best of 7, one
torch thread while another job kept both cores busy): the whole audio chain with every p=1 except pitch
shift takes about 0.4 s per batch (click track with its tempo estimate 0.21 s, pink noise 0.06 s, remix
0.04 s, gaussian noise 0.03 s, time shift and volume modulation 0.02 s each); pitch shift takes about
1.1 s for 32 clips (phase vocoder), so about 0.35 s per batch at its default p=0.3. The chain at its
default probabilities takes about 0.3–0.4 s per batch. The whole spectrogram chain on 32 × 128 × 313
log-mels with every p=1 takes about 11 ms.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import Tensor

__all__ = [
    "AUDIO_TRANSFORMS",
    "SPECTROGRAM_TRANSFORMS",
    "AugmentParams",
    "AudioAugmenter",
    "SpectrogramAugmenter",
    "add_noise_at_snr",
    "brightness",
    "click_track",
    "draw_rectangles",
    "estimate_beat_grid",
    "estimate_tempo",
    "frequency_mask",
    "gaussian_noise",
    "mask_rectangles",
    "onset_strength",
    "pink_noise",
    "pink_noise_like",
    "pitch_shift",
    "remix",
    "rms",
    "snr_db",
    "time_mask",
    "time_roll",
    "time_shift",
    "volume_modulation",
]

AUDIO_TRANSFORMS = (
    "remix",
    "pitch_shift",
    "time_shift",
    "volume_modulation",
    "click_track",
    "pink_noise",
    "gaussian_noise",
)
SPECTROGRAM_TRANSFORMS = (
    "brightness",
    "time_roll",
    "frequency_mask",
    "time_mask",
    "cutout",
    "coarse_dropout",
)


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Section:
    """One transform's parameters: ``p`` (per-sample probability), its ranges ``(low, high)`` and settings.

    Fields made with :func:`_range` are ``[low, high]`` pairs (low <= high); fields made with
    :func:`_bounded` are numbers; both may carry bounds, checked here with a message naming the key.
    """

    section: ClassVar[str] = ""
    p: float = 0.0

    def __post_init__(self) -> None:
        name = type(self).section
        if not 0.0 <= float(self.p) <= 1.0:
            raise ValueError(f"augment.{name}.p must be within [0, 1], got {self.p}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            low, high = f.metadata.get("min"), f.metadata.get("max")
            if f.metadata.get("range"):
                if len(value) != 2 or float(value[0]) > float(value[1]):
                    raise ValueError(f"augment.{name}.{f.name} must be [low, high] with low <= high, got {list(value)}")
                value = value[0], value[1]
            else:
                value = value, value
            if low is not None and float(value[0]) < low:
                raise ValueError(f"augment.{name}.{f.name} must be >= {low}, got {getattr(self, f.name)}")
            if high is not None and float(value[1]) > high:
                raise ValueError(f"augment.{name}.{f.name} must be <= {high}, got {getattr(self, f.name)}")


def _range(default: tuple[float, float], lo: float | None = None, hi: float | None = None) -> Any:
    """A ``[low, high]`` parameter, values drawn uniformly in it; ``lo``/``hi`` bound both ends."""
    return field(default=default, metadata={"range": True, "min": lo, "max": hi})


def _bounded(default: float, lo: float | None = None, hi: float | None = None) -> Any:
    """A number within [lo, hi]."""
    return field(default=default, metadata={"min": lo, "max": hi})


@dataclass(frozen=True)
class GaussianNoiseParams(_Section):
    """White gaussian noise at an SNR (dB) drawn uniformly from ``snr_db``."""

    section: ClassVar[str] = "gaussian_noise"
    p: float = 0.5
    snr_db: tuple[float, float] = _range((10.0, 30.0))


@dataclass(frozen=True)
class PinkNoiseParams(_Section):
    """Pink (1/f power) noise at an SNR (dB) drawn uniformly from ``snr_db``."""

    section: ClassVar[str] = "pink_noise"
    p: float = 0.5
    snr_db: tuple[float, float] = _range((10.0, 30.0))


@dataclass(frozen=True)
class TimeShiftParams(_Section):
    """Circular shift by up to ``max_fraction`` of the clip, either way."""

    section: ClassVar[str] = "time_shift"
    p: float = 0.3
    max_fraction: float = _bounded(1.0, 0.0, 1.0)


@dataclass(frozen=True)
class VolumeModulationParams(_Section):
    """gain(t) = 1 + depth·sin(2π·rate·t + φ), depth and rate (Hz) drawn from their ranges."""

    section: ClassVar[str] = "volume_modulation"
    p: float = 0.1
    depth: tuple[float, float] = _range((0.1, 0.5), 0.0, 1.0)
    rate_hz: tuple[float, float] = _range((0.1, 2.0), 0.0)


@dataclass(frozen=True)
class ClickTrackParams(_Section):
    """Decaying sine clicks on the clip's estimated beat grid; peak level relative to the clip's RMS."""

    section: ClassVar[str] = "click_track"
    p: float = 0.25
    level_db: tuple[float, float] = _range((0.0, 10.0))
    duration_ms: tuple[float, float] = _range((10.0, 20.0), 0.1)
    frequency_hz: float = _bounded(1000.0, 1.0)
    min_bpm: float = _bounded(60.0, 1.0)
    max_bpm: float = _bounded(180.0, 1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_bpm >= self.max_bpm:
            raise ValueError(f"augment.click_track: min_bpm ({self.min_bpm}) must be below max_bpm ({self.max_bpm})")


@dataclass(frozen=True)
class PitchShiftParams(_Section):
    """Pitch shift by a number of semitones drawn from ``semitones`` (a set of steps), duration kept."""

    section: ClassVar[str] = "pitch_shift"
    p: float = 0.3
    semitones: tuple[float, ...] = (-1.0, 1.0)
    n_fft: int = _bounded(512, 16)


@dataclass(frozen=True)
class RemixParams(_Section):
    """The clip over another row's accompaniment at a vocal-to-accompaniment RMS ratio (dB)."""

    section: ClassVar[str] = "remix"
    p: float = 0.3
    vocal_to_accompaniment_db: tuple[float, float] = _range((-5.0, 10.0))


@dataclass(frozen=True)
class BrightnessParams(_Section):
    """A global gain (dB) added to the whole log-mel."""

    section: ClassVar[str] = "brightness"
    p: float = 0.4
    gain_db: tuple[float, float] = _range((-6.0, 6.0))


@dataclass(frozen=True)
class TimeRollParams(_Section):
    """Circular roll along time by up to ``max_fraction`` of the frames, either way."""

    section: ClassVar[str] = "time_roll"
    p: float = 0.5
    max_fraction: float = _bounded(1.0, 0.0, 1.0)


@dataclass(frozen=True)
class FrequencyMaskParams(_Section):
    """SpecAugment frequency masks: ``n_masks`` bands of 0..``max_width`` consecutive mel bands."""

    section: ClassVar[str] = "frequency_mask"
    p: float = 0.5
    n_masks: int = _bounded(2, 0)
    max_width: int = _bounded(16, 0)


@dataclass(frozen=True)
class TimeMaskParams(_Section):
    """SpecAugment time masks: ``n_masks`` spans of 0..``max_width`` consecutive frames."""

    section: ClassVar[str] = "time_mask"
    p: float = 0.5
    n_masks: int = _bounded(2, 0)
    max_width: int = _bounded(40, 0)


@dataclass(frozen=True)
class CutoutParams(_Section):
    """``n_rects`` rectangles whose sides are fractions of the mels and of the frames."""

    section: ClassVar[str] = "cutout"
    p: float = 0.5
    n_rects: int = _bounded(1, 0)
    mel_fraction: tuple[float, float] = _range((0.1, 0.3), 0.0, 1.0)
    frame_fraction: tuple[float, float] = _range((0.1, 0.3), 0.0, 1.0)


@dataclass(frozen=True)
class CoarseDropoutParams(_Section):
    """A count (drawn from ``count``) of small rectangles, sides as fractions of mels and frames."""

    section: ClassVar[str] = "coarse_dropout"
    p: float = 0.5
    count: tuple[int, int] = _range((4, 12), 0)
    mel_fraction: tuple[float, float] = _range((0.02, 0.08), 0.0, 1.0)
    frame_fraction: tuple[float, float] = _range((0.02, 0.08), 0.0, 1.0)


_SECTIONS: dict[str, type[_Section]] = {
    cls.section: cls
    for cls in (
        RemixParams,
        PitchShiftParams,
        TimeShiftParams,
        VolumeModulationParams,
        ClickTrackParams,
        PinkNoiseParams,
        GaussianNoiseParams,
        BrightnessParams,
        TimeRollParams,
        FrequencyMaskParams,
        TimeMaskParams,
        CutoutParams,
        CoarseDropoutParams,
    )
}


def _convert(section: str, key: str, default: Any, value: Any) -> Any:
    """Coerce a YAML value to the type of the field's default (tuples from lists, ints, floats)."""
    where = f"augment.{section}.{key}"
    try:
        if isinstance(default, tuple):
            if not isinstance(value, list | tuple) or not value:
                raise TypeError
            return tuple(_convert(section, key, default[0], v) for v in value)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError
            return value
        if isinstance(default, int):
            if isinstance(value, bool) or float(value) != int(value):
                raise TypeError
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{where}: expected a value like {list(default) if isinstance(default, tuple) else default!r}"
            f", got {value!r}"
        ) from None
    return value


@dataclass(frozen=True)
class AugmentParams:
    """Every transform's parameters: the ``augment:`` section of params.yaml.

    Each transform has its own sub-section (named as in :data:`AUDIO_TRANSFORMS` and
    :data:`SPECTROGRAM_TRANSFORMS`) with ``p`` and its ranges; missing sections or keys take the
    defaults of the dataclasses above (the RecoNet report's probabilities). Unknown sections or keys
    raise ``ValueError`` naming them, so a typo cannot pass silently.
    """

    remix: RemixParams = field(default_factory=RemixParams)
    pitch_shift: PitchShiftParams = field(default_factory=PitchShiftParams)
    time_shift: TimeShiftParams = field(default_factory=TimeShiftParams)
    volume_modulation: VolumeModulationParams = field(default_factory=VolumeModulationParams)
    click_track: ClickTrackParams = field(default_factory=ClickTrackParams)
    pink_noise: PinkNoiseParams = field(default_factory=PinkNoiseParams)
    gaussian_noise: GaussianNoiseParams = field(default_factory=GaussianNoiseParams)
    brightness: BrightnessParams = field(default_factory=BrightnessParams)
    time_roll: TimeRollParams = field(default_factory=TimeRollParams)
    frequency_mask: FrequencyMaskParams = field(default_factory=FrequencyMaskParams)
    time_mask: TimeMaskParams = field(default_factory=TimeMaskParams)
    cutout: CutoutParams = field(default_factory=CutoutParams)
    coarse_dropout: CoarseDropoutParams = field(default_factory=CoarseDropoutParams)

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> AugmentParams:
        """Build from the ``augment:`` mapping of params.yaml (``params["augment"]``, not the whole file)."""
        params = {} if params is None else params
        if not isinstance(params, Mapping):
            raise ValueError(f"augment: expected a mapping of transform sections, got {type(params).__name__}")
        sections = {}
        for name, values in params.items():
            if name not in _SECTIONS:
                hint = " (pass params['augment'], not the whole params.yaml)" if name == "augment" else ""
                raise ValueError(f"augment: unknown transform section {name!r}{hint}; known: {', '.join(_SECTIONS)}")
            section_cls = _SECTIONS[name]
            values = {} if values is None else values
            if not isinstance(values, Mapping):
                raise ValueError(f"augment.{name}: expected a mapping of parameters, got {values!r}")
            defaults = {f.name: f.default for f in dataclasses.fields(section_cls)}
            kwargs = {}
            for key, value in values.items():
                if key not in defaults:
                    raise ValueError(f"augment.{name}: unknown parameter {key!r}; known: {', '.join(defaults)}")
                kwargs[key] = _convert(name, key, defaults[key], value)
            sections[name] = section_cls(**kwargs)
        return cls(**sections)

    def with_p(self, p: float) -> AugmentParams:
        """The same parameters with every transform's probability set to ``p`` (figures, benchmarks)."""
        return dataclasses.replace(self, **{name: dataclasses.replace(getattr(self, name), p=p) for name in _SECTIONS})


# ----------------------------------------------------------------------------------------------
# Random numbers (drawn on the generator's device, then moved to the data's device)
# ----------------------------------------------------------------------------------------------


def _gen_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def _rand(generator: torch.Generator | None, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """Uniform [0, 1) float32 of ``shape`` from ``generator``, on ``device``."""
    return torch.rand(shape, generator=generator, device=_gen_device(generator, device)).to(device)


def _randn(generator: torch.Generator | None, shape: tuple[int, ...], device: torch.device) -> Tensor:
    return torch.randn(shape, generator=generator, device=_gen_device(generator, device)).to(device)


def _uniform(generator: torch.Generator | None, shape: tuple[int, ...], bounds, device: torch.device) -> Tensor:
    low, high = float(bounds[0]), float(bounds[1])
    return _rand(generator, shape, device) * (high - low) + low


def _randint(generator: torch.Generator | None, shape: tuple[int, ...], low, high, device: torch.device) -> Tensor:
    """Integers uniform in [low, high] (inclusive; ``low``/``high`` may be tensors broadcasting to shape)."""
    u = _rand(generator, shape, device)
    span = torch.as_tensor(high, device=device) - torch.as_tensor(low, device=device) + 1
    return (u * span).floor().long().clamp_max(span - 1) + torch.as_tensor(low, device=device).long()


def _per_row(value: float | Tensor, x: Tensor) -> Tensor:
    """A scalar or a [B] tensor as a float32 [B, 1] column on x's device."""
    v = torch.as_tensor(value, dtype=torch.float32, device=x.device)
    return v.reshape(-1, 1).expand(x.shape[0], 1) if v.numel() == 1 else v.reshape(x.shape[0], 1)


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


# ----------------------------------------------------------------------------------------------
# Spectrogram transforms (plain functions; log_mel: [B, n_mels, frames] in dB)
# ----------------------------------------------------------------------------------------------


def _fill_value(log_mel: Tensor, fill: float | Tensor | None) -> Tensor:
    if fill is None:
        return log_mel.amin(dim=(-2, -1), keepdim=True)
    return torch.as_tensor(fill, dtype=log_mel.dtype, device=log_mel.device).reshape(-1, 1, 1)


def brightness(log_mel: Tensor, gain_db: float | Tensor) -> Tensor:
    """Add ``gain_db`` (per row) to the whole log-mel: the clip played louder or softer (RecoNet, p=.4)."""
    return log_mel + torch.as_tensor(gain_db, dtype=log_mel.dtype, device=log_mel.device).reshape(-1, 1, 1)


def time_roll(log_mel: Tensor, shifts: Tensor) -> Tensor:
    """Circular roll of each row along time by ``shifts[b]`` frames (the fingerprint report)."""
    n = log_mel.shape[-1]
    t = torch.arange(n, device=log_mel.device)
    index = torch.remainder(t - shifts.to(log_mel.device).long().reshape(-1, 1), n)
    return log_mel.gather(-1, index.unsqueeze(1).expand_as(log_mel))


def _span_mask(start: Tensor, width: Tensor, size: int) -> Tensor:
    """[B, n, size] booleans: position i is within [start, start + width) of mask (b, j)."""
    i = torch.arange(size, device=start.device)
    return (i >= start.unsqueeze(-1)) & (i < (start + width).unsqueeze(-1))


def mask_rectangles(
    log_mel: Tensor,
    mel_start: Tensor,
    mel_width: Tensor,
    frame_start: Tensor,
    frame_width: Tensor,
    fill: float | Tensor | None = None,
) -> Tensor:
    """Set rectangles to ``fill`` (default: each sample's minimum). Arguments are [B, n] (n rectangles).

    Rectangle (b, j) covers mel bands [mel_start, mel_start + mel_width) and frames
    [frame_start, frame_start + frame_width); a zero width masks nothing.
    """
    n_mels, n_frames = log_mel.shape[-2:]
    mels = _span_mask(mel_start.to(log_mel.device), mel_width.to(log_mel.device), n_mels).float()
    frames = _span_mask(frame_start.to(log_mel.device), frame_width.to(log_mel.device), n_frames).float()
    covered = torch.bmm(mels.transpose(1, 2), frames) > 0  # [B, n_mels, n_frames]
    return torch.where(covered, _fill_value(log_mel, fill), log_mel)


def frequency_mask(log_mel: Tensor, start: Tensor, width: Tensor, fill: float | Tensor | None = None) -> Tensor:
    """SpecAugment frequency masks: mel bands [start, start + width) of every frame set to ``fill``."""
    covered = _span_mask(start.to(log_mel.device), width.to(log_mel.device), log_mel.shape[-2]).any(1)
    return torch.where(covered.unsqueeze(-1), _fill_value(log_mel, fill), log_mel)


def time_mask(log_mel: Tensor, start: Tensor, width: Tensor, fill: float | Tensor | None = None) -> Tensor:
    """SpecAugment time masks: frames [start, start + width) of every mel band set to ``fill``."""
    covered = _span_mask(start.to(log_mel.device), width.to(log_mel.device), log_mel.shape[-1]).any(1)
    return torch.where(covered.unsqueeze(-2), _fill_value(log_mel, fill), log_mel)


def draw_rectangles(
    generator: torch.Generator | None,
    batch: int,
    n_rects: int,
    size: tuple[int, int],
    mel_fraction: tuple[float, float],
    frame_fraction: tuple[float, float],
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random rectangles inside a (n_mels, frames) image: ``(mel_start, mel_width, frame_start, frame_width)``.

    Each side is round(fraction·size) (at least 1) with the fraction uniform in its range; the rectangle
    lies wholly inside the image, its position uniform. All four are [batch, n_rects] long tensors.
    """
    out = []
    for extent, fraction in zip(size, (mel_fraction, frame_fraction), strict=True):
        width = (_uniform(generator, (batch, n_rects), fraction, device) * extent).round().long().clamp(1, extent)
        start = _randint(generator, (batch, n_rects), 0, extent - width, device)
        out += [start, width]
    return out[0], out[1], out[2], out[3]


# ----------------------------------------------------------------------------------------------
# The chains
# ----------------------------------------------------------------------------------------------


def _select(generator: torch.Generator | None, batch: int, p: float, device: torch.device) -> Tensor | None:
    """Rows (long indices) that apply a transform of probability ``p``; None when p == 0 (nothing drawn)."""
    if p <= 0 or batch == 0:
        return None
    rows = torch.nonzero(_rand(generator, (batch,), device) < p).squeeze(-1)
    return rows if rows.numel() else None


def _apply_rows(x: Tensor, rows: Tensor | None, fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """``fn(x[rows], rows)`` written back into a copy of ``x`` (x itself when no row is selected)."""
    if rows is None:
        return x
    if rows.numel() == x.shape[0]:
        return fn(x, rows)
    out = x.clone()
    out[rows] = fn(x.index_select(0, rows), rows)
    return out


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


class SpectrogramAugmenter:
    """The spectrogram chain (:data:`SPECTROGRAM_TRANSFORMS`, in that order) on log-mels [B, n_mels, frames].

    ``SpectrogramAugmenter(params)(log_mel, generator)``; masks fill with each sample's minimum.
    """

    def __init__(self, params: AugmentParams | Mapping[str, Any] | None = None):
        self.params = params if isinstance(params, AugmentParams) else AugmentParams.from_params(params)

    def __call__(self, log_mel: Tensor, generator: torch.Generator) -> Tensor:
        _check_log_mel(log_mel)
        for name in SPECTROGRAM_TRANSFORMS:
            log_mel = self._run(name, log_mel, generator, getattr(self.params, name).p)
        return log_mel

    def apply(self, name: str, log_mel: Tensor, generator: torch.Generator, p: float | None = None) -> Tensor:
        """Apply the one transform ``name`` alone, with its configured ``p`` or the given one (1: every row)."""
        if name not in SPECTROGRAM_TRANSFORMS:
            raise ValueError(f"unknown spectrogram transform {name!r}; known: {', '.join(SPECTROGRAM_TRANSFORMS)}")
        _check_log_mel(log_mel)
        return self._run(name, log_mel, generator, getattr(self.params, name).p if p is None else p)

    def _run(self, name: str, log_mel: Tensor, g: torch.Generator, p: float) -> Tensor:
        rows = _select(g, log_mel.shape[0], p, log_mel.device)
        if rows is None:
            return log_mel
        return getattr(self, "_" + name)(log_mel, rows, g)

    def _brightness(self, log_mel: Tensor, rows: Tensor, g: torch.Generator) -> Tensor:
        gain = _uniform(g, (rows.numel(),), self.params.brightness.gain_db, log_mel.device)
        return _apply_rows(log_mel, rows, lambda x, _: brightness(x, gain))

    def _time_roll(self, log_mel: Tensor, rows: Tensor, g: torch.Generator) -> Tensor:
        limit = math.floor(self.params.time_roll.max_fraction * log_mel.shape[-1])
        shifts = _randint(g, (rows.numel(),), -limit, limit, log_mel.device)
        return _apply_rows(log_mel, rows, lambda x, _: time_roll(x, shifts))

    def _spans(
        self, g: torch.Generator, n: int, n_masks: int, max_width: int, size: int, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """SpecAugment spans: width uniform in 0..max_width, start uniform where the span fits."""
        width = _randint(g, (n, n_masks), 0, min(max_width, size), device)
        start = _randint(g, (n, n_masks), 0, size - width, device)
        return start, width

    def _frequency_mask(self, log_mel: Tensor, rows: Tensor, g: torch.Generator) -> Tensor:
        prm = self.params.frequency_mask
        start, width = self._spans(g, rows.numel(), prm.n_masks, prm.max_width, log_mel.shape[-2], log_mel.device)
        return _apply_rows(log_mel, rows, lambda x, _: frequency_mask(x, start, width))

    def _time_mask(self, log_mel: Tensor, rows: Tensor, g: torch.Generator) -> Tensor:
        prm = self.params.time_mask
        start, width = self._spans(g, rows.numel(), prm.n_masks, prm.max_width, log_mel.shape[-1], log_mel.device)
        return _apply_rows(log_mel, rows, lambda x, _: time_mask(x, start, width))

    def _cutout(self, log_mel: Tensor, rows: Tensor, g: torch.Generator) -> Tensor:
        prm = self.params.cutout
        rects = draw_rectangles(
            g,
            rows.numel(),
            prm.n_rects,
            tuple(log_mel.shape[-2:]),
            prm.mel_fraction,
            prm.frame_fraction,
            log_mel.device,
        )
        return _apply_rows(log_mel, rows, lambda x, _: mask_rectangles(x, *rects))

    def _coarse_dropout(self, log_mel: Tensor, rows: Tensor, g: torch.Generator) -> Tensor:
        prm, n = self.params.coarse_dropout, rows.numel()
        count = _randint(g, (n, 1), prm.count[0], prm.count[1], log_mel.device)
        mel_start, mel_width, frame_start, frame_width = draw_rectangles(
            g,
            n,
            max(prm.count[1], 1),
            tuple(log_mel.shape[-2:]),
            prm.mel_fraction,
            prm.frame_fraction,
            log_mel.device,
        )
        keep = torch.arange(mel_width.shape[1], device=log_mel.device) < count  # the first `count` rectangles
        mel_width = mel_width * keep
        return _apply_rows(
            log_mel, rows, lambda x, _: mask_rectangles(x, mel_start, mel_width, frame_start, frame_width)
        )


def _check_clips(clips: Tensor, accompaniment: Tensor | None) -> None:
    if clips.ndim != 2:
        raise ValueError(f"clips must be [batch, samples], got shape {tuple(clips.shape)}")
    if accompaniment is not None and accompaniment.shape != clips.shape:
        raise ValueError(f"accompaniment shape {tuple(accompaniment.shape)} differs from clips {tuple(clips.shape)}")


def _check_log_mel(log_mel: Tensor) -> None:
    if log_mel.ndim != 3:
        raise ValueError(f"log_mel must be [batch, n_mels, frames], got shape {tuple(log_mel.shape)}")
