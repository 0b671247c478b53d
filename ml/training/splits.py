"""Train / validation / test splits of the segments, stratified by artist and seeded.

Four kinds, as the reports use them:

* ``song`` (default): whole songs go to one side — no clip of a test song is ever trained on;
* ``album``: per artist one album to test and one to validation, the rest to training (the
  "producer effect" test: a voice recognised across recording sessions, not a mix recognised).
  With only two albums, the test album is one and validation takes songs of the other;
* ``segment``: the RecoNet report's stratified 60/20/20 over clips. **Leaky**: clips of one song
  land on both sides, so its scores overstate what a new song would get; kept for comparison;
* ``kfold``: k folds by song (each song in exactly one test fold), for cross-validation.

A song's side depends only on its track id and the seed (a hash of both, in [0, 1), against the
fractions), and an album's on its name, so the sides stay put as the library grows: an earlier
test song stays a test song. An artist whose songs leave a side empty lends it the song nearest to
it, so every artist with enough songs is on every side (that song may move when the artist gains one
in that side's band).

An artist with too few songs or albums for the chosen kind is left out with a reason (returned,
and recorded in `rejected` by the asset), never crashed on.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ml import config

KINDS = ("song", "album", "segment", "kfold")

SPLITS_SCHEMA = pa.schema(
    [
        pa.field("segment_id", pa.string(), nullable=False),
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("artist", pa.string(), nullable=False),
        pa.field("album", pa.string()),
        pa.field("kind", pa.string(), nullable=False),  # song, album, segment, kfold
        pa.field("fold", pa.int32(), nullable=False),  # 0 except for kfold
        pa.field("split", pa.string(), nullable=False),  # train, val, test
    ]
)


@dataclass(frozen=True)
class SplitParams:
    kinds: tuple[str, ...] = KINDS
    seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    folds: int = 5
    min_songs: int = 3  # per artist, for song / segment / kfold splits (one song per side at least)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SplitParams:
        section = config.section(params, "splits", cls)
        if "kinds" in section:
            section["kinds"] = tuple(section["kinds"])
            bad = set(section["kinds"]) - set(KINDS)
            if bad:
                raise ValueError(f"splits.kinds: unknown kind(s) {sorted(bad)}; choose from {KINDS}")
        return cls(**section)


@dataclass
class Exclusion:
    artist: str
    kind: str
    reason: str


def _counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(val, test) counts out of n items: at least one each, and at least one left to train."""
    test = min(max(1, round(n * test_fraction)), n - 2)
    val = min(max(1, round(n * val_fraction)), n - 1 - test)
    return val, test


