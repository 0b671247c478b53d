"""Each cleaning rule on its own, duplicates and their precedence, and the over-genre map."""

import pytest

from ml.catalogue.cleaning import clean, normalise_title, over_genre
from ml.config import load_params
from ml.tables import TRACKS_SCHEMA, table_from_rows

PARAMS = load_params()


def track(path, artist="Singer", title=None, duration=60.0, track_id=None, **extra):
    artists = extra.pop("artists", [artist] if artist else [])
    return {
        "track_id": track_id or f"id-{path}", "content_sha256": "0" * 64, "release": "Singer/Album",
        "path": path, "file_size": 1, "format": extra.pop("format", "mp3"), "duration_s": duration,
        "has_tags": bool(artist), "artist": artist, "artists": artists, "title": title or path,
        "bitrate_kbps": extra.pop("bitrate_kbps", 192), "sample_rate": 44100, **extra,
    }  # fmt: skip


def verdicts(rows, params=PARAMS):
    result = clean(table_from_rows(rows, TRACKS_SCHEMA), params)
    kept = set(result.kept.column("path").to_pylist())
    rejected = dict(
        zip(result.rejected.column("path").to_pylist(), result.rejected.column("reason").to_pylist(), strict=True)
    )
    assert len(kept) + len(rejected) == len(rows)  # nothing lost, nothing counted twice
    assert all(s == "clean_tracks" for s in result.rejected.column("stage").to_pylist())
    return kept, rejected


def test_duration_rule_boundary():
    kept, rejected = verdicts([track("a", duration=30.0), track("b", duration=30.5), track("c", duration=20)])
    assert rejected == {"a": "too_short", "c": "too_short"} and kept == {"b"}


def test_too_long_files_are_rejected():
    _, rejected = verdicts([track("mix", duration=3 * 3600.0)])
    assert rejected == {"mix": "too_long"}


@pytest.mark.parametrize(
    ("artist", "title", "artists", "expected"),
    [
        ("Singer", "Song (feat. Guest)", None, "multi_vocalist"),
        ("Singer", "Song ft. Guest", None, "multi_vocalist"),
        ("Singer", "Song featuring Guest", None, "multi_vocalist"),
        ("Singer", "Song (with Guest)", None, "multi_vocalist"),
        ("Singer", "Song [x Guest]", None, "multi_vocalist"),
        ("Singer & Guest", "Song", None, "multi_vocalist"),
        ("Singer x Guest", "Song", None, "multi_vocalist"),
        ("Singer vs. Guest", "Song", None, "multi_vocalist"),
        ("Singer feat. Guest", "Song", None, "multi_vocalist"),
        ("Singer", "Song", ["Singer", "Guest"], "multi_vocalist"),
        ("Singer", "Dance With Me", None, None),  # "with" inside a title is not a credit
        ("Malcolm X", "Song", None, None),  # a trailing X is a name, not a join
        ("AC/DC", "Song", None, None),
        ("Various Artists", "Song", None, "compilation"),
    ],
)  # fmt: skip
def test_multi_vocalist_and_compilation_rules(artist, title, artists, expected):
    row = track("t", artist=artist, title=title, **({"artists": artists} if artists else {}))
    _, rejected = verdicts([row])
    assert rejected.get("t") == expected


def test_single_vocalist_allowlist_and_compilation_flag():
    params = {**PARAMS, "cleaning": {**PARAMS["cleaning"], "single_vocalist_artists": ["Earth, Wind & Fire"]}}
    kept, rejected = verdicts([track("ewf", artist="Earth, Wind & Fire"), track("c", compilation=True)], params)
    assert kept == {"ewf"} and rejected == {"c": "compilation"}


def test_untagged_files_have_no_label():
    _, rejected = verdicts([track("bare", artist=None)])
    assert rejected == {"bare": "no_artist"}


