"""Every test song identified as ``reconet identify`` would answer it: the `predictions` table.

The song's clips are the ones the pipeline cut (no separation again); the trained model of a split
kind classifies them through :class:`ml.identification.identify.Identifier`, so the ranking, the
open-set rule ("unknown singer") and the per-clip answers are those of the command and the service.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ml.clips.segmentation import PackedRows
from ml.identification.identify import Identifier, RecordingClips

SCHEMA = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),  # the split kind whose model answered
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("album", pa.string()),
        pa.field("truth", pa.string(), nullable=False),  # the song's artist
        pa.field("singer", pa.string()),  # the answer; null: "unknown singer"
        pa.field("unknown", pa.bool_(), nullable=False),
        pa.field("correct", pa.bool_(), nullable=False),  # singer == truth
        pa.field("score", pa.float64()),  # the answer's score (cosine to the reference, or probability)
        pa.field("threshold", pa.float64()),  # the open-set threshold (null: a network, no open-set rule)
        pa.field("top_k", pa.list_(pa.string()), nullable=False),  # trained singers by mean probability
        pa.field("top_k_probabilities", pa.list_(pa.float64()), nullable=False),
        pa.field("truth_rank", pa.int32()),  # 1-based rank of the truth in the full ranking (null: not a class)
        pa.field("clips", pa.int32(), nullable=False),
        pa.field("timeline", pa.string(), nullable=False),  # JSON: each clip's start_s, end_s, singer, confidence
    ]
)


def song_clips(rows: pa.Table, data_dir: Path, embeddings: np.ndarray | None = None,
               ) -> dict[str, tuple[RecordingClips, dict[str, Any]]]:  # fmt: skip
    """Each track's clips (in time order) from the packed clip files, with its title, album and
    artist (and the clips' rows of ``embeddings``, when given)."""
    positions: dict[str, list[int]] = defaultdict(list)
    for i, track in enumerate(rows.column("track_id").to_pylist()):
        positions[track].append(i)
    packed = PackedRows.from_table(rows, data_dir)
    starts, ends = rows.column("start_s").to_pylist(), rows.column("end_s").to_pylist()
    described = rows.select(["title", "album", "artist"]).to_pylist()
    songs = {}
    for track, where in positions.items():
        where.sort(key=lambda i: starts[i])
        clips = packed.take(np.asarray(where)).astype(np.float32) / 32767
        spans = [(starts[i], ends[i]) for i in where]
        vectors = embeddings[where] if embeddings is not None else None
        songs[track] = (RecordingClips(clips, spans, max(e for _, e in spans), 0.0, vectors), described[where[0]])
    return songs


def predict_songs(identifier: Identifier, rows: pa.Table, data_dir: Path, kind: str, top_k: int = 5,
                  on_song=None) -> pa.Table:  # fmt: skip
    """One row per song of ``rows`` (segments of the test side): the model's answer for it."""
    out = []
    embeddings = None
    if identifier.embedding_model:  # the evaluation embedded these clips already: from its cache
        from ml.identification.backend import clip_embeddings

        embeddings = clip_embeddings(rows, data_dir, identifier.embedder)
    songs = song_clips(rows, data_dir, embeddings)
    for n, (track, (clips, about)) in enumerate(sorted(songs.items()), 1):
        everyone = identifier.identify(clips, top_k=len(identifier.classes))
        ranking = [t["singer"] for t in everyone["top_k"]]
        truth = about["artist"]
        out.append({
            "kind": kind, "track_id": track, "title": about["title"], "album": about["album"], "truth": truth,
            "singer": everyone["singer"], "unknown": bool(everyone["unknown"]),
            "correct": everyone["singer"] == truth, "score": everyone["score"], "threshold": everyone["threshold"],
            "top_k": ranking[:top_k], "top_k_probabilities": [t["probability"] for t in everyone["top_k"][:top_k]],
            "truth_rank": ranking.index(truth) + 1 if truth in ranking else None, "clips": len(clips.clips),
            "timeline": json.dumps(everyone["timeline"]),
        })  # fmt: skip
        if on_song:
            on_song(n, len(songs))
    return pa.Table.from_pylist(out, schema=SCHEMA)


def summary(table: pa.Table, top_k: int) -> dict[str, Any]:
    """Songs, accuracy of the answer, songs answered "unknown singer", top-K accuracy of the ranking."""
    rows = table.to_pylist()
    n = max(len(rows), 1)
    in_top_k = sum(1 for r in rows if r["truth_rank"] is not None and r["truth_rank"] <= top_k)
    return {"songs": len(rows), "accuracy": sum(r["correct"] for r in rows) / n,
            "unknown": sum(r["unknown"] for r in rows), f"top_{top_k}_accuracy": in_top_k / n}  # fmt: skip
