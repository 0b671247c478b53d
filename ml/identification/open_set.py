"""Singers' references, the open-set rule and its figures.

A singer's reference is the L2-normalised mean of their clips' embeddings, each first standardised
(by the statistics of the training clips) and L2-normalised. A recording is scored against every
reference by the cosine similarity of its own reference (its clips' mean, made the same way); the
best-scoring singer is the answer, and "unknown" when that score is below the model's threshold.
Enrolling a singer adds a reference: no retraining.

The threshold is calibrated on artists held out of the references: ``k`` artists of the training
data (chosen by a seeded hash of their names, so the choice does not move when others are added)
are left out, the remaining artists' references are built from the training clips, and the songs
of the validation side are scored — the held-out artists' songs are impostors. The threshold is
the score that lets ``far`` of the impostors through (or, where the known singers' songs all
score clearly higher, the middle of the gap: :func:`calibrated_threshold`). Evaluation does the same on the test side
and reports the equal-error rate between known and unknown singers and the identification rate at
``far`` false acceptance (the share of known singers' songs both accepted and named right).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml import config


@dataclass(frozen=True)
class OpenSetParams:
    holdout_artists: int = 2  # k artists held out of the references to play the unknown singers
    far: float = 0.05  # the false-acceptance rate the threshold is set for
    seed: int = 0

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> OpenSetParams:
        settings = cls(**config.section(params, "open_set", cls))
        if settings.holdout_artists < 0 or not 0 < settings.far < 1:
            raise ValueError("open_set.holdout_artists must be >= 0 and open_set.far in (0, 1)")
        return settings


@dataclass
class Normaliser:
    """Standardisation by the training clips' statistics; then rows of unit length."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, embeddings: np.ndarray) -> Normaliser:
        return cls(embeddings.mean(axis=0), embeddings.std(axis=0) + 1e-6)

    @classmethod
    def unit_only(cls) -> Normaliser:
        """No standardisation, only unit length: for vectors already in a standardised space
        (an embedding model's back-end)."""
        return cls(np.zeros(1), np.ones(1))

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        return _unit((np.asarray(embeddings, np.float64) - self.mean) / self.scale)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def mean_direction(normalised: np.ndarray) -> np.ndarray:
    """The unit-length mean of unit vectors (a singer's or a recording's reference)."""
    return _unit(normalised.mean(axis=0))


def references(normalised: np.ndarray, labels: list[str]) -> dict[str, np.ndarray]:
    """Singer → reference (unit-length mean of their normalised clip embeddings)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(labels):
        groups[name].append(i)
    return {name: mean_direction(normalised[rows]) for name, rows in sorted(groups.items())}


def song_vectors(normalised: np.ndarray, track_ids: list[str]) -> tuple[list[str], np.ndarray]:
    """Per song (in first-seen order): the unit-length mean of its clips' normalised embeddings."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, track in enumerate(track_ids):
        groups[track].append(i)
    tracks = list(groups)
    return tracks, np.stack([mean_direction(normalised[groups[t]]) for t in tracks]) if tracks else np.zeros((0,))


