"""The demo discography: layout, formats, tags, planted cases, determinism."""

import hashlib
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ml.catalogue.demo_library import SIZES, VOCALISTS, generate_demo_library, make_song_file, plan_library, render_song
from ml.catalogue.tags import read_audio_file
from tests.conftest import audio_files

PLANTED = {"interlude", "instrumental", "duet", "byte_duplicate", "re_encoded", "truncated", "corrupt",
           "not_audio", "no_tags", "non_ascii", "hostile_tags"}  # fmt: skip


def test_default_plan_meets_the_size_promised():
    specs = plan_library("default")
    songs = [s for s in specs if s.case == "song"]
    per_artist_album = Counter((s.voices[0], s.tags["album"]) for s in songs)
    artists = {v for v, _ in per_artist_album}
    assert len(artists) >= 6
    for v in artists:
        albums = [n for (a, _), n in per_artist_album.items() if a == v]
        assert len(albums) >= 2 and min(albums) >= 3
    assert all(40 <= s.duration_s <= 90 for s in songs)
    assert {VOCALISTS[v].voice for v in artists}.__len__() == len(artists)  # a voice each


def test_small_library_layout_formats_and_planted_cases(small_library):
    library, manifest = small_library
    files = {f["path"]: f for f in manifest["files"]}
    assert set(audio_files(library)) == set(files)  # the manifest lists every file
    assert {f["case"] for f in files.values()} >= PLANTED
    songs = [f for f in files.values() if f["case"] in ("song", "non_ascii", "hostile_tags", "source_of_truncated")]
    assert {f["fmt"] for f in songs} >= {"mp3", "flac", "ogg", "m4a", "wav"}
    assert Counter(f["fmt"] for f in songs).most_common(1)[0][0] == "mp3"
    rates, channels = set(), set()
    for f in songs:
        parts = f["path"].split("/")
        assert len(parts) == 3 and parts[2][:2].isdigit() and parts[2][2] == " "  # Artist/Album/NN Title.ext
        tags, props = read_audio_file(library / f["path"])
        rates.add(props.sample_rate)
        channels.add(props.channels)
        expected = f["tags"]
        assert tags.artists == expected["artists"]
        assert (tags.album, tags.track_number, tags.year) == (
            expected["album"],
            expected["track_number"],
            expected["year"],
        )
        assert tags.title == expected["title"]
        assert abs(props.duration_s - f["duration_s"]) < 0.2
    assert rates == {22050, 44100, 48000} and channels == {1, 2}


def test_planted_cases_are_what_they_claim(small_library):
    library, manifest = small_library
    by_case = {f["case"]: f for f in manifest["files"]}
    copy, original = by_case["byte_duplicate"], by_case["byte_duplicate"]["source"]
    assert (library / copy["path"]).read_bytes() == (library / original).read_bytes()
    assert by_case["interlude"]["duration_s"] <= 30
    assert by_case["instrumental"]["voices"] == [] and by_case["instrumental"]["vocal_regions"] == []
    assert len(set(by_case["duet"]["voices"])) == 2 and "feat." in by_case["duet"]["tags"]["title"]
    tags, _ = read_audio_file(library / by_case["no_tags"]["path"])
    assert not tags.has_tags
    tags, _ = read_audio_file(library / by_case["hostile_tags"]["path"])
    assert tags.title == "../../etc/passwd" and "\\" in tags.album
    src = library / by_case["truncated"]["source"]
    assert (library / by_case["truncated"]["path"]).stat().st_size < 0.5 * src.stat().st_size
    assert not (library / by_case["not_audio"]["path"]).read_bytes().startswith((b"ID3", b"\xff\xfb"))
    re_encoded = by_case["re_encoded"]
    assert re_encoded["fmt"] != Path(re_encoded["source"]).suffix.lstrip(".")


def test_sung_songs_have_vocals_in_phrases_with_gaps(small_library):
    _, manifest = small_library
    for f in manifest["files"]:
        if f["case"] == "song":
            regions = f["vocal_regions"]
            assert len(regions) >= 3
            gaps = [b[0] - a[1] for a, b in zip(regions, regions[1:], strict=False)]
            assert min(gaps) > 0.3  # phrases are separated by silence in the voice


def test_vocals_are_audible_in_the_mix():
    """Where a phrase is sung, the mix carries more energy in the voice band than where it is not."""
    spec = next(s for s in plan_library("small") if s.case == "song")
    spec = replace(spec, duration_s=20.0)
    mix, regions = render_song(spec)
    vocals_off = replace(spec, voices=[])
    backing, _ = render_song(vocals_off)
    mono, back = mix.mean(axis=1), backing.mean(axis=1)
    sung = np.zeros(len(mono), bool)
    for a, b in regions:
        sung[int(a * 44100) : int(b * 44100)] = True
    # the mix differs from the backing alone by the voice, only where phrases are
    diff = mono / np.abs(mono).max() - back / np.abs(back).max()
    assert np.sqrt(np.mean(diff[sung] ** 2)) > 3 * np.sqrt(np.mean(diff[~sung] ** 2))


def test_generation_is_deterministic(tmp_path):
    spec = next(s for s in plan_library("small") if s.case == "song" and s.fmt == "mp3")
    spec = replace(spec, duration_s=8.0)
    digests = []
    for run in ("a", "b"):
        make_song_file(spec, str(tmp_path / run))
        digests.append(hashlib.sha256((tmp_path / run / spec.path).read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    assert [s.path for s in plan_library("small")] == [s.path for s in plan_library("small")]


def test_existing_folder_is_not_overwritten(tmp_path, small_library):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "song.mp3").write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        generate_demo_library(tmp_path / "mine", size="small")
    assert (tmp_path / "mine" / "song.mp3").read_bytes() == b"precious"
    library, manifest = small_library
    assert generate_demo_library(library, size="small") == manifest  # same demo: left as it is


def test_sizes_are_known():
    assert set(SIZES) == {"default", "small"}
    with pytest.raises(ValueError, match="unknown demo size"):
        plan_library("huge")
