"""Models made of a fixed clip embedding and a trained back-end: ``voice_embedding`` (resemblyzer's
pretrained GE2E d-vector), ``classical`` (seed 004: the 30 Tzanetakis features into an SVM) and
``voice_fusion`` (both, concatenated). Nothing here learns an embedding: the extractor is fixed,
only the back-end (a scikit-learn pipeline: standardisation, then logistic regression or an SVM)
is fitted to the training clips, in seconds.

Per-clip embeddings are cached beside the packed clips they come from: one float32 array per packed
file and extractor (``<data>/embeddings/<extractor>/<file key>.npy``, rows as in the packed file),
keyed by the packed file's name, size and modification time, so clips cut again from other stems
get new embeddings. The back-end is saved with skops (a format that loads only the types it is told
to trust, unlike a pickle).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ml.clips.segmentation import PackedRows
from ml.tables import atomic_path

log = logging.getLogger(__name__)

EMBEDDING_MODELS = ("voice_embedding", "classical", "voice_fusion")
BACKENDS = ("logistic", "svm")
ENCODERS = ("ge2e", "ecapa")
_EXTRACTOR_VERSION = "1"  # bump when an extractor's output changes for the same options


@dataclass(frozen=True)
class BackendParams:
    """``models.<name>`` for an embedding model."""

    backend: str = "logistic"  # logistic | svm
    C: float = 1.0  # inverse regularisation strength of either back-end
    encoder: str = "ge2e"  # voice_embedding, voice_fusion: ge2e (resemblyzer) | ecapa (VoxCeleb ECAPA-TDNN)
    partials_per_s: float = 1.3  # GE2E partials (1.6 s each) per second of clip
    classical_weight: float = 1.0  # voice_fusion: the classical block's weight against the d-vector's

    @classmethod
    def from_options(cls, name: str, options: dict[str, Any]) -> BackendParams:
        known = {k: v for k, v in options.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"models.{name}: unknown keys {unknown}")
        settings = cls(**known)
        if settings.encoder not in ENCODERS:
            raise ValueError(f"models.{name}.encoder must be one of {ENCODERS}, not {settings.encoder!r}")
        if settings.backend not in BACKENDS:
            raise ValueError(f"models.{name}.backend must be one of {BACKENDS}, not {settings.backend!r}")
        return settings


def is_embedding_model(name: str) -> bool:
    return name in EMBEDDING_MODELS


class ClipEmbedder:
    """The fixed per-clip embedding of an embedding model: ``embed(audio (B, T) at 16 kHz) → (B, D)``.
    Its encoders (ECAPA, GE2E) compute in ``precision`` (``ml/device.py``; by default ``auto`` on
    ``device``), the classical features in float32."""

    def __init__(self, name: str, settings: BackendParams, device: torch.device, sample_rate: int = 16000,
                 precision: torch.dtype | None = None) -> None:  # fmt: skip
        from ml.device import pick_precision

        if sample_rate != 16000:
            raise ValueError(f"{name} embeds 16 kHz clips (segments.sample_rate is {sample_rate})")
        self.name, self.settings, self.device = name, settings, device
        self.precision = precision or pick_precision(device)
        self.parts: list[tuple[str, torch.nn.Module]] = []
        if name in ("voice_embedding", "voice_fusion") and settings.encoder == "ecapa":
            from ml.models.ecapa_encoder import EcapaEncoder

            self.parts.append(("ecapa", EcapaEncoder().to(device)))
        elif name in ("voice_embedding", "voice_fusion"):
            from ml.models.voice_encoder import VoiceEncoder

            self.parts.append(("dvector", VoiceEncoder(settings.partials_per_s).to(device)))
        if name in ("classical", "voice_fusion"):
            from ml.models.classical import ClassicalFeatures

            self.parts.append(("classical", ClassicalFeatures(sample_rate).to(device)))
        if not self.parts:
            raise ValueError(f"unknown embedding model {name!r}: choose from {EMBEDDING_MODELS}")

    @property
    def key(self) -> str:
        """Names the extractor and every option that changes its output (the cache's folder)."""
        from ml.device import precision_name

        options = {"parts": [p for p, _ in self.parts], "v": _EXTRACTOR_VERSION}
        if any(p == "dvector" for p, _ in self.parts):
            options["partials_per_s"] = self.settings.partials_per_s
        if self.precision != torch.float32 and any(p != "classical" for p, _ in self.parts):
            options["precision"] = precision_name(self.precision)  # float32 embeddings keep their cache
        return "-".join(options["parts"]) + "-" + hashlib.sha256(json.dumps(options).encode()).hexdigest()[:10]

    @torch.inference_mode()
    def embed(self, audio: torch.Tensor, batch_size: int = 32) -> np.ndarray:
        from ml.device import autocast

        out = []
        for start in range(0, len(audio), batch_size):
            x = audio[start : start + batch_size].to(self.device).float()
            vectors = []
            for part, module in self.parts:
                with autocast(self.device, torch.float32 if part == "classical" else self.precision):
                    vectors.append(module.embed(x).float())
            out.append(torch.cat(vectors, dim=1).cpu().numpy())
        width = sum(getattr(m, "embedding_size", 0) for _, m in self.parts)
        return np.concatenate(out) if out else np.zeros((0, width), np.float32)

    def block_sizes(self) -> list[int]:
        return [int(module.embedding_size) for _, module in self.parts]


def _file_key(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:20]


def clip_embeddings(table: pa.Table, data_dir: Path, embedder: ClipEmbedder, logger=None) -> np.ndarray:
    """The embedding of every clip of ``table`` (rows of `segments`: ``audio_file``, ``audio_row``),
    in the table's order, from the cache or computed (a whole packed file at a time) and cached."""
    logger = logger or log
    files = table.column("audio_file").to_pylist()
    rows = np.asarray(table.column("audio_row").to_pylist(), dtype=np.int64)
    cache = data_dir / "embeddings" / embedder.key
    cache.mkdir(parents=True, exist_ok=True)
    result: np.ndarray | None = None
    for name in sorted(set(files)):
        path = data_dir / name
        cached = cache / f"{_file_key(path)}.npy"
        if cached.exists():
            vectors = np.load(cached)
        else:
            packed = PackedRows([name], [0], data_dir)._map(name)
            logger.info(f"embedding {len(packed)} clips of {name} with {embedder.name}")
            audio = torch.from_numpy(np.asarray(packed, dtype=np.float32) / 32767)
            vectors = embedder.embed(audio).astype(np.float32)
            with atomic_path(cached) as tmp, open(tmp, "wb") as f:
                np.save(f, vectors)
        picked = np.array([i for i, f in enumerate(files) if f == name])
        if result is None:
            result = np.zeros((len(files), vectors.shape[1]), np.float32)
        result[picked] = vectors[rows[picked]]
    return result if result is not None else np.zeros((0, sum(embedder.block_sizes())), np.float32)


def block_weights(embedder: ClipEmbedder, settings: BackendParams) -> np.ndarray:
    """Per-dimension weights after standardisation: each block counts as a whole, not by its size
    (256 d-vector dimensions would otherwise drown 30 classical ones), times ``classical_weight``."""
    weights = []
    for (part, _), size in zip(embedder.parts, embedder.block_sizes(), strict=True):
        w = settings.classical_weight if part == "classical" else 1.0
        weights.append(np.full(size, w / np.sqrt(size), np.float32))
    return np.concatenate(weights)


def probabilities(pipeline, x: np.ndarray) -> np.ndarray:
    """Each clip's probability per class, in ``pipeline.classes_`` order. An SVM's come from a
    softmax of its one-vs-rest decision values, so their arg-max is the SVM's own decision; Platt
    scaling (``SVC(probability=True)``) fits on an internal cross-validation that a small library
    cannot feed: on the small demo library it ranked the singers against the SVM (its decisions 3 of
    3 right, the arg-max of its probabilities 1 of 3)."""
    from sklearn.svm import SVC

    if not isinstance(pipeline[-1], SVC):
        return pipeline.predict_proba(x)
    scores = pipeline.decision_function(x)
    scores = np.stack([-scores, scores], axis=1) if scores.ndim == 1 else scores  # two classes: one column
    scores = np.exp(scores - scores.max(axis=1, keepdims=True))
    return scores / scores.sum(axis=1, keepdims=True)


def fit_backend(settings: BackendParams, weights: np.ndarray, embeddings: np.ndarray, labels: list[str],
                seed: int = 0):
    """The fitted scikit-learn pipeline: standardise, weight the blocks, classify with probabilities.
    The weights are folded into the scaler (its ``scale_`` divided by them), so the pipeline holds
    only stock scikit-learn types."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    if settings.backend == "svm":
        classifier = SVC(C=settings.C, kernel="rbf", gamma="scale", random_state=seed)
    else:
        classifier = LogisticRegression(C=settings.C, max_iter=5000)
    scaler = StandardScaler().fit(embeddings)
    scaler.scale_ = scaler.scale_ / weights
    classifier.fit(scaler.transform(embeddings), labels)
    return Pipeline([("standardise", scaler), ("classify", classifier)])


TRUSTED_TYPES = [
    "sklearn.svm._classes.SVC", "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.preprocessing._data.StandardScaler", "sklearn.pipeline.Pipeline",
]  # fmt: skip


def save_backend(pipeline, path: Path) -> Path:
    import skops.io as sio

    with atomic_path(path) as tmp:
        sio.dump(pipeline, tmp)
    return path


def load_backend(path: Path):
    """The back-end saved by :func:`save_backend`; refuses any type outside :data:`TRUSTED_TYPES`."""
    import skops.io as sio

    untrusted = [t for t in sio.get_untrusted_types(file=path) if t not in TRUSTED_TYPES]
    if untrusted:
        raise ValueError(f"{path}: refusing to load types that are not trusted: {untrusted}")
    return sio.load(path, trusted=TRUSTED_TYPES)


def transform(pipeline, embeddings: np.ndarray) -> np.ndarray:
    """The embeddings in the back-end's space (standardised and weighted): where references live."""
    return pipeline[:-1].transform(embeddings)

