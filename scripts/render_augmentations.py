"""Render one figure per augmentation of ml/clips/augment.py, as the RecoNet report shows them.

    .venv/bin/python scripts/render_augmentations.py [AUDIO_FILE] [--out docs/augmentations] [--seed 0]

AUDIO_FILE is any audio file ffmpeg decodes: 10 s from its middle, at 16 kHz mono, is the demo clip.
Without it, a voice-like test clip is synthesised (a harmonic tone with vibrato, syllables and gaps).
Each audio transform is applied alone (p=1) and drawn as waveform and log-mel, before and after; each
spectrogram transform is applied alone (p=1) to the demo clip's log-mel, before and after. Remix
needs another clip's accompaniment: a synthetic one (a chord pad over a kick drum at 104 BPM).
Writes ``<out>/<transform>.png`` and ``<out>/README.md`` listing them.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torchaudio

from ml.clips.augment import (
    AUDIO_TRANSFORMS,
    SPECTROGRAM_TRANSFORMS,
    AudioAugmenter,
    AugmentParams,
    SpectrogramAugmenter,
    estimate_beat_grid,
)

SAMPLE_RATE = 16000
SECONDS = 10.0
ROOT = Path(__file__).resolve().parent.parent

DESCRIPTIONS = {
    "remix": "the clip over another clip's accompaniment, vocal-to-accompaniment ratio −5…+10 dB",
    "pitch_shift": "±1 semitone, duration kept (genre report)",
    "time_shift": "circular time shift by up to the whole clip (RecoNet, p=.3)",
    "volume_modulation": "gain 1 + depth·sin(2π·rate·t + φ), depth 0.1–0.5, rate 0.1–2 Hz (RecoNet, p=.1)",
    "click_track": "1 kHz decaying clicks on the estimated beat grid, 0…+10 dB over the clip's RMS (RecoNet, p=.25)",
    "pink_noise": "1/f noise at an SNR of 10–30 dB (RecoNet, p=.5)",
    "gaussian_noise": "white noise at an SNR of 10–30 dB (RecoNet, p=.5)",
    "brightness": "a global gain of −6…+6 dB on the log-mel (RecoNet, p=.4)",
    "time_roll": "circular roll along time (fingerprint report)",
    "frequency_mask": "SpecAugment frequency masks, 2 × up to 16 mel bands (fingerprint report)",
    "time_mask": "SpecAugment time masks, 2 × up to 40 frames (fingerprint report)",
    "cutout": "one rectangle of 10–30 % of the mels × 10–30 % of the frames (RecoNet)",
    "coarse_dropout": "4–12 rectangles of 2–8 % × 2–8 % (RecoNet)",
}


def synthetic_voice(seconds: float = SECONDS, sample_rate: int = SAMPLE_RATE, seed: int = 0) -> torch.Tensor:
    """A voice-like clip: harmonic 'syllables' on a melody, with vibrato, formant-ish tilt and gaps."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    notes = 196 * 2 ** (torch.tensor([0, 2, 4, 5, 7, 5, 4, 2, 0, 4]) / 12)  # a G major line
    note = notes[(t / (seconds / len(notes))).long().clamp_max(len(notes) - 1)]
    vibrato = 1 + 0.012 * torch.sin(2 * math.pi * 5.5 * t)
    phase = 2 * math.pi * torch.cumsum(note * vibrato, 0) / sample_rate
    voice = sum(torch.sin(k * phase) * (1.0 / k) * (1.2 if 3 <= k <= 5 else 1.0) for k in range(1, 16))
    syllable = torch.sin(math.pi * torch.remainder(t, 0.5) / 0.5).pow(0.5)
    gaps = ((t % 2.5) < 2.0).float()
    breath = 0.01 * torch.randn(t.numel(), generator=g)
    clip = 0.15 * voice * syllable * gaps + breath * gaps
    return clip.float()


