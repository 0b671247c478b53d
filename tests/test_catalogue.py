"""Scanning: releases, content ids, and bad files that must become `rejected` rows."""

import os
import shutil

import pytest
from mutagen.id3 import ID3, TIT2, TPE1

from ml.catalogue.catalogue import (
    ROOT_RELEASE,
    find_releases,
    library_file,
    release_key,
    scan_release,
    track_id_for,
)
from ml.config import load_params
from tests.conftest import make_tone

PARAMS = load_params()
EXTS = PARAMS["library"]["audio_extensions"]


def _tag(path, artist, title):
    id3 = ID3()
    id3.add(TPE1(encoding=3, text=[artist]))
    id3.add(TIT2(encoding=3, text=[title]))
    id3.save(path)


def test_releases_are_folders_with_audio(tmp_path):
    make_tone(tmp_path / "A" / "First" / "01 a.mp3", "mp3")
    make_tone(tmp_path / "A" / "Second..." / "01 b.flac", "flac")  # "..." cannot be in a Dagster key
    make_tone(tmp_path / "loose.wav", "wav")
    (tmp_path / "A" / "Art").mkdir()
    (tmp_path / "A" / "Art" / "cover.jpg").write_bytes(b"\xff\xd8")
    make_tone(tmp_path / ".hidden" / "x.mp3", "mp3")
    releases = find_releases(tmp_path, EXTS)
    assert sorted(releases) == sorted(["A/First", "A/Second\u2026", ROOT_RELEASE])
    assert releases["A/Second\u2026"] == tmp_path / "A" / "Second..."
    assert release_key("Bad\x07Name/..\x00.") == "Bad_Name/.._."


def test_missing_library_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="music library not found"):
        find_releases(tmp_path / "nope", EXTS)


def test_track_id_follows_audio_content_not_tags_or_name(tmp_path):
    release = tmp_path / "Artist" / "Album"
    original = make_tone(release / "01 song.mp3", "mp3", freq=440)
    _tag(original, "Artist", "Song")
    copy = release / "copy.mp3"
    shutil.copyfile(original, copy)
    _tag(copy, "Someone Else", "Renamed and re-tagged")
    other = make_tone(release / "02 other.mp3", "mp3", freq=660)
    result = scan_release(tmp_path, "Artist/Album", release, PARAMS)
    ids = dict(zip(result.tracks.column("path").to_pylist(), result.tracks.column("track_id").to_pylist(), strict=True))
    assert ids["Artist/Album/01 song.mp3"] == ids["Artist/Album/copy.mp3"]
    assert ids["Artist/Album/02 other.mp3"] != ids["Artist/Album/01 song.mp3"]
    assert other.exists() and result.rejected.num_rows == 0
    assert track_id_for("ab" * 32) == track_id_for("ab" * 32)


