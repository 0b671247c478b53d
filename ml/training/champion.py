"""The champion rule's comparison: a registered candidate and the current champion scored on the
same held-out clips, the candidate's validation songs.

Test figures of two versions are not comparable (each was measured on its own test set, and the
splits move as songs arrive), and choosing a model on the test set spends it; so ``evaluation``
scores both models on the candidate's validation clips and :func:`ml.training.tracking.promote_champion`
keeps the better. Both models are loaded the way identification loads them
(``ml/identification/identify.py``: the candidate from its run folder, the champion from its
registered bundle) and score the clips by one function; the figure is the macro-F1 of the songs'
mean probabilities. When the two know different singers, only the clips of singers both know
count, and each model chooses among those singers only: both answer the same question
(``artists`` names them). A champion whose files cannot be loaded (its artifacts were deleted)
cannot be scored: the comparison says so and the candidate is promoted.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)
CLIPS_PER_BATCH = 256  # raw clips in memory at once (10 s clips: 640 kB each as float32)


def clip_probabilities(identifier, rows: pa.Table, data_dir: Path, logger=None) -> np.ndarray:
    """Each clip's probability per singer (N, classes) in ``identifier.classes`` order: an embedding
    model from the cached clip embeddings, a network from the raw clips (as identification does)."""
    from ml.clips.segmentation import PackedRows

    if identifier.embedding_model:
        from ml.identification.backend import clip_embeddings, probabilities

        x = clip_embeddings(rows, data_dir, identifier.embedder, logger)
        return probabilities(identifier.backend, x)[:, identifier.order]
    packed = PackedRows.from_table(rows, data_dir)
    batches = [identifier.classify(packed[start : start + CLIPS_PER_BATCH].astype(np.float32) / 32767)[0]
               for start in range(0, len(packed), CLIPS_PER_BATCH)]  # fmt: skip
    return np.concatenate(batches) if batches else np.zeros((0, len(identifier.classes)))


def song_macro_f1(identifier, rows: pa.Table, data_dir: Path, artists: list[str], logger=None) -> float:
    """Macro-F1 over ``artists`` of the songs of ``rows`` (clips of those artists only), each song
    named by the arg-max of its clips' mean probability among ``artists``."""
    from sklearn.metrics import f1_score

    columns = [identifier.classes.index(a) for a in artists]
    probabilities = clip_probabilities(identifier, rows, data_dir, logger)[:, columns]
    songs: dict[str, list[int]] = defaultdict(list)
    for i, track in enumerate(rows.column("track_id").to_pylist()):
        songs[track].append(i)
    truth = rows.column("artist").to_pylist()
    expected = [truth[clips[0]] for clips in songs.values()]
    named = [artists[int(probabilities[clips].mean(axis=0).argmax())] for clips in songs.values()]
    return float(f1_score(expected, named, labels=artists, average="macro", zero_division=0))


def compare_with_champion(tracking_uri: str, name: str, version: str, candidate, rows: pa.Table, data_dir: Path,
                          logger=None) -> dict[str, Any]:  # fmt: skip
    """Version ``version`` (loaded as ``candidate``, an ``Identifier``) and the current champion of
    ``name`` scored on ``rows`` (the candidate's validation clips). Returns what
    :func:`ml.training.tracking.promote_champion` decides on: ``champion`` (its version, None
    when there is none), ``candidate_val_macro_f1``, ``champion_val_macro_f1`` (None when it could
    not be scored), the ``artists`` and the ``clips`` and ``songs`` scored, and a ``note``."""
    from ml.identification.bundle import load_bundle
    from ml.training.tracking import current_champion

    logger = logger or log
    champion = current_champion(tracking_uri, name)
    artists = sorted(set(candidate.classes) & set(rows.column("artist").to_pylist()), key=str)
    champion_model = None
    if champion is None or champion == str(version):
        note = "no champion yet" if champion is None else "the candidate is the champion"
    else:
        try:
            champion_model = load_bundle(f"models:/{name}/{champion}", tracking_uri).identifier
        except (FileNotFoundError, ValueError, OSError) as exc:
            logger.warning(f"the champion, {name} version {champion}, cannot be loaded to be compared: {exc}")
            note = (f"the champion (version {champion}) could not be loaded, so it was not scored and the "
                    f"candidate is promoted: {str(exc).splitlines()[0]}")  # fmt: skip
    if champion_model is not None:
        shared = sorted(set(artists) & set(champion_model.classes), key=str)
        if not shared:
            champion_model = None
            note = f"the champion (version {champion}) knows none of the candidate's validation singers: not compared"
        elif set(candidate.classes) != set(champion_model.classes):
            note = (f"scored on the clips of the {len(shared)} singers both know (the candidate knows "
                    f"{len(candidate.classes)}, the champion {len(champion_model.classes)})")  # fmt: skip
        else:
            note = "both scored on the candidate's validation clips"
        artists = shared or artists
        rows = rows.filter(pc.is_in(rows.column("artist"), pa.array(artists, pa.string())))
    return {"champion": champion, "artists": artists, "clips": rows.num_rows,
            "songs": len(set(rows.column("track_id").to_pylist())),
            "candidate_val_macro_f1": song_macro_f1(candidate, rows, data_dir, artists, logger),
            "champion_val_macro_f1": None if champion_model is None
            else song_macro_f1(champion_model, rows, data_dir, artists, logger), "note": note}  # fmt: skip