def score(vectors: np.ndarray, refs: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Cosine similarity of each vector to each reference: (names, (N, singers))."""
    names = list(refs)
    return names, np.asarray(vectors) @ np.stack([refs[n] for n in names]).T


def held_out_artists(artists: list[str], k: int, seed: int) -> list[str]:
    """``k`` artists by a seeded hash of their names (stable as the library grows); none when
    fewer than k + 2 artists would be left to tell apart."""
    if k <= 0 or len(set(artists)) < k + 2:
        return []
    ranked = sorted(set(artists), key=lambda a: hashlib.sha256(f"{seed}|{a}".encode()).hexdigest())
    return sorted(ranked[:k])


def equal_error_rate(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """(EER, the threshold where false acceptance meets false rejection) of two score sets."""
    genuine, impostor = np.asarray(genuine, float), np.asarray(impostor, float)
    if not len(genuine) or not len(impostor):
        return float("nan"), float("nan")
    candidates = np.unique(np.concatenate([genuine, impostor]))
    far = np.array([(impostor >= t).mean() for t in candidates])
    frr = np.array([(genuine < t).mean() for t in candidates])
    i = int(np.argmin(np.abs(far - frr)))
    return float((far[i] + frr[i]) / 2), float(candidates[i])


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """The lowest threshold that accepts at most ``far`` of the impostor scores."""
    impostor = np.sort(np.asarray(impostor, float))
    if not len(impostor):
        return float("-inf")
    allowed = int(np.floor(far * len(impostor)))  # impostors that may score at or above it
    return float(np.nextafter(impostor[len(impostor) - allowed - 1], np.inf)) if allowed < len(impostor) else -np.inf


def calibrated_threshold(genuine: np.ndarray, impostor: np.ndarray, far: float) -> float:
    """The threshold that lets at most ``far`` of the impostors through; when the genuine scores sit
    above it with a gap (their ``far`` quantile higher), the middle of that gap: a few held-out
    songs estimate the impostors' tail poorly, and the middle keeps a margin on both sides."""
    at_far = threshold_at_far(impostor, far)
    if not len(genuine):
        return at_far
    genuine_low = float(np.quantile(np.asarray(genuine, float), far))
    return (at_far + genuine_low) / 2 if genuine_low > at_far else at_far


def open_set_trial(train_vectors: np.ndarray, train_artists: list[str], query_vectors: np.ndarray,
                   query_artists: list[str], query_tracks: list[str], held_out: list[str],
                   far: float, normaliser: Normaliser | None = None) -> dict[str, Any]:  # fmt: skip
    """References from the training clips of the artists not held out; the query songs scored
    against them. Returns the EER, the threshold at ``far``, and the identification rate there.
    ``normaliser``: how vectors are normalised (default: standardised by the training vectors)."""
    normaliser = normaliser or Normaliser.fit(train_vectors)
    known = [i for i, a in enumerate(train_artists) if a not in held_out]
    refs = references(normaliser(train_vectors[known]), [train_artists[i] for i in known])
    tracks, songs = song_vectors(normaliser(query_vectors), query_tracks)
    artist_of = dict(zip(query_tracks, query_artists, strict=True))
    names, scores = score(songs, refs)
    best = scores.max(axis=1)
    named = [names[j] for j in scores.argmax(axis=1)]
    is_known = np.array([artist_of[t] not in held_out and artist_of[t] in refs for t in tracks])
    impostor = best[~is_known]
    eer, eer_threshold = equal_error_rate(best[is_known], impostor)
    threshold = calibrated_threshold(best[is_known], impostor, far)
    correct = np.array([n == artist_of[t] for n, t in zip(named, tracks, strict=True)])
    accepted = best >= threshold
    return {
        "held_out_artists": held_out, "known_songs": int(is_known.sum()), "unknown_songs": int((~is_known).sum()),
        "eer": eer, "eer_threshold": eer_threshold, "far": far, "threshold": threshold,
        "identification_rate_at_far": float((correct & accepted)[is_known].mean()) if is_known.any() else float("nan"),
        "closed_set_song_accuracy": float(correct[is_known].mean()) if is_known.any() else float("nan"),
    }  # fmt: skip


def calibrated_rule(classes: list[str], train_vectors: np.ndarray, train_artists: list[str], val_vectors: np.ndarray,
                    val_artists: list[str], val_tracks: list[str], params: dict[str, Any],
                    normaliser: Normaliser) -> tuple[dict[str, Any], dict[str, np.ndarray]]:  # fmt: skip
    """What a trained model records for its open-set answer, an embedding model's and a network's
    alike: the rule (the threshold calibrated on the validation songs with ``open_set.holdout_artists``
    of ``classes`` held out of the references, at ``open_set.far``; no threshold without enough
    singers) and every singer's reference from its training and validation clips, both in
    ``normaliser``'s space."""
    settings = OpenSetParams.from_params(params)
    held_out = held_out_artists(classes, settings.holdout_artists, settings.seed)
    calibration = None
    if held_out:
        calibration = open_set_trial(train_vectors, train_artists, val_vectors, val_artists, val_tracks, held_out,
                                     settings.far, normaliser=normaliser)  # fmt: skip
    refs = references(normaliser(np.concatenate([train_vectors, val_vectors])), train_artists + val_artists)
    rule = {"threshold": calibration["threshold"] if calibration else None, "far": settings.far,
            "calibrated_on": held_out, "val_eer": calibration["eer"] if calibration else None}  # fmt: skip
    return rule, refs
