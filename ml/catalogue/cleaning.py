"""Cleaning rules: which tracks can teach a model one vocalist's voice, and why the others cannot.

Each rule gives a ``reason`` (a short category) and a ``detail`` (a sentence naming what it saw).
A track gets the first reason that applies; every track is either kept or rejected, never both.

The RecoNet report's third rule, *instrumental tracks*, needs the separated vocals, so it is not
here: the vocals stage applies it to the stems (``ml/separation/separation.py``, ``separation.instrumental`` in
params.yaml).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ml.tables import CLEAN_TRACKS_SCHEMA, REJECTED_SCHEMA, table_from_rows

LOSSLESS_FORMATS = {"flac", "wav", "aiff"}
# Suffixes that name a re-release of the same recording, not a new performance: bracketed
# ("Song (2011 Remaster)") or after a dash ("Song - 2011 Remaster", "Song - Single Version").
_REISSUE = r"\b(remaster(ed)?|version|mono|stereo|deluxe|bonus)\b"
_DASH, _NOT_DASH = "[-\u2013\u2014]", "[^-\u2013\u2014]"  # hyphen, en and em dash
_SAME_RECORDING = re.compile(rf"[\(\[][^\)\]]*{_REISSUE}[^\)\]]*[\)\]]|\s{_DASH}\s{_NOT_DASH}*{_REISSUE}{_NOT_DASH}*$")


def fold(text: str | None) -> str:
    """Lower-case, accent-free, punctuation-free, single-spaced text for comparisons."""
    if not text:
        return ""
    text = unicodedata.normalize("NFKD", text.casefold())
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = re.sub(r"[^\w\s]", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def artist_key(name: str) -> str:
    """What two spellings of one artist share: Unicode-normalised (NFKC), case-folded, single-spaced."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", name).casefold()).strip()


def canonical_artists(names: Iterable[str | None]) -> dict[str, str]:
    """Spelling -> the one spelling of its artist, for names that differ only in Unicode
    normalisation, case or spacing: the most common spelling wins (then the first in sort order)."""
    spellings: dict[str, Counter] = defaultdict(Counter)
    for name in names:
        if name:
            spellings[artist_key(name)][name] += 1
    return {s: min(c, key=lambda x: (-c[x], x)) for c in spellings.values() for s in c}


def normalise_title(title: str | None) -> str:
    return fold(_SAME_RECORDING.sub(" ", (title or "").casefold()))


def _marker_pattern(markers: Iterable[str]) -> re.Pattern | None:
    parts = []
    for marker in markers:
        m = marker.strip().casefold()
        if not m:
            continue
        if len(m) > 1 and re.fullmatch(r"\w+\.?", m):  # a word, maybe abbreviated: whole-word match
            parts.append(r"(?<!\w)" + re.escape(m) + (r"(?!\w)" if not m.endswith(".") else ""))
        else:  # a joining symbol or letter such as &, + or x: only between two names
            parts.append(r"(?<=\S)\s+" + re.escape(m) + r"\s+(?=\S)")
    return re.compile("|".join(parts)) if parts else None


def _bracket_pattern(markers: Iterable[str]) -> re.Pattern | None:
    """Markers that credit a guest only when they open a bracket: "Song (with X)", "Song [& X]"."""
    words = [re.escape(m.strip().casefold()) for m in markers if m.strip()]
    return re.compile(r"[\(\[]\s*(?:" + "|".join(words) + r")(?!\w)") if words else None


@dataclass
class CleaningRules:
    min_duration_s: float = 30.0
    max_duration_s: float = 5400.0
    title_markers: re.Pattern | None = None
    bracketed_title_markers: re.Pattern | None = None
    artist_markers: re.Pattern | None = None
    single_vocalist_artists: frozenset[str] = frozenset()
    compilation_artists: frozenset[str] = frozenset()
    duplicate_max_duration_diff_s: float = 2.0

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> CleaningRules:
        c = params.get("cleaning", {})
        return cls(
            min_duration_s=float(c.get("min_duration_s", 30.0)),
            max_duration_s=float(c.get("max_duration_s", 5400.0)),
            title_markers=_marker_pattern(c.get("multi_vocalist_title_markers", [])),
            bracketed_title_markers=_bracket_pattern(c.get("bracketed_title_markers", [])),
            artist_markers=_marker_pattern(c.get("multi_vocalist_artist_markers", [])),
            single_vocalist_artists=frozenset(fold(a) for a in c.get("single_vocalist_artists", [])),
            compilation_artists=frozenset(fold(a) for a in c.get("compilation_artists", [])),
            duplicate_max_duration_diff_s=float(c.get("duplicate_max_duration_diff_s", 2.0)),
        )


Rule = Callable[[dict[str, Any], CleaningRules], tuple[str, str] | None]


def rule_no_artist(t: dict[str, Any], r: CleaningRules) -> tuple[str, str] | None:
    if not t.get("artist"):
        what = "the file has no tags at all" if not t.get("has_tags") else "the file has no artist tag"
        return "no_artist", f"{what}, so its vocalist is unknown"
    return None


def rule_duration(t: dict[str, Any], r: CleaningRules) -> tuple[str, str] | None:
    d = float(t["duration_s"])
    if d <= r.min_duration_s:
        return "too_short", f"{d:.1f} s long, not more than {r.min_duration_s:g} s (interlude or skit)"
    if d > r.max_duration_s:
        return "too_long", f"{d / 60:.1f} min long, more than {r.max_duration_s / 60:g} min (a mix or a whole album?)"
    return None


