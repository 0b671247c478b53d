"""The pretrained voice embedding as a fixed branch of a trained model (speaker_net's
``fuse_voice_embedding``, reconet's ``voice_embedding``)."""

from __future__ import annotations

import torch
from torch import nn


def _drop_own_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]


def _fill_own_keys(module: nn.Module, state_dict: dict, prefix: str, *_) -> None:
    # the pretrained weights the module already holds stand in for the keys state_dict left out
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        state_dict.setdefault(prefix + name, tensor)


class FrozenVoiceEncoder(nn.Module):
    """The pretrained GE2E voice encoder (``ml.models.voice_encoder.VoiceEncoder``) as a fixed
    branch: never trained, always in eval mode, and kept out of ``state_dict`` — its weights come
    from its own pretrained file, so a trained model's safetensors hold only what was trained, and
    ``load_state_dict`` of them into a freshly built model (strict) works."""

    def __init__(self) -> None:
        super().__init__()
        from ml.models.voice_encoder import VoiceEncoder

        self.encoder = VoiceEncoder()
        self.encoder.requires_grad_(False)
        self.embedding_size = int(self.encoder.embedding_size)
        self.register_state_dict_post_hook(_drop_own_keys)
        self.register_load_state_dict_pre_hook(_fill_own_keys)
        self.train(False)

    def train(self, mode: bool = True) -> FrozenVoiceEncoder:
        return super().train(False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, T) clips at 16 kHz → (B, 256) L2-normalised d-vectors (no gradient)."""
        with torch.no_grad():
            return self.encoder.embed(audio.float())
