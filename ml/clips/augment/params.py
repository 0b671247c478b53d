"""The ``augment:`` section of params.yaml: one frozen dataclass per transform, and the order of
the two chains."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

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