def _unit(seed: int, key: str) -> float:
    """A number in [0, 1) that depends only on ``key`` and the seed: where a song (or clip, or album)
    falls, whatever else is in the library."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _banded(order: list[str], units: dict[str, float], val_fraction: float, test_fraction: float) -> list[str]:
    """The side of each item of ``order`` (sorted by unit): test below ``test_fraction``, validation
    below ``test_fraction + val_fraction``, training above, so an item keeps its side as others
    arrive. An empty side borrows the item nearest to it, so each side keeps one, and training two."""
    n = len(order)
    test = sum(units[k] < test_fraction for k in order)
    val = sum(test_fraction <= units[k] < test_fraction + val_fraction for k in order)
    test = min(max(1, test), n - 2)
    val = min(max(1, val), n - 1 - test)
    return ["test"] * test + ["val"] * val + ["train"] * (n - test - val)


def _by_artist(segments: pa.Table) -> dict[str, dict[str, Any]]:
    artists: dict[str, dict[str, Any]] = defaultdict(lambda: {"tracks": {}, "albums": defaultdict(list)})
    for track_id, artist, album in zip(*(segments.column(c).to_pylist() for c in ("track_id", "artist", "album")),
                                       strict=True):  # fmt: skip
        entry = artists[artist]
        if track_id not in entry["tracks"]:
            entry["tracks"][track_id] = album
            entry["albums"][album or ""].append(track_id)
    return artists


def split_segments(segments: pa.Table, settings: SplitParams) -> tuple[pa.Table, list[Exclusion]]:
    """Every split kind of ``settings.kinds`` over the segments: one row per (segment, kind, fold)."""
    artists = _by_artist(segments)
    track_split: dict[tuple[str, int], dict[str, str]] = {}  # (kind, fold) -> track_id -> split
    segment_split: dict[str, str] = {}
    excluded: list[Exclusion] = []
    for artist in sorted(artists, key=str):
        units = {t: _unit(settings.seed, t) for t in artists[artist]["tracks"]}
        tracks = sorted(units, key=lambda t: (units[t], t))  # in the order of their hash: stable as songs arrive
        albums = {a: sorted(t, key=lambda t: (units[t], t)) for a, t in artists[artist]["albums"].items()}
        order = tracks
        for kind in settings.kinds:
            if kind in ("song", "segment", "kfold") and len(tracks) < settings.min_songs:
                excluded.append(Exclusion(artist, kind, f"{len(tracks)} song(s); the {kind} split needs "
                                                        f"{settings.min_songs}"))  # fmt: skip
                continue
            if kind == "song":
                sides = _banded(order, units, settings.val_fraction, settings.test_fraction)
                track_split.setdefault((kind, 0), {}).update(zip(order, sides, strict=True))
            elif kind == "kfold":
                folds = min(settings.folds, len(order))
                for fold in range(settings.folds):
                    held_out = set(order[fold % folds :: folds]) if fold < folds else set()
                    rest = [t for t in order if t not in held_out]
                    n_val = max(1, round(len(rest) * settings.val_fraction)) if len(rest) > 1 else 0
                    mapping = {t: "test" for t in held_out}
                    mapping.update({t: ("val" if i < n_val else "train") for i, t in enumerate(rest)})
                    track_split.setdefault((kind, fold), {}).update(mapping)
            elif kind == "album":
                if len(albums) < 2:
                    excluded.append(Exclusion(artist, kind, f"{len(albums)} album(s); the album split needs 2"))
                    continue
                album_units = {a: _unit(settings.seed, f"{artist}\0{a}") for a in albums}
                names = sorted(albums, key=lambda a: (album_units[a], a))
                mapping = {t: "test" for t in albums[names[0]]}
                if len(names) >= 3:
                    mapping.update({t: "val" for t in albums[names[1]]})
                    mapping.update({t: "train" for n in names[2:] for t in albums[n]})
                else:  # two albums: validation takes songs of the training album
                    rest = albums[names[1]]
                    if len(rest) < 2:
                        excluded.append(Exclusion(artist, kind, "the training album has fewer than 2 songs"))
                        continue
                    n_val = min(max(1, sum(units[t] < settings.val_fraction for t in rest)), len(rest) - 1)
                    mapping.update({t: ("val" if i < n_val else "train") for i, t in enumerate(rest)})
                track_split.setdefault((kind, 0), {}).update(mapping)
        if "segment" in settings.kinds and len(tracks) >= settings.min_songs:
            ids = [s for s, a in zip(segments.column("segment_id").to_pylist(), segments.column("artist").to_pylist(),
                                     strict=True) if a == artist]  # fmt: skip
            ids = sorted(ids, key=lambda i: (_unit(settings.seed, i), i))
            val, test = _counts(len(ids), settings.val_fraction, settings.test_fraction) if len(ids) >= 3 else (0, 0)
            segment_split.update(zip(ids, ["test"] * test + ["val"] * val + ["train"] * (len(ids) - test - val),
                                     strict=True))  # fmt: skip
    rows = []
    columns = {c: segments.column(c).to_pylist() for c in ("segment_id", "track_id", "artist", "album")}
    for i in range(segments.num_rows):
        base = {c: columns[c][i] for c in columns}
        for (kind, fold), mapping in track_split.items():
            if base["track_id"] in mapping:
                rows.append({**base, "kind": kind, "fold": fold, "split": mapping[base["track_id"]]})
        if base["segment_id"] in segment_split:
            rows.append({**base, "kind": "segment", "fold": 0, "split": segment_split[base["segment_id"]]})
    from ml.tables import table_from_rows

    return table_from_rows(rows, SPLITS_SCHEMA), excluded


def _segment_ids(table: pa.Table) -> pa.Array | pa.ChunkedArray:
    return table.column("segment_id") if "segment_id" in table.column_names else pa.array([], pa.string())


def processed_clips(splits: pa.Table, segments: pa.Table, features: pa.Table) -> tuple[pa.Table, pa.Table, list[str]]:
    """What a training can use while releases are in flight: the segments whose log-mels are
    cached, the split rows of those segments, and the releases some of whose clips were left out
    (still being processed: cut, their log-mels not computed yet; or their features step failed).
    Split rows of releases that left the library since the splits were made go too."""
    left_out = []
    if segments.num_rows:
        cached = pc.is_in(segments.column("segment_id"), _segment_ids(features))
        named_by = "release" if "release" in segments.column_names else "track_id"  # (a table made by hand)
        left_out = sorted(set(segments.filter(pc.invert(cached)).column(named_by).to_pylist()))
        segments = segments.filter(cached)
    return splits.filter(pc.is_in(splits.column("segment_id"), _segment_ids(segments))), segments, left_out


def unfit_reason(table: pa.Table, kind: str) -> str | None:
    """Why no classifier can be trained on split ``kind`` of a splits table (None: one can): fewer
    than two artists have training clips in it (e.g. no artist has the two albums the album split
    needs)."""
    rows = table.filter(pc.and_(pc.equal(table.column("kind"), kind), pc.equal(table.column("fold"), 0)))
    artists = sorted(set(rows.filter(pc.equal(rows.column("split"), "train")).column("artist").to_pylist()), key=str)
    if len(artists) >= 2:
        return None
    which = f"only {artists[0]!r} is" if artists else "no artist is"
    return (f"{which} eligible for the {kind} split, and a classifier needs 2 artists (the `splits` asset's "
            "metadata lists the artists left out and why)")  # fmt: skip


def split_problems(table: pa.Table) -> list[str]:
    """What is wrong with a splits table, in words (empty: nothing).

    * a song (or, for the ``segment`` kind, a clip) on two sides of one split: the test score would
      measure memory, not recognition;
    * for the ``album`` kind, a test album that also feeds training or validation;
    * an artist of a split with no training clip (the model cannot name it), or, for the song,
      album and segment kinds, absent from validation or test (its scores would be undefined).
      A k-fold fold may hold no test song of an artist with fewer songs than folds.
    """
    problems: list[str] = []
    rows = table.select(["segment_id", "track_id", "artist", "album", "kind", "fold", "split"]).to_pylist()
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["kind"], row["fold"])].append(row)
    for (kind, fold), group in sorted(groups.items()):
        name = kind if kind != "kfold" else f"kfold fold {fold}"
        unit = "segment_id" if kind == "segment" else "track_id"
        sides: dict[str, set[str]] = defaultdict(set)
        for row in group:
            sides[row[unit]].add(row["split"])
        leaked = sorted(u for u, s in sides.items() if len(s) > 1)
        if leaked:
            problems.append(f"{name}: {len(leaked)} {'clip' if unit == 'segment_id' else 'song'}(s) on two sides, "
                            f"e.g. {leaked[0]}")  # fmt: skip
        if kind == "album":
            test_albums = {(r["artist"], r["album"]) for r in group if r["split"] == "test"}
            shared = sorted({(r["artist"], r["album"]) for r in group if r["split"] != "test"} & test_albums, key=str)
            if shared:
                problems.append(f"album: test album(s) also in training or validation: {shared[:3]}")
        artists_by_side: dict[str, set[str]] = defaultdict(set)
        for row in group:
            artists_by_side[row["split"]].add(row["artist"])
        everyone = set().union(*artists_by_side.values())
        required = ("train",) if kind == "kfold" else ("train", "val", "test")
        for side in required:
            missing = sorted(everyone - artists_by_side[side], key=str)
            if missing:
                problems.append(f"{name}: no {side} clip for {len(missing)} artist(s): {missing[:5]}")
    return problems
