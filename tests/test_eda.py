"""The catalogue EDA: plots and summary from tables, hostile labels, empty catalogues."""

from ml.catalogue.cleaning import over_genre
from ml.catalogue.eda import metadata_eda
from ml.config import load_params
from ml.tables import CLEAN_TRACKS_SCHEMA, REJECTED_SCHEMA, TRACKS_SCHEMA, table_from_rows

PARAMS = load_params()


def _row(path, artist, genre, year, duration, release="R"):
    return {
        "track_id": path, "content_sha256": "0" * 64, "release": release, "path": path, "file_size": 1,
        "format": "mp3", "duration_s": duration, "has_tags": True, "artist": artist, "artists": [artist],
        "genre": genre, "year": year, "title": path,
    }  # fmt: skip


def test_plots_summary_and_figures(tmp_path):
    rows = [
        _row("a1", "Zoë", "Pop", 2015, 200, "Zoë/A"), _row("a2", "Zoë", "Pop", 2015, 210, "Zoë/A"),
        _row("a3", "Zoë", "Synthpop", 2019, 190, "Zoë/B"), _row("b1", "../../etc", "Rap", 1999, 180, "x/y"),
        _row("c1", "$x^2$", "Funk", 1975, 240, "c/d"), _row("c2", "$x^2$", "Funk", 1975, 20, "c/d"),
    ]  # fmt: skip
    tracks = table_from_rows(rows, TRACKS_SCHEMA)
    kept_rows = [{**r, "over_genre": over_genre(r["genre"], PARAMS)} for r in rows if r["path"] != "c2"]
    kept = table_from_rows(kept_rows, CLEAN_TRACKS_SCHEMA)
    rejected = table_from_rows(
        [{"path": "c2", "release": "c/d", "stage": "clean_tracks", "reason": "too_short", "detail": "20 s"},
         {"path": "junk.mp3", "release": "c/d", "stage": "tracks", "reason": "not_audio", "detail": "html"}],
        REJECTED_SCHEMA,
    )  # fmt: skip
    out = tmp_path / "eda"
    report = metadata_eda(tracks, kept, rejected, PARAMS, out)
    assert set(report.plots) == {
        "songs_per_artist", "over_genres", "releases_per_decade", "year_by_over_genre",
        "duration_histogram", "class_imbalance", "rejections",
    }  # fmt: skip
    for path in report.plots.values():
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5_000
        assert path.parent == out
    assert report.figures["n_kept"] == 5 and report.figures["n_rejected"] == 2
    assert report.figures["n_artists_kept"] == 3 and report.figures["n_releases"] == 4
    assert report.figures["imbalance_ratio"] == 3.0  # Zoë 3 songs, the others 1
    md = report.summary_markdown
    for artist in ("Zoë", "../../etc", "$x^2$"):
        assert f"| {artist} |" in md
    assert "| Zoë | 3 | 3 | 0 |" in md and "| $x^2$ | 2 | 1 | 1 |" in md
    assert "clean_tracks / too_short | 1" in md
    assert (out / "summary.md").read_text() == md
    assert (out / "songs_per_artist.csv").read_text().startswith("artist,songs_read,kept")
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file() and p.parent != out) == []


def test_empty_catalogue_still_draws(tmp_path):
    empty = [s.empty_table() for s in (TRACKS_SCHEMA, CLEAN_TRACKS_SCHEMA, REJECTED_SCHEMA)]
    report = metadata_eda(*empty, PARAMS, tmp_path)
    assert len(report.plots) == 7 and all(p.exists() for p in report.plots.values())
    assert report.figures["n_kept"] == 0 and report.figures["imbalance_ratio"] == 0.0


def test_untagged_years_and_genres(tmp_path):
    rows = [_row("a", "A", None, None, 100), _row("b", "B", None, None, 120)]
    tracks = table_from_rows(rows, TRACKS_SCHEMA)
    kept = table_from_rows([{**r, "over_genre": "Other"} for r in rows], CLEAN_TRACKS_SCHEMA)
    report = metadata_eda(tracks, kept, REJECTED_SCHEMA.empty_table(), PARAMS, tmp_path)
    assert report.figures["n_kept"] == 2 and "Other: 100 %" in report.summary_markdown
