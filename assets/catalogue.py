"""Catalogue assets: read every release, clean the catalogue, gather every rejection."""

from collections import Counter

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from assets.partitions import releases
from assets.resources import SKIP_MISSING_PARTITIONS, ReconetSettings
from ml.catalogue.catalogue import find_releases, folder_state, scan_release
from ml.catalogue.cleaning import clean
from ml.catalogue.rejected import ALL, load_rejected, record_rejected
from ml.tables import REJECTED_SCHEMA

RELEASE_FINGERPRINT = "release_fingerprint"


def _markdown_table(table: pa.Table, columns: list[str], limit: int = 50) -> str:
    rows = table.select(columns).slice(0, limit).to_pylist()
    escape = lambda v: "" if v is None else str(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(escape(r[c]) for c in columns) + " |" for r in rows]
    if table.num_rows > limit:
        lines.append(f"\n… and {table.num_rows - limit} more rows")
    return "\n".join(lines)


@dg.asset(
    partitions_def=releases, group_name="catalogue", io_manager_key="table_io_manager", kinds={"python", "parquet"}
)
def tracks(context: dg.AssetExecutionContext, settings: ReconetSettings) -> pa.Table:
    """Every audio file of one release: tags, audio properties, content-derived `track_id`.
    Unreadable, corrupt or truncated files go to `rejected` (stage `tracks`)."""
    params, paths = settings.params(), settings.paths()
    release = context.partition_key
    folders = find_releases(paths.library, params["library"]["audio_extensions"])
    if release not in folders:
        raise dg.Failure(f"release {release!r} is no longer in the library {paths.library}; re-register releases")
    # taken before reading, so that a file changed meanwhile shows as a new state to the sensor
    state = folder_state(folders[release], params["library"]["audio_extensions"])
    result = scan_release(paths.library, release, folders[release], params, logger=context.log)
    record_rejected(paths.rejected, "tracks", release, result.rejected)
    formats = Counter(result.tracks.column("format").to_pylist())
    context.add_output_metadata(
        {
            "files_scanned": result.files_scanned,
            RELEASE_FINGERPRINT: state.fingerprint,  # what the new-release sensor compares with
            "tracks": result.tracks.num_rows,
            "rejected": result.rejected.num_rows,
            "formats": ", ".join(f"{k}: {v}" for k, v in sorted(formats.items())),
            "preview": dg.MetadataValue.md(
                _markdown_table(result.tracks, ["path", "artist", "title", "duration_s", "format"])
            ),
        }
    )
    return result.tracks


# A release run cleans the catalogue read so far: releases whose tracks are not read yet join it
# when their own run cleans it again.
@dg.asset(group_name="catalogue", io_manager_key="table_io_manager", kinds={"python", "parquet"},
          ins={"tracks": dg.AssetIn(metadata={SKIP_MISSING_PARTITIONS: True})})  # fmt: skip
def clean_tracks(context: dg.AssetExecutionContext, settings: ReconetSettings, tracks: pa.Table) -> pa.Table:
    """The tracks a model can learn one vocalist from: no interludes (≤ 30 s), no duets or
    compilations, no duplicates, a known artist. Each exclusion is a `rejected` row (stage
    `clean_tracks`). Instrumentals are caught later, from the separated vocals."""
    params, paths = settings.params(), settings.paths()
    result = clean(tracks, params)
    record_rejected(paths.rejected, "clean_tracks", ALL, result.rejected)
    for row in result.rejected.to_pylist():
        context.log.info(f"rejected {row['path']}: {row['reason']}: {row['detail']}")
    reasons = Counter(result.rejected.column("reason").to_pylist())
    if result.kept.num_rows + result.rejected.num_rows != tracks.num_rows:
        raise dg.Failure("cleaning lost tracks: kept + rejected differs from the tracks read")
    context.add_output_metadata(
        {
            "tracks_in": tracks.num_rows,
            "kept": result.kept.num_rows,
            "rejected": result.rejected.num_rows,
            "artists": len(set(result.kept.column("artist").to_pylist())),
            "rejected_by_reason": dg.MetadataValue.json(dict(sorted(reasons.items()))),
        }
    )
    return result.kept


@dg.asset(
    deps=[tracks, clean_tracks, dg.AssetKey("vocals"), dg.AssetKey("segments")],
    group_name="catalogue",
    io_manager_key="table_io_manager",
    kinds={"python", "parquet"},
)
def rejected(context: dg.AssetExecutionContext, settings: ReconetSettings) -> pa.Table:
    """Every input left out, by stage, with its reason: nothing is dropped silently."""
    paths = settings.paths()
    current = context.instance.get_dynamic_partitions(releases.name)
    ledger = load_rejected(paths.rejected)
    in_library = pc.or_(
        pc.is_in(ledger.column("release"), pa.array(current, pa.string())), pc.is_null(ledger.column("release"))
    )
    table = ledger.filter(in_library).cast(REJECTED_SCHEMA)
    by_stage_reason = Counter(zip(table.column("stage").to_pylist(), table.column("reason").to_pylist(), strict=True))
    context.add_output_metadata(
        {
            "rejected": table.num_rows,
            "by_stage_and_reason": dg.MetadataValue.json(
                {f"{s}/{r}": n for (s, r), n in sorted(by_stage_reason.items())}
            ),
            "table": dg.MetadataValue.md(_markdown_table(table, ["stage", "reason", "path", "detail"], limit=100)),
        }
    )
    return table
