"""The clips stage: vocal stems cut into uuid-tracked clips, their cached log-mels, the batch
loader, and the training augmentations (audio and spectrogram)."""
