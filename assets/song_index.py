"""The `song_index` asset: every library song's excerpts as embeddings in an approximate-nearest-
neighbour index (ml/identification/song_id.py), one release partition at a time."""

import time

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from assets.partitions import releases
from assets.resources import ReconetSettings
from ml.catalogue.catalogue import library_file


@dg.asset(partitions_def=releases, group_name="identification", kinds={"hnswlib"})
def song_index(context: dg.AssetExecutionContext, settings: ReconetSettings,
               clean_tracks: pa.Table) -> dg.MaterializeResult:  # fmt: skip
    """The release's clean tracks (their mixes) as excerpt embeddings, written to
    `data/song_index/releases/<release>.npz`, then the merged hnswlib view updated in place: this
    release's entries added (its old ones marked deleted), a release no longer in the library
    deleted. What `reconet identify --song` and `POST /song` search."""
    from ml.identification.song_id import (
        SongIndexParams,
        index_folder,
        load_embedder,
        release_entries,
        release_file,
        sync_view,
    )

    params, paths = settings.params(), settings.paths()
    p = SongIndexParams.from_params(params)
    folder = index_folder(paths)
    release = context.partition_key
    started = time.perf_counter()
    tracks = clean_tracks.filter(pc.equal(clean_tracks.column("release"), release)).to_pylist()
    embedder = load_embedder(p, folder / "autoencoder.safetensors")
    songs = [{"track_id": t["track_id"], "artist": t["artist"], "title": t["title"], "album": t["album"],
              "path": t["path"], "genre": t["over_genre"], "duration_s": t["duration_s"]} for t in tracks]  # fmt: skip
    files = [library_file(paths.library, t) for t in tracks]
    entries, failed = release_entries(release, songs, files, embedder, p)
    for _, reason in failed:
        context.log.warning(f"left out of the song index: {reason}")
    entries.save(release_file(folder, release))
    embed_s = time.perf_counter() - started
    manifest = sync_view(folder, context.instance.get_dynamic_partitions(releases.name), p, embedder.identity,
                         context.log)  # fmt: skip
    hours = manifest["audio_hours"]
    return dg.MaterializeResult(metadata={
        "release_songs": len(entries.songs), "release_entries": len(entries.vectors),
        "index_entries": manifest["live"], "index_songs": len(manifest["songs"]),
        "index_releases": len(manifest["releases"]), "index_mib": round(manifest["index_bytes"] / 2**20, 3),
        "embedding_s": round(embed_s, 2), "index_update_s": manifest["build_s"],
        "build_s_per_audio_hour": round((embed_s + manifest["build_s"]) / max(sum(s["duration_s"] or 0 for s in songs)
                                                                               / 3600, 1e-9), 1),
        "index_audio_hours": hours, "threshold": manifest["threshold"] or 0.0, "embedding": p.embedding,
        "rebuilt": manifest["rebuilt"], "deleted_releases": dg.MetadataValue.json(manifest["deleted_releases"]),
        "duplicates": dg.MetadataValue.json([[manifest["songs"][i].get("path") for i in group]
                                             for group in manifest["duplicates"]]),  # one recording, several songs
        "left_out": len(failed), "index": dg.MetadataValue.path(str(folder / manifest["generation"])),
    })  # fmt: skip