def synthetic_accompaniment(seconds: float = SECONDS, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """A chord pad over a kick drum at 104 BPM: the 'other clip's accompaniment' for remix."""
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    pad = sum(torch.sin(2 * math.pi * f * t) for f in (130.8, 164.8, 196.0, 261.6)) / 4
    tau = torch.remainder(t, 60 / 104)
    kick = torch.sin(2 * math.pi * (50 + 100 * torch.exp(-tau / 0.03)) * tau) * torch.exp(-tau / 0.12)
    return (0.1 * pad + 0.4 * kick).float()


def load_clip(path: Path) -> torch.Tensor:
    """10 s from the middle of ``path``, 16 kHz mono (zero-padded when shorter)."""
    from ml.audio import load_audio

    audio = load_audio(path, SAMPLE_RATE, stereo=False).mean(axis=1)
    n = int(SECONDS * SAMPLE_RATE)
    start = max(0, (len(audio) - n) // 2)
    clip = np.zeros(n, np.float32)
    piece = audio[start : start + n]
    clip[: len(piece)] = piece
    return torch.from_numpy(clip)


class LogMel:
    """The log-mel of the figures: 128 mels, 2048-point FFT, hop 512, dB with an 80 dB range."""

    def __init__(self) -> None:
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate=SAMPLE_RATE, n_fft=2048, hop_length=512, n_mels=128)
        self.db = torchaudio.transforms.AmplitudeToDB(top_db=80)

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        return self.db(self.mel(clip.reshape(1, -1)))  # [1, 128, frames]


ADDITIVE = ("remix", "click_track", "pink_noise", "gaussian_noise")


def _plot_audio(plt, name: str, before: torch.Tensor, after: torch.Tensor, log_mel: LogMel, note: str):
    t = np.arange(before.numel()) / SAMPLE_RATE
    additive = name in ADDITIVE
    fig, axes = plt.subplots(3 if additive else 2, 2, figsize=(13, 9.5 if additive else 6.5), layout="constrained")
    limit = float(max(before.abs().max(), after.abs().max())) * 1.05
    mels = [log_mel(before)[0], log_mel(after)[0]]
    vmin = min(float(m.min()) for m in mels)
    vmax = max(float(m.max()) for m in mels)
    for col, (clip, mel, label) in enumerate(zip((before, after), mels, ("original", name), strict=True)):
        axes[0, col].plot(t, clip.numpy(), lw=0.3, color="tab:blue")
        axes[0, col].set_ylim(-limit, limit)
        axes[0, col].set_title(f"{label}: waveform")
        axes[0, col].set_ylabel("amplitude")
        axes[0, col].set_xlabel("time (s)")
        axes[1, col].imshow(mel.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax,
                            extent=(0, before.numel() / SAMPLE_RATE, 0, mel.shape[0]))  # fmt: skip
        axes[1, col].set_title(f"{label}: log-mel (dB)")
        axes[1, col].set_xlabel("time (s)")
        axes[1, col].set_ylabel("mel band")
    if additive:
        added = (after - before).numpy()
        axes[2, 0].plot(t, added, lw=0.3, color="tab:red")
        axes[2, 0].set_ylim(-limit, limit)
        axes[2, 0].set_title("added signal (after − before)")
        axes[2, 0].set_xlabel("time (s)")
        zoom = (t >= 4.0) & (t < 6.0)
        axes[2, 1].plot(t[zoom], before.numpy()[zoom], lw=0.4, color="tab:blue", label="original")
        axes[2, 1].plot(t[zoom], added[zoom], lw=0.4, color="tab:red", alpha=0.8, label="added")
        axes[2, 1].set_title("zoom on 4–6 s")
        axes[2, 1].set_xlabel("time (s)")
        axes[2, 1].legend(loc="upper right")
    fig.suptitle(f"{name} — {DESCRIPTIONS[name]}\n{note}", fontsize=11)
    return fig


def _plot_spectrogram(plt, name: str, before: torch.Tensor, after: torch.Tensor, note: str):
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), sharey=True, layout="constrained")
    vmin = float(min(before.min(), after.min()))
    vmax = float(max(before.max(), after.max()))
    image = None
    for ax, mel, label in zip(axes, (before, after), ("original", name), strict=True):
        image = ax.imshow(mel.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax)
        ax.set_title(f"{label}: log-mel (dB)")
        ax.set_xlabel("frame")
    axes[0].set_ylabel("mel band")
    fig.colorbar(image, ax=axes, fraction=0.025, pad=0.01, label="dB")
    fig.suptitle(f"{name} — {DESCRIPTIONS[name]}\n{note}", fontsize=11)
    return fig


def render(clip: torch.Tensor, out: Path, source: str, seed: int = 0) -> list[Path]:
    """Write one PNG per transform of the demo ``clip`` [T] to ``out``, and ``out/README.md``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    params = AugmentParams().with_p(1.0)
    audio = AudioAugmenter(params, SAMPLE_RATE)
    spectrogram = SpectrogramAugmenter(params)
    log_mel = LogMel()
    # Row 0 is the demo clip; row 1 carries the accompaniment that remix lays under it.
    batch = torch.stack([clip, clip])
    accompaniment = torch.stack([torch.zeros_like(clip), synthetic_accompaniment(clip.numel() / SAMPLE_RATE)])
    written = []
    for name in AUDIO_TRANSFORMS:
        after = audio.apply(name, batch, torch.Generator().manual_seed(seed), accompaniment=accompaniment)[0]
        note = f"p = 1, parameters drawn with seed {seed}"
        if name == "click_track":
            bpm, first = estimate_beat_grid(clip[None], SAMPLE_RATE)
            note += f"; estimated tempo {bpm.item():.1f} BPM, first beat at {first.item():.2f} s"
        fig = _plot_audio(plt, name, clip, after, log_mel, note)
        written.append(out / f"{name}.png")
        fig.savefig(written[-1], dpi=90)
        plt.close(fig)
    mel = log_mel(clip)
    for name in SPECTROGRAM_TRANSFORMS:
        after = spectrogram.apply(name, mel, torch.Generator().manual_seed(seed))
        note = f"p = 1, seed {seed}; masked cells take the clip's minimum ({float(mel.min()):.1f} dB)"
        fig = _plot_spectrogram(plt, name, mel[0], after[0], note)
        written.append(out / f"{name}.png")
        fig.savefig(written[-1], dpi=90)
        plt.close(fig)
    lines = [
        "# Augmentations",
        "",
        "One figure per transform of `ml/clips/augment.py`, each applied alone (p = 1) to the same 10 s demo clip",
        f"({source}). Rendered by `scripts/render_augmentations.py`; the chains apply them in this order,",
        "each with its own probability from the `augment:` section of params.yaml.",
        "",
        "| transform | stage | what it does | figure |",
        "|---|---|---|---|",
    ]
    for path in written:
        name = path.stem
        stage = "audio" if name in AUDIO_TRANSFORMS else "log-mel"
        lines.append(f"| `{name}` | {stage} | {DESCRIPTIONS[name]} | [{path.name}]({path.name}) |")
    (out / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", nargs="?", type=Path, help="any audio file (default: a synthetic voice-like clip)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "augmentations")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.audio is None:
        clip, source = synthetic_voice(), "a synthetic voice-like clip"
    else:
        clip, source = load_clip(args.audio), f"the middle 10 s of `{args.audio.name}`, 16 kHz mono"
    for path in render(clip, args.out, source, args.seed):
        print(path)


if __name__ == "__main__":
    main()
