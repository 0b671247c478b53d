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

from ml.clips.augment.audio import (
    AudioAugmenter,
    add_noise_at_snr,
    click_track,
    estimate_beat_grid,
    estimate_tempo,
    gaussian_noise,
    onset_strength,
    pink_noise,
    pink_noise_like,
    pitch_shift,
    remix,
    rms,
    snr_db,
    time_shift,
    volume_modulation,
)
from ml.clips.augment.params import AUDIO_TRANSFORMS, SPECTROGRAM_TRANSFORMS, AugmentParams
from ml.clips.augment.spectrogram import (
    SpectrogramAugmenter,
    brightness,
    draw_rectangles,
    frequency_mask,
    mask_rectangles,
    time_mask,
    time_roll,
)

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