def rule_compilation(t: dict[str, Any], r: CleaningRules) -> tuple[str, str] | None:
    if t.get("compilation"):
        return "compilation", "tagged as part of a compilation"
    for field in ("artist", "album_artist"):
        if fold(t.get(field)) in r.compilation_artists:
            return "compilation", f"{field.replace('_', ' ')} is {t[field]!r}"
    return None


def rule_multi_vocalist(t: dict[str, Any], r: CleaningRules) -> tuple[str, str] | None:
    artists = t.get("artists") or []
    if len(artists) > 1:
        return "multi_vocalist", f"{len(artists)} artist values: {', '.join(artists)}"
    artist = t.get("artist") or ""
    allowed = fold(artist) in r.single_vocalist_artists
    if not allowed and r.artist_markers and (m := r.artist_markers.search(artist.casefold())):
        return "multi_vocalist", f"artist {artist!r} names several people ({m.group(0).strip()!r})"
    title = (t.get("title") or "").casefold()
    for pattern in (r.title_markers, r.bracketed_title_markers):
        if pattern and (m := pattern.search(title)):
            return "multi_vocalist", f"title {t.get('title')!r} credits another vocalist ({m.group(0).strip()!r})"
    return None


# Tag-level rules, in order. The instrumental rule joins them at the vocals stage.
RULES: list[Rule] = [rule_no_artist, rule_duration, rule_compilation, rule_multi_vocalist]


def _quality_rank(t: dict[str, Any]) -> tuple:
    """Which copy of a duplicated song to keep: lossless, then higher bitrate, then path order."""
    return (
        t["format"] not in LOSSLESS_FORMATS,
        -(t.get("bitrate_kbps") or 0),
        -(t.get("sample_rate") or 0),
        t["release"],
        t["path"],
    )


def find_duplicates(tracks: list[dict[str, Any]], r: CleaningRules) -> dict[str, tuple[str, str]]:
    """Map path -> (reason, detail) for every copy that is not the one kept."""
    rejected: dict[str, tuple[str, str]] = {}
    kept_by_content: dict[str, dict[str, Any]] = {}
    for t in sorted(tracks, key=_quality_rank):
        first = kept_by_content.get(t["track_id"])
        if first is not None:
            rejected[t["path"]] = ("duplicate_content", f"same audio content as {first['path']}")
        else:
            kept_by_content[t["track_id"]] = t
    by_song: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for t in sorted(kept_by_content.values(), key=_quality_rank):
        key = (fold(t.get("artist")), normalise_title(t.get("title")))
        if not key[1]:
            continue
        kept_same_song = by_song.setdefault(key, [])
        twin = next(
            (k for k in kept_same_song if abs(k["duration_s"] - t["duration_s"]) <= r.duplicate_max_duration_diff_s),
            None,
        )
        if twin is not None:
            detail = (
                f"same song as {twin['path']} (artist and title match, durations "
                f"{t['duration_s']:.1f} s and {twin['duration_s']:.1f} s)"
            )
            rejected[t["path"]] = ("duplicate_song", detail)
        else:
            kept_same_song.append(t)
    return rejected


def over_genre(genre: str | None, params: dict[str, Any]) -> str:
    """The report's over-genre (Rock, Hip-hop, DiscoSoul, Pop) of a tag genre, else Other."""
    mapping: dict[str, list[str]] = params.get("genres", {}).get("over_genres", {})
    if not isinstance(genre, str) or not genre:
        return "Other"
    first = fold(re.split(r"[;/,|]", genre)[0])
    subgenres = [(fold(sub), name) for name, subs in mapping.items() for sub in subs]
    for sub, name in subgenres:
        if first == sub:
            return name
    for sub, name in sorted(subgenres, key=lambda s: -len(s[0])):
        if sub and re.search(r"(?<!\w)" + re.escape(sub) + r"(?!\w)", first):
            return name
    return "Other"


@dataclass
class CleaningResult:
    kept: pa.Table
    rejected: pa.Table


def clean(tracks: pa.Table, params: dict[str, Any]) -> CleaningResult:
    rules = CleaningRules.from_params(params)
    rows = tracks.to_pylist()
    canonical = canonical_artists(t.get("artist") for t in rows)  # one name per artist, for the labels
    rows = [{**t, "artist": canonical[t["artist"]], "artists": [canonical.get(a, a) for a in t.get("artists") or []]}
            if t.get("artist") else t for t in rows]  # fmt: skip
    rejected: list[dict[str, Any]] = []
    survivors = []
    for t in rows:
        verdict = next((v for rule in RULES if (v := rule(t, rules))), None)
        if verdict:
            rejected.append(_rejection(t, *verdict))
        else:
            survivors.append(t)
    duplicates = find_duplicates(survivors, rules)
    kept = []
    for t in survivors:
        if t["path"] in duplicates:
            rejected.append(_rejection(t, *duplicates[t["path"]]))
        else:
            kept.append({**t, "over_genre": over_genre(t.get("genre"), params)})
    kept.sort(key=lambda t: (t["release"], t["path"]))
    rejected.sort(key=lambda t: (t["release"] or "", t["path"]))
    return CleaningResult(table_from_rows(kept, CLEAN_TRACKS_SCHEMA), table_from_rows(rejected, REJECTED_SCHEMA))


def _rejection(t: dict[str, Any], reason: str, detail: str) -> dict[str, Any]:
    return {
        "path": t["path"], "release": t["release"], "track_id": t["track_id"],
        "stage": "clean_tracks", "reason": reason, "detail": detail,
    }  # fmt: skip
