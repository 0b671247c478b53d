"""The pretrained GE2E speaker encoder of resemblyzer (Wan et al., "Generalized end-to-end loss for
speaker verification"), batched over clips on the device.

The weights ship inside resemblyzer's wheel (``resemblyzer/pretrained.pt``): nothing is downloaded.
They are loaded here with ``torch.load(weights_only=True)`` into the same network (3-layer LSTM over
40 mel bands, linear to 256, ReLU, L2 norm); resemblyzer's own ``VoiceEncoder`` loads them with a
full unpickle and embeds one utterance at a time in numpy.

A clip's embedding follows ``VoiceEncoder.embed_utterance``: the clip's power mel spectrogram (25 ms
windows every 10 ms, librosa's filters — reproduced with torchaudio, checked in the tests) is cut
into 1.6 s partials, ``partials_per_s`` of them per second; each partial's embedding comes from the
LSTM, and the clip's is their L2-normalised mean. Two departures, both for clips of a song: the
volume normalisation of ``preprocess_wav`` (raise to −30 dBFS, never lower) is applied per clip,
and partials more than ``silence_db`` below the clip's loudest partial (padding, pauses) are left
out of the mean instead of running resemblyzer's VAD over the clip.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchaudio
from torch import nn

SAMPLE_RATE = 16000
EMBEDDING_SIZE = 256
_WINDOW = 400  # 25 ms
_HOP = 160  # 10 ms
_PARTIAL_FRAMES = 160  # 1.6 s
_TARGET_DBFS = -30.0


def weights_path() -> Path:
    """``pretrained.pt`` inside the installed resemblyzer package."""
    import importlib.util

    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the voice encoder's weights come with resemblyzer: pip install resemblyzer")
    return Path(spec.origin).parent / "pretrained.pt"


class VoiceEncoder(nn.Module):
    """Frozen GE2E encoder: ``embed(audio)`` with audio (B, T) float32 at 16 kHz → (B, 256), L2-normalised."""

    embedding_size = EMBEDDING_SIZE

    def __init__(self, partials_per_s: float = 1.3, silence_db: float = 30.0) -> None:
        super().__init__()
        if not 0.625 <= partials_per_s <= SAMPLE_RATE / _HOP:
            raise ValueError("partials_per_s must be at least 0.625 (partials cover the clip)")
        self.lstm = nn.LSTM(40, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, EMBEDDING_SIZE)
        state = torch.load(weights_path(), map_location="cpu", weights_only=True)["model_state"]
        self.load_state_dict({k: v for k, v in state.items() if k.startswith(("lstm.", "linear."))})
        self.requires_grad_(False)
        self.eval()
        # librosa.feature.melspectrogram's defaults: centred frames, zero padding, power 2, Slaney mels
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=_WINDOW, hop_length=_HOP, n_mels=40, power=2.0, center=True,
            pad_mode="constant", norm="slaney", mel_scale="slaney",
        )  # fmt: skip
        self.frame_step = max(1, round(SAMPLE_RATE / partials_per_s / _HOP))
        self.silence_db = silence_db

    def train(self, mode: bool = True) -> VoiceEncoder:
        return super().train(False)  # frozen: batch statistics and dropout never apply

    def partial_embeddings(self, mels: torch.Tensor) -> torch.Tensor:
        """(N, 160, 40) power mels → (N, 256) L2-normalised (resemblyzer's ``forward``)."""
        _, (hidden, _) = self.lstm(mels)
        raw = torch.relu(self.linear(hidden[-1]))
        return raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        """Clips (B, T) at 16 kHz → (B, 256): the L2-normalised mean of their voiced partials."""
        audio = audio.float()
        rms = audio.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-8)
        gain = (10 ** (_TARGET_DBFS / 20) / rms).clamp_min(1.0)  # raise quiet clips only
        x = audio * gain
        n_frames = x.shape[1] // _HOP + 1
        steps = max(1, n_frames - _PARTIAL_FRAMES + self.frame_step + 1)
        starts = list(range(0, steps, self.frame_step))
        covered = (x.shape[1] - starts[-1] * _HOP) / (_PARTIAL_FRAMES * _HOP)
        if covered < 0.75 and len(starts) > 1:  # resemblyzer's min_coverage: a mostly padded last partial goes
            starts.pop()
        needed = (starts[-1] + _PARTIAL_FRAMES) * _HOP
        if needed > x.shape[1]:  # resemblyzer zero-pads to the last partial's end
            x = nn.functional.pad(x, (0, needed - x.shape[1]))
        mel = self.mel(x).transpose(1, 2)  # (B, frames, 40)
        partials = torch.stack([mel[:, s : s + _PARTIAL_FRAMES] for s in starts], dim=1)  # (B, P, 160, 40)
        b, p = partials.shape[:2]
        embeddings = self.partial_embeddings(partials.reshape(b * p, _PARTIAL_FRAMES, 40)).reshape(b, p, -1)
        energy = 10 * torch.log10(partials.sum(dim=(2, 3)).clamp_min(1e-10))  # (B, P)
        voiced = energy >= energy.amax(dim=1, keepdim=True) - self.silence_db
        mean = (embeddings * voiced.unsqueeze(-1)).sum(dim=1) / voiced.sum(dim=1, keepdim=True)
        return mean / mean.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.embed(audio)
