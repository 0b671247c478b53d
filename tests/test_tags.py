"""Tag and property reading across ID3, Vorbis/FLAC, MP4 and WAV, including hostile tags."""

import pytest
from mutagen.flac import FLAC
from mutagen.id3 import ID3, TCON, TDRC, TPE1, TRCK

from ml.catalogue.demo_library import write_tags
from ml.catalogue.tags import MAX_TAG_LENGTH, UnreadableAudioError, clean_tag_text, parse_year, read_audio_file
from tests.conftest import make_tone

TAGS = {
    "artists": ["Zoë Åkesson"], "album_artist": "Zoë Åkesson", "album": "Sånger från Ödemarken",
    "title": "Éternité – 夜の歌", "track_number": 3, "track_total": 9, "genre": "Indie Rock", "year": 1996,
}  # fmt: skip


@pytest.mark.parametrize(
    ("fmt", "sample_rate", "channels", "codec"),
    [("mp3", 44100, 2, "mp3"), ("flac", 48000, 1, "flac"), ("ogg", 22050, 2, "vorbis"),
     ("m4a", 44100, 2, "aac"), ("wav", 22050, 1, "pcm_s16")],
)  # fmt: skip
def test_reads_tags_and_properties_in_every_format(tmp_path, fmt, sample_rate, channels, codec):
    path = make_tone(tmp_path / f"song.{fmt}", fmt, seconds=3.0, sample_rate=sample_rate, channels=channels)
    write_tags(path, fmt, TAGS)
    tags, props = read_audio_file(path)
    assert tags.artist == "Zoë Åkesson" and tags.artists == ["Zoë Åkesson"]
    assert (tags.album_artist, tags.album, tags.title) == (TAGS["album_artist"], TAGS["album"], TAGS["title"])
    assert (tags.track_number, tags.genre, tags.year) == (3, "Indie Rock", 1996)
    assert tags.has_tags
    assert props.format == fmt and props.codec == codec
    assert props.sample_rate == sample_rate and props.channels == channels
    assert props.duration_s == pytest.approx(3.0, abs=0.15)


def test_file_without_tags_reads_as_untagged(tmp_path):
    tags, props = read_audio_file(make_tone(tmp_path / "bare.mp3", "mp3"))
    assert not tags.has_tags and tags.artist is None and tags.artists == []
    assert props.duration_s > 1.5


def test_hostile_id3_values_are_cleaned_not_trusted(tmp_path):
    path = make_tone(tmp_path / "hostile.mp3", "mp3")
    id3 = ID3()
    id3.add(TPE1(encoding=3, text=["../../etc/passwd", "Second\x1b[31m Voice"]))  # two values, an escape
    id3.add(TCON(encoding=3, text=["(17)"]))  # numeric ID3v1 genre reference
    id3.add(TRCK(encoding=3, text=["7/12"]))
    id3.add(TDRC(encoding=3, text=["1999-05-01"]))
    id3.save(path)
    tags, _ = read_audio_file(path)
    assert tags.artists == ["../../etc/passwd", "Second [31m Voice"]  # kept as data, control chars gone
    assert (tags.genre, tags.track_number, tags.year) == ("Rock", 7, 1999)


def test_vorbis_multiple_artists_and_huge_values(tmp_path):
    path = make_tone(tmp_path / "multi.flac", "flac")
    audio = FLAC(path)
    audio["artist"] = ["Alice", "Bob"]
    audio["title"] = "x" * 100_000
    audio["album"] = "\x00\x07\n\t"
    audio.save()
    tags, _ = read_audio_file(path)
    assert tags.artists == ["Alice", "Bob"]
    assert len(tags.title) == MAX_TAG_LENGTH
    assert tags.album is None  # nothing printable left


@pytest.mark.parametrize("content", [b"", b"<html>404</html>", b"ID3\x04\x00\x00\x00\x00\x00\x10garbage"])
def test_non_audio_raises_a_clear_error(tmp_path, content):
    path = tmp_path / "fake.mp3"
    path.write_bytes(content)
    with pytest.raises(UnreadableAudioError, match="mutagen|not a recognised"):
        read_audio_file(path)


def test_text_helpers():
    assert clean_tag_text("  a\x00b\r\nc  ") == "a b c"
    assert clean_tag_text(None) is None
    assert parse_year("Released 2003-04") == 2003 and parse_year("n/a") is None and parse_year("12345") is None