def test_bad_files_are_rejected_with_reasons_and_the_batch_goes_on(tmp_path):
    release = tmp_path / "Artist" / "Album"
    good = make_tone(release / "01 good.mp3", "mp3", seconds=4.0)
    data = make_tone(tmp_path / "src.mp3", "mp3", seconds=20.0).read_bytes()
    (release / "02 truncated.mp3").write_bytes(data[: len(data) // 3])
    (release / "03 page.flac").write_bytes(b"<html>not audio</html>")
    (release / "04 empty.ogg").write_bytes(b"")
    os.symlink("/etc/hostname", release / "05 link.mp3")
    result = scan_release(tmp_path, "Artist/Album", release, PARAMS)
    assert result.files_scanned == 5
    assert result.tracks.column("path").to_pylist() == ["Artist/Album/01 good.mp3"]
    reasons = dict(
        zip(result.rejected.column("path").to_pylist(), result.rejected.column("reason").to_pylist(), strict=True)
    )
    assert reasons == {
        "Artist/Album/02 truncated.mp3": "truncated",
        "Artist/Album/03 page.flac": "not_audio",
        "Artist/Album/04 empty.ogg": "not_audio",
        "Artist/Album/05 link.mp3": "outside_library",
    }
    for detail in result.rejected.column("detail").to_pylist():
        assert detail  # every rejection says why
    assert good.exists()


def test_audio_properties_are_recorded(tmp_path):
    release = tmp_path / "A" / "B"
    make_tone(release / "x.ogg", "ogg", seconds=5.0, sample_rate=48000, channels=1)
    row = scan_release(tmp_path, "A/B", release, PARAMS).tracks.to_pylist()[0]
    assert (row["format"], row["codec"], row["sample_rate"], row["channels"]) == ("ogg", "vorbis", 48000, 1)
    assert row["duration_s"] == pytest.approx(5.0, abs=0.1)
    assert row["bitrate_kbps"] > 0 and row["file_size"] > 0 and not row["has_tags"]


def test_params_with_a_key_given_twice_are_refused_naming_the_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 40\n  batch_size: 32\n  epochs: 4\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"duplicate key 'epochs' \(line 4\)") as error:
        load_params(path)
    assert str(path) in str(error.value)
    path.write_text("train:\n  epochs: 40\nfeatures:\n  epochs: 4\n", encoding="utf-8")  # same key, two sections
    assert load_params(path) == {"train": {"epochs": 40}, "features": {"epochs": 4}}


def test_a_file_name_that_is_not_utf8_is_kept_and_its_path_round_trips(tmp_path):
    folder = os.fsencode(tmp_path) + b"/Artist/Alb\xe9um"  # Latin-1 names, as on old disks and Samba shares
    os.makedirs(folder)
    os.rename(make_tone(tmp_path / "good.mp3", "mp3"), folder + b"/01 good.mp3")
    os.rename(make_tone(tmp_path / "odd.mp3", "mp3", freq=660), folder + b"/02 \xff\xfe odd.mp3")
    (key, release), = find_releases(tmp_path, EXTS).items()
    assert key == "Artist/Alb_um"
    result = scan_release(tmp_path, key, release, PARAMS)  # failed in pyarrow: "surrogates not allowed"
    assert result.files_scanned == 2 and result.rejected.num_rows == 0
    rows = {r["path"]: r for r in result.tracks.to_pylist()}
    assert sorted(rows) == ["Artist/Alb\\xe9um/01 good.mp3", "Artist/Alb\\xe9um/02 \\xff\\xfe odd.mp3"]
    odd = rows["Artist/Alb\\xe9um/02 \\xff\\xfe odd.mp3"]
    assert odd["path_bytes"] == b"Artist/Alb\xe9um/02 \xff\xfe odd.mp3"  # lossless
    assert os.fsencode(library_file(tmp_path, odd)) == folder + b"/02 \xff\xfe odd.mp3"
    assert all(library_file(tmp_path, row).is_file() for row in rows.values())


def test_untagged_files_take_artist_album_and_title_from_the_layout_and_say_so(tmp_path):
    from ml.catalogue.cleaning import clean

    album = tmp_path / "Nina Vale" / "Blue Hours"
    make_tone(album / "01 - Morning Song.mp3", "mp3")  # no tags at all
    _tag(make_tone(album / "02 Tagged.mp3", "mp3", freq=550), "Tag Artist", "Tag Title")  # no album tag
    make_tone(tmp_path / "Nina Vale" / "Live" / "CD2" / "03 Encore.mp3", "mp3", freq=660)
    rows = {}
    for key, folder in find_releases(tmp_path, EXTS).items():
        rows.update({r["path"]: r for r in scan_release(tmp_path, key, folder, PARAMS).tracks.to_pylist()})
    names = {p: (r["artist"], r["album"], r["title"], r["track_number"], r["from_path"]) for p, r in rows.items()}
    assert names == {
        "Nina Vale/Blue Hours/01 - Morning Song.mp3":
            ("Nina Vale", "Blue Hours", "Morning Song", 1, ["title", "track_number", "artist", "album"]),
        "Nina Vale/Blue Hours/02 Tagged.mp3": ("Tag Artist", "Blue Hours", "Tag Title", 2, ["track_number", "album"]),
        "Nina Vale/Live/CD2/03 Encore.mp3": ("Nina Vale", "Live", "Encore", 3, ["title", "track_number", "artist",
                                                                                 "album"]),
    }  # fmt: skip
    assert rows["Nina Vale/Blue Hours/01 - Morning Song.mp3"]["artists"] == ["Nina Vale"]
    assert not rows["Nina Vale/Blue Hours/01 - Morning Song.mp3"]["has_tags"]  # the tags are still empty
    params = {**PARAMS, "cleaning": {**PARAMS["cleaning"], "min_duration_s": 1.0}}  # 2 s tones are songs here
    tracks = scan_release(tmp_path, "Nina Vale/Blue Hours", album, params).tracks
    assert clean(tracks, params).rejected.num_rows == 0  # no longer rejected as no_artist

    tags_only = {**params, "catalogue": {**PARAMS["catalogue"], "names_from_layout": False}}
    row = scan_release(tmp_path, "Nina Vale/Blue Hours", album, tags_only).tracks.to_pylist()[0]
    assert (row["artist"], row["album"], row["title"], row["from_path"]) == (None, None, None, [])
    assert [r["reason"] for r in clean(scan_release(tmp_path, "x", album, tags_only).tracks, tags_only)
            .rejected.to_pylist()] == ["no_artist"]  # fmt: skip
