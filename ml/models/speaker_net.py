"""A speaker-embedding network trained on the library's vocals: SpeechBrain's VoxCeleb recipe
(``recipes/VoxCeleb/SpeakerRec/hparams/train_ecapa_tdnn.yaml``) at demo scale.

* the raw 16 kHz clip → 80-band filterbanks (``speechbrain.lobes.features.Fbank``: 25 ms windows
  every 10 ms), computed in the model, with the recipe's per-clip mean normalisation;
* while training, a random 2–3 s chunk of every clip (one length per batch, a start per clip), the
  recipe's ``sentence_len``; at evaluation the whole clip;
* ECAPA-TDNN (``speechbrain.lobes.models.ECAPA_TDNN``: SE-Res2Net blocks, multi-layer aggregation,
  attentive statistics pooling) → the clip's x-vector (:meth:`SpeakerNet.embed`);
* a cosine head (SpeechBrain's ``Classifier``: L2-normalised embedding against L2-normalised class
  weights) times ``scale``, trained with the additive angular margin softmax
  (``speechbrain.nnet.losses.AdditiveAngularMargin``) through :meth:`SpeakerNet.loss`, which the
  training loop uses in place of its cross-entropy. ``classifier`` and ``forward`` give the
  margin-free scaled cosines, which is what evaluation turns into probabilities.

With ``fuse_voice_embedding`` the clip's (or chunk's) pretrained GE2E d-vector
(``ml.models.voice_branch.FrozenVoiceEncoder``) is concatenated to the L2-normalised x-vector before the head. The
model takes the raw clip (``needs_audio``); the log-mel the loop passes beside it is not used.
"""

from __future__ import annotations

import torch
from speechbrain.lobes.features import Fbank
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN, Classifier
from speechbrain.nnet.losses import AdditiveAngularMargin
from torch import nn
from torch.nn import functional as F

from ml.models.voice_branch import FrozenVoiceEncoder


class SpeakerNet(nn.Module):
    needs_audio = True

    def __init__(self, n_classes: int, n_mels: int = 128, fbank_mels: int = 80,
                 channels: tuple[int, ...] = (128, 128, 128, 128, 384),
                 kernel_sizes: tuple[int, ...] = (5, 3, 3, 3, 1), dilations: tuple[int, ...] = (1, 2, 3, 4, 1),
                 attention_channels: int = 64, res2net_scale: int = 4, se_channels: int = 64,
                 lin_neurons: int = 128, chunk_s: tuple[float, float] = (2.0, 3.0), margin: float = 0.2,
                 scale: float = 30.0, sample_rate: int = 16000,
                 fuse_voice_embedding: bool = False) -> None:  # fmt: skip
        # n_mels: the project's log-mel bands, passed to every model; this one makes its own fbanks
        super().__init__()
        if not 0 < chunk_s[0] <= chunk_s[1]:
            raise ValueError("speaker_net.chunk_s must be [shortest, longest] seconds, 0 < shortest <= longest")
        self.chunk_samples = (round(chunk_s[0] * sample_rate), round(chunk_s[1] * sample_rate))
        self.fbank = Fbank(n_mels=fbank_mels, sample_rate=sample_rate)
        self.ecapa = ECAPA_TDNN(fbank_mels, lin_neurons=lin_neurons, channels=list(channels),
                                kernel_sizes=list(kernel_sizes), dilations=list(dilations),
                                attention_channels=attention_channels, res2net_scale=res2net_scale,
                                se_channels=se_channels, groups=[1] * len(channels))  # fmt: skip
        self.voice = FrozenVoiceEncoder() if fuse_voice_embedding else None
        self.embedding_size = lin_neurons + (self.voice.embedding_size if self.voice is not None else 0)
        self.classifier = _ScaledCosine(self.embedding_size, n_classes, scale)
        self.margin = AdditiveAngularMargin(margin=margin, scale=scale)

    def crop(self, audio: torch.Tensor) -> torch.Tensor:
        """While training, a random chunk of every clip (one length per batch, each clip its own
        start); the whole clip otherwise."""
        shortest, longest = self.chunk_samples
        if not self.training or audio.shape[1] <= shortest:
            return audio
        length = int(torch.randint(shortest, min(longest, audio.shape[1]) + 1, ()))
        starts = torch.randint(0, audio.shape[1] - length + 1, (audio.shape[0], 1), device=audio.device)
        return audio.gather(1, starts + torch.arange(length, device=audio.device))

    def embed(self, log_mel: torch.Tensor | None = None, audio: torch.Tensor | None = None) -> torch.Tensor:
        if audio is None:
            raise ValueError("the speaker_net model needs the raw clip")
        audio = self.crop(audio.float())
        with torch.autocast(audio.device.type, enabled=False):  # filterbanks in float32
            feats = self.fbank(audio)
        feats = feats - feats.mean(dim=1, keepdim=True)  # the recipe's sentence-level mean normalisation
        x = self.ecapa(feats).squeeze(1)
        if self.voice is None:
            return x
        return torch.cat([F.normalize(x, dim=1), self.voice(audio).to(x.dtype)], dim=1)

    def forward(self, log_mel: torch.Tensor | None = None, audio: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.embed(log_mel, audio))

    def loss(self, scores: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The AAM-softmax loss of ``forward``'s scaled cosines: the margin added to the true class's angle."""
        cosine = scores.float() / self.classifier.scale
        one_hot = F.one_hot(labels, cosine.shape[1]).to(cosine.dtype)
        return F.cross_entropy(self.margin(cosine, one_hot), labels, weight=weight)


class _ScaledCosine(nn.Module):
    """SpeechBrain's cosine ``Classifier`` (no hidden blocks) on (B, D) embeddings, times ``scale``."""

    def __init__(self, embedding_size: int, n_classes: int, scale: float) -> None:
        super().__init__()
        self.cosine = Classifier(embedding_size, lin_blocks=0, out_neurons=n_classes)
        self.scale = scale

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.scale * self.cosine(embedding.unsqueeze(1)).squeeze(1)