def test_duplicates_by_content_and_by_song():
    rows = [
        track("01 Song.mp3", title="Song", track_id="same"),
        track("Copy of 01 Song.mp3", title="Song", track_id="same"),
        track(
            "Song (2011 Remaster).ogg",
            title="Song (2011 Remastered Version)",
            duration=60.8,
            format="ogg",
            bitrate_kbps=96,
        ),
        track("Song (Live).mp3", title="Song", duration=75.0),  # same title, other performance
        track("Other.mp3", title="Other"),
    ]  # fmt: skip
    kept, rejected = verdicts(rows)
    assert kept == {"01 Song.mp3", "Song (Live).mp3", "Other.mp3"}
    assert rejected == {"Copy of 01 Song.mp3": "duplicate_content", "Song (2011 Remaster).ogg": "duplicate_song"}


def test_lossless_copy_wins_over_lossy():
    rows = [
        track("a.mp3", title="Song", bitrate_kbps=320),
        track("b.flac", title="Song", format="flac", bitrate_kbps=900),
    ]
    kept, rejected = verdicts(rows)
    assert kept == {"b.flac"} and rejected == {"a.mp3": "duplicate_song"}


def test_same_title_by_different_artists_is_not_a_duplicate():
    kept, _ = verdicts([track("a", artist="One", title="Home"), track("b", artist="Two", title="Home")])
    assert kept == {"a", "b"}


def test_normalised_titles_and_over_genres():
    assert normalise_title("Héllo, World! (Remastered 2009)") == normalise_title("hello world")
    assert normalise_title("Song (Live)") != normalise_title("Song")
    assert [over_genre(g, PARAMS) for g in ["Classic Rock", "Rap", "R&B", "Synthpop", "Jazz", None, "Funk; Soul"]] == [
        "Rock", "Hip-hop", "DiscoSoul", "Pop", "Other", "Other", "DiscoSoul",
    ]  # fmt: skip


def test_kept_tracks_carry_their_over_genre():
    result = clean(table_from_rows([track("a", genre="Alternative")], TRACKS_SCHEMA), PARAMS)
    assert result.kept.column("over_genre").to_pylist() == ["Rock"]


def test_unbracketed_reissue_suffixes_are_the_same_song():
    rows = [
        track("01 Song.flac", title="Song", format="flac"),
        track("Song - 2011 Remaster.mp3", title="Song - 2011 Remaster", duration=60.5),
        track("Song - Single Version.mp3", title="Song \u2013 Single Version", duration=59.4),
        track("Song - Live.mp3", title="Song - Live", duration=60.2),  # another performance
    ]
    kept, rejected = verdicts(rows)
    assert kept == {"01 Song.flac", "Song - Live.mp3"}
    assert rejected == {"Song - 2011 Remaster.mp3": "duplicate_song", "Song - Single Version.mp3": "duplicate_song"}


def test_artist_spellings_that_differ_in_normalisation_case_or_spacing_are_one_artist():
    # the most common spelling (NFC), decomposed (NFD), upper case, a no-break space, a full-width letter
    spellings = ["Beyonc\u00e9", "Beyonc\u00e9", "Beyonce\u0301", "BEYONC\u00c9", "Beyonc\u00e9\u00a0 ",
                 "\uff22eyonc\u00e9"]
    rows = [track(f"{i}.mp3", artist=a, title=f"Song {i}") for i, a in enumerate(spellings)]
    rows += [track("x.mp3", artist="Beyonce", title="Other")]  # without the accent: not a spelling of the same name
    result = clean(table_from_rows(rows, TRACKS_SCHEMA), PARAMS)
    artists = dict(zip(result.kept.column("path").to_pylist(), result.kept.column("artist").to_pylist(), strict=True))
    assert {artists[f"{i}.mp3"] for i in range(len(spellings))} == {"Beyonc\u00e9"} and artists["x.mp3"] == "Beyonce"
    assert result.kept.column("artists").to_pylist()[0] == ["Beyonc\u00e9"]
    twin = [track("a.mp3", artist="ADA VALE", title="Home"), track("b.mp3", artist="Ada Vale", title="Home")]
    assert verdicts(twin)[1] == {"b.mp3": "duplicate_song"}  # one artist, one song
