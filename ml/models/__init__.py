"""Vocalist classifiers, chosen by name in params.yaml (``model.name``)."""

from __future__ import annotations

from typing import Any

from torch import nn


def build_model(name: str, n_classes: int, n_mels: int, options: dict[str, Any] | None = None) -> nn.Module:
    """The model ``name`` with ``options`` (its section of params.yaml) for ``n_classes`` artists."""
    options = dict(options or {})
    if name == "crnn":
        from ml.models.crnn import CRNN

        return CRNN(n_classes=n_classes, n_mels=n_mels, **_tuples(options))
    raise ValueError(f"unknown model {name!r}: choose crnn")


def _tuples(options: dict[str, Any]) -> dict[str, Any]:
    """YAML lists to the tuples the constructors take."""
    return {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
            for k, v in options.items()}  # fmt: skip
