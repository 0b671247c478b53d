"""Vocalist classifiers, chosen by name in params.yaml (``train.model``), each with its options in
``models.<name>``. Every model has ``embed(log_mel[, audio])`` (the penultimate layer) and
``classifier``; a model with ``needs_audio`` takes the raw clip too. A model with a ``loss(scores,
labels, weight=None)`` method (speaker_net's additive angular margin) is trained with it in place of
the cross-entropy."""

from __future__ import annotations

from typing import Any

from torch import nn


def model_class(name: str) -> type[nn.Module]:
    if name == "crnn":
        from ml.models.crnn import CRNN

        return CRNN
    if name == "reconet":
        from ml.models.reconet import ReconetDual

        return ReconetDual
    if name == "speaker_net":
        from ml.models.speaker_net import SpeakerNet

        return SpeakerNet
    if name == "samplecnn":
        from ml.models.samplecnn import SampleCNN

        return SampleCNN
    if name == "resnet_gru":
        from ml.models.resnet_gru import ResNetGRU

        return ResNetGRU
    raise ValueError(f"unknown model {name!r}: choose crnn, reconet, speaker_net, samplecnn or resnet_gru")


def build_model(name: str, n_classes: int, n_mels: int, options: dict[str, Any] | None = None) -> nn.Module:
    """The model ``name`` with ``options`` (its section of params.yaml) for ``n_classes`` artists."""
    return model_class(name)(n_classes=n_classes, n_mels=n_mels, **_tuples(dict(options or {})))


def needs_audio(model: nn.Module | str) -> bool:
    """Whether the model (or the model of that name) also takes the raw clip (``model(log_mel, audio)``)."""
    return bool(getattr(model_class(model) if isinstance(model, str) else model, "needs_audio", False))


def _tuples(options: dict[str, Any]) -> dict[str, Any]:
    """YAML lists to the tuples the constructors take."""
    return {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
            for k, v in options.items()}  # fmt: skip


def logits(model: nn.Module, log_mel, audio=None):
    return model(log_mel, audio) if needs_audio(model) else model(log_mel)


def embed(model: nn.Module, log_mel, audio=None):
    return model.embed(log_mel, audio) if needs_audio(model) else model.embed(log_mel)
