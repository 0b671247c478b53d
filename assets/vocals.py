"""The `vocals` asset: Spleeter 2-stems vocal isolation for every clean track of one release."""

from collections import Counter
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from assets.partitions import releases
from assets.resources import ReconetSettings
from ml.catalogue.catalogue import library_file
from ml.catalogue.rejected import record_rejected
from ml.device import device_from_params
from ml.separation.separation import (
    Failure,
    SeparationInput,
    SeparationParams,
    assess,
    checkpoint_sha256,
    separate_with_torch,
    stem_cache,
)
from ml.separation.stems import StemCache

# Runs in .venv-spleeter, so it is started as a script, not imported.
WORKER = Path(__file__).resolve().parents[1] / "pipeline" / "spleeter_worker.py"


class VocalsConfig(dg.Config):
    """Launchpad settings; empty values use params.yaml's `separation` section."""

    backend: str = Field(default="", description="torch (default) or spleeter (the official reference)")


def _separate_with_official_spleeter(
    context: dg.AssetExecutionContext, settings: ReconetSettings, todo: list[SeparationInput], cache: StemCache
) -> list[Failure]:
    """Run the official Spleeter in its own environment through Dagster Pipes; returns failures."""
    paths = settings.paths()
    if not paths.spleeter_python.exists():
        raise dg.Failure(f"the official Spleeter environment is missing ({paths.spleeter_python}): run `make setup`")
    extras = {
        "model_dir": str(paths.spleeter_checkpoint),
        "cache_root": str(paths.vocals),
        "model_sha256": cache.model_sha256,
        "tracks": [{"track_id": t.track_id, "path": str(t.path)} for t in todo],
    }
    invocation = dg.PipesSubprocessClient().run(
        command=[str(paths.spleeter_python), str(WORKER)],
        context=context,
        extras=extras,
    )
    return [
        Failure(m["track_id"], m["reason"], m["detail"])
        for m in invocation.get_custom_messages()
        if isinstance(m, dict) and m.get("status") == "failed"
    ]


@dg.asset(
    partitions_def=releases,
    group_name="separation",
    io_manager_key="table_io_manager",
    kinds={"pytorch", "parquet"},
    pool="gpu",  # one heavy step at a time (pipeline/instance.py)
)
def vocals(
    context: dg.AssetExecutionContext, config: VocalsConfig, settings: ReconetSettings, clean_tracks: pa.Table
) -> dg.Output[pa.Table]:
    """The isolated vocals (and accompaniment) of every clean track of one release, cached by
    (audio, model, backend, precision) under `data/vocals/`. Tracks whose vocals stay quiet (instrumentals),
    silent or undecodable tracks go to `rejected` (stage `vocals`)."""
    params, paths = settings.params(), settings.paths()
    separation = SeparationParams.from_params(params, backend=config.backend or None)
    release = context.partition_key
    tracks = clean_tracks.filter(pc.equal(clean_tracks.column("release"), release))
    device = device_from_params(params)
    cache = stem_cache(paths.vocals, separation, checkpoint_sha256(paths.spleeter_checkpoint), device)
    if removed := cache.clean_partial():
        context.log.info(f"removed {removed} partial stem folder(s) left by an interrupted run")
    todo = [
        SeparationInput(r["track_id"], library_file(paths.library, r))
        for r in tracks.to_pylist()
        if cache.get(r["track_id"]) is None
    ]
    cached = tracks.num_rows - len(todo)
    context.log.info(f"{release}: {tracks.num_rows} clean tracks, {cached} already separated, {len(todo)} to do "
                     f"with the {separation.backend} backend")  # fmt: skip
    if separation.backend == "torch":
        failures = separate_with_torch(todo, cache, paths.spleeter_weights, device, separation, logger=context.log)
    else:
        failures = _separate_with_official_spleeter(context, settings, todo, cache) if todo else []
    result = assess(tracks, cache, failures, separation, paths.vocals)
    record_rejected(paths.rejected, "vocals", release, result.rejected)
    for row in result.rejected.to_pylist():
        context.log.warning(f"rejected {row['path']}: {row['reason']}: {row['detail']}")
    if result.vocals.num_rows + result.rejected.num_rows != tracks.num_rows:
        raise dg.Failure("separation lost tracks: kept + rejected differs from the clean tracks of the release")
    # an Output, not a bare table: after a Pipes session Dagster expects wrapped results
    return dg.Output(
        result.vocals,
        metadata={
            "backend": separation.backend,
            "model_sha256": cache.model_sha256,
            "stems_identity": cache.identity,
            "clean_tracks": tracks.num_rows,
            "separated_now": len(todo) - len(failures),
            "from_cache": cached,
            "with_vocals": result.vocals.num_rows,
            "rejected": dg.MetadataValue.json(dict(Counter(result.rejected.column("reason").to_pylist()))),
            "audio_minutes": round(sum(result.vocals.column("duration_s").to_pylist()) / 60, 1),
            "stems": dg.MetadataValue.path(str(cache.directory)),
        },
    )
