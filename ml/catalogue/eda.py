"""Exploratory analysis of the catalogue's metadata, as in the RecoNet report (section 3.1).

Songs per artist, over- and sub-genres, releases per decade, songs per year by over-genre, the
duration histogram, class imbalance and rejections: one PNG each, plus a markdown summary and a
CSV of songs per artist. Figures are drawn on matplotlib's object API (no pyplot state), so this
is safe in threads and headless.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ml.catalogue.cleaning import over_genre  # noqa: E402
from ml.tables import write_bytes, write_text  # noqa: E402

OVER_GENRE_COLOURS = {
    "Rock": "#c0392b",
    "Hip-hop": "#8e44ad",
    "DiscoSoul": "#d68910",
    "Pop": "#2e86c1",
    "Other": "#7f8c8d",
}


@dataclass
class EdaReport:
    plots: dict[str, Path]
    summary_markdown: str
    figures: dict[str, float | int]


def _label(text: Any) -> str:
    """A tag value as a plot label: never parsed as mathtext, bounded in length."""
    text = "(none)" if text is None or (isinstance(text, float) and np.isnan(text)) else str(text)
    return text.replace("$", r"\$")[:40]


def _save(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return write_bytes(buffer.getvalue(), path)


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no data: {what}", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _barh(ax, labels: list[str], values: list[float], colour: str = "#2e86c1") -> None:
    y = np.arange(len(labels))
    ax.barh(y, values, color=colour)
    ax.set_yticks(y, [_label(v) for v in labels])
    ax.invert_yaxis()


def metadata_eda(
    tracks: pa.Table, clean_tracks: pa.Table, rejected: pa.Table, params: dict[str, Any], out_dir: Path
) -> EdaReport:
    """Draw the catalogue's plots into ``out_dir`` and summarise it in markdown."""
    out_dir = Path(out_dir)
    all_tracks = tracks.to_pandas()
    kept = clean_tracks.to_pandas()
    rej = rejected.to_pandas()
    if len(all_tracks):
        all_tracks["over_genre"] = [over_genre(g, params) for g in all_tracks["genre"]]
    else:
        all_tracks = pd.DataFrame(columns=[*tracks.column_names, "over_genre"])
    min_duration = float(params.get("cleaning", {}).get("min_duration_s", 30.0))
    bin_s = float(params.get("eda", {}).get("duration_bins_s", 30))
    kept_paths = set(kept["path"]) if len(kept) else set()
    plots: dict[str, Path] = {}

    # songs per artist, kept vs rejected (before cleaning, as read)
    artists = all_tracks["artist"].fillna("(no artist)") if len(all_tracks) else pd.Series(dtype=str)
    per_artist = pd.DataFrame(
        {"artist": artists, "kept": all_tracks["path"].isin(kept_paths) if len(all_tracks) else []}
    )
    counts = per_artist.groupby("artist")["kept"].agg(kept="sum", total="count") if len(per_artist) else pd.DataFrame()
    fig = Figure(figsize=(8, 0.4 * max(len(counts), 4) + 1.2))
    ax = fig.subplots()
    if len(counts):
        counts = counts.sort_values("total", ascending=False)
        y = np.arange(len(counts))
        ax.barh(y, counts["kept"], color="#27ae60", label="kept")
        ax.barh(y, counts["total"] - counts["kept"], left=counts["kept"], color="#e67e22", label="rejected")
        ax.set_yticks(y, [_label(a) for a in counts.index])
        ax.invert_yaxis()
        ax.legend()
    else:
        _no_data(ax, "no tracks")
    ax.set_xlabel("songs")
    ax.set_title("Songs per artist (as read, before cleaning)")
    plots["songs_per_artist"] = _save(fig, out_dir / "songs_per_artist.png")

    # over-genre and sub-genre distributions
    fig = Figure(figsize=(11, 4))
    ax1, ax2 = fig.subplots(1, 2)
    if len(all_tracks):
        over = all_tracks["over_genre"].value_counts()
        ax1.bar(
            [_label(g) for g in over.index],
            over.values,
            color=[OVER_GENRE_COLOURS.get(g, "#7f8c8d") for g in over.index],
        )
        sub = all_tracks["genre"].fillna("(none)").value_counts().head(20)
        _barh(ax2, list(sub.index), list(sub.values))
    else:
        _no_data(ax1, "no genres")
        _no_data(ax2, "no genres")
    ax1.set_title("Over-genres")
    ax1.set_ylabel("songs")
    ax2.set_title("Sub-genres (genre tag)")
    plots["over_genres"] = _save(fig, out_dir / "over_genres.png")

    # releases per decade
    dated = all_tracks.dropna(subset=["year"]) if len(all_tracks) else all_tracks
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    if len(dated):
        release_year = dated.groupby("release")["year"].min()
        decades = (release_year // 10 * 10).astype(int).value_counts().sort_index()
        ax.bar([f"{d}s" for d in decades.index], decades.values, color="#2e86c1")
    else:
        _no_data(ax, "no year tags")
    ax.set_ylabel("releases")
    ax.set_title("Releases per decade")
    plots["releases_per_decade"] = _save(fig, out_dir / "releases_per_decade.png")

    # songs per year, stacked by over-genre
    fig = Figure(figsize=(10, 4))
    ax = fig.subplots()
    if len(dated):
        table = dated.assign(year=dated["year"].astype(int)).pivot_table(
            index="year", columns="over_genre", values="path", aggfunc="count", fill_value=0
        )
        bottom = np.zeros(len(table))
        for genre in table.columns:
            ax.bar(table.index, table[genre], bottom=bottom, label=genre, color=OVER_GENRE_COLOURS.get(genre))
            bottom += table[genre].to_numpy()
        ax.legend()
    else:
        _no_data(ax, "no year tags")
    ax.set_xlabel("year")
    ax.set_ylabel("songs")
    ax.set_title("Songs per year by over-genre")
    plots["year_by_over_genre"] = _save(fig, out_dir / "year_by_over_genre.png")

    # duration histogram
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    durations = all_tracks["duration_s"].astype(float) if len(all_tracks) else pd.Series(dtype=float)
    if len(durations):
        edges = np.arange(0, durations.max() + bin_s, bin_s)
        ax.hist(durations, bins=edges if len(edges) > 1 else 1, color="#2e86c1")
        ax.axvline(min_duration, color="#c0392b", linestyle="--", label=f"min {min_duration:g} s")
        ax.legend()
    else:
        _no_data(ax, "no tracks")
    ax.set_xlabel("duration (s)")
    ax.set_ylabel("songs")
    ax.set_title("Duration of songs")
    plots["duration_histogram"] = _save(fig, out_dir / "duration_histogram.png")

    # class imbalance after cleaning: songs and minutes per artist
    fig = Figure(figsize=(11, 0.4 * max(kept["artist"].nunique() if len(kept) else 0, 4) + 1.2))
    ax1, ax2 = fig.subplots(1, 2)
    if len(kept):
        songs = kept["artist"].value_counts()
        minutes = kept.groupby("artist")["duration_s"].sum().reindex(songs.index) / 60
        _barh(ax1, list(songs.index), list(songs.values), "#27ae60")
        ax1.axvline(songs.mean(), color="black", linestyle=":", label=f"mean {songs.mean():.1f}")
        ax1.legend()
        _barh(ax2, list(minutes.index), list(minutes.values), "#16a085")
    else:
        _no_data(ax1, "nothing kept")
        _no_data(ax2, "nothing kept")
    ax1.set_title("Kept songs per artist (classes)")
    ax2.set_title("Kept minutes per artist")
    plots["class_imbalance"] = _save(fig, out_dir / "class_imbalance.png")

    # rejections
    fig = Figure(figsize=(8, 0.4 * max(len(rej), 4) / 2 + 1.5))
    ax = fig.subplots()
    reasons = Counter(f"{s} / {r}" for s, r in zip(rej.get("stage", []), rej.get("reason", []), strict=False))
    if reasons:
        items = reasons.most_common()
        _barh(ax, [k for k, _ in items], [v for _, v in items], "#e67e22")
    else:
        _no_data(ax, "nothing rejected")
    ax.set_xlabel("files")
    ax.set_title("Rejected files by stage and reason")
    plots["rejections"] = _save(fig, out_dir / "rejections.png")

    # headline figures, CSV and markdown
    kept_songs = kept["artist"].value_counts() if len(kept) else pd.Series(dtype=int)
    figures: dict[str, float | int] = {
        "n_files_tracks": int(len(all_tracks)),
        "n_kept": int(len(kept)),
        "n_rejected": int(len(rej)),
        "n_artists_kept": int(kept_songs.size),
        "n_releases": int(all_tracks["release"].nunique()) if len(all_tracks) else 0,
        "total_hours_kept": round(float(kept["duration_s"].sum()) / 3600, 3) if len(kept) else 0.0,
        "imbalance_ratio": round(float(kept_songs.max() / kept_songs.min()), 3) if len(kept_songs) else 0.0,
        "median_duration_s": round(float(durations.median()), 1) if len(durations) else 0.0,
    }
    table = _artist_table(all_tracks, kept)
    table.to_csv(buffer := io.StringIO(), index=False)
    write_text(buffer.getvalue(), out_dir / "songs_per_artist.csv")
    summary = _summary(figures, table, reasons, all_tracks, plots)
    write_text(summary, out_dir / "summary.md")
    return EdaReport(plots=plots, summary_markdown=summary, figures=figures)


def _artist_table(all_tracks: pd.DataFrame, kept: pd.DataFrame) -> pd.DataFrame:
    columns = ["artist", "songs_read", "kept", "rejected", "kept_minutes", "over_genre"]
    if not len(all_tracks):
        return pd.DataFrame(columns=columns)
    read = all_tracks.assign(artist=all_tracks["artist"].fillna("(no artist)")).groupby("artist")
    table = pd.DataFrame({"songs_read": read.size()})
    if len(kept):
        by_artist = kept.groupby("artist")
        table["kept"] = by_artist.size()
        table["kept_minutes"] = (by_artist["duration_s"].sum() / 60).round(1)
        table["over_genre"] = by_artist["over_genre"].agg(lambda g: g.mode().iloc[0])
    table = table.reindex(columns=columns[1:]).fillna({"kept": 0, "kept_minutes": 0.0, "over_genre": ""})
    table["kept"] = table["kept"].astype(int)
    table["rejected"] = table["songs_read"] - table["kept"]
    return table.reset_index().sort_values(["kept", "artist"], ascending=[False, True])[columns]


def _summary(figures: dict, table: pd.DataFrame, reasons: Counter, all_tracks: pd.DataFrame, plots: dict) -> str:
    cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    lines = [
        "# Catalogue summary",
        "",
        f"- files read: **{figures['n_files_tracks']}** in {figures['n_releases']} releases",
        f"- kept: **{figures['n_kept']}** songs by {figures['n_artists_kept']} artists, "
        f"{figures['total_hours_kept']:.2f} h",
        f"- rejected (all stages): **{figures['n_rejected']}**",
        f"- class imbalance (most / fewest kept songs per artist): {figures['imbalance_ratio']:.2f}",
        f"- median duration: {figures['median_duration_s']:.0f} s",
        "",
        "## Songs per artist",
        "",
        "| artist | read | kept | rejected | kept minutes | over-genre |",
        "|---|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {cell(r.artist)} | {r.songs_read} | {r.kept} | {r.rejected} | {r.kept_minutes:.1f} | {cell(r.over_genre)} |"
        for r in table.itertuples()
    ]
    lines += ["", "## Rejections", "", "| stage / reason | files |", "|---|---:|"]
    lines += [f"| {cell(k)} | {v} |" for k, v in reasons.most_common()] or ["| (none) | 0 |"]
    if len(all_tracks):
        shares = all_tracks["over_genre"].value_counts(normalize=True)
        lines += ["", "## Over-genres (files read)", ""]
        lines += [f"- {g}: {100 * s:.0f} %" for g, s in shares.items()]
    lines += ["", "## Plots", ""] + [f"- `{p.name}`" for p in plots.values()]
    return "\n".join(lines) + "\n"
