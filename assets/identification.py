"""Identification assets: `predictions` (every test song, as `reconet identify` answers it) and
`inbox_identification` (each recording dropped in the inbox, by the champion model)."""

import json
from collections.abc import Iterator

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from assets.resources import MlflowTracking, ReconetSettings
from assets.training import ALL_RELEASES, evaluation, skip_split_kind, split_kinds
from ml.training.splits import unfit_reason

inbox_recordings = dg.DynamicPartitionsDefinition(name="inbox_recordings")


def _table_md(rows: list[dict], columns: list[str], limit: int = 50) -> str:
    """A Markdown table of ``rows`` (the first ``limit``) for the UI."""
    cell = lambda v: ("" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"\n… and {len(rows) - limit} more")
    return "\n".join(lines)


@dg.asset(partitions_def=split_kinds, group_name="identification", io_manager_key="table_io_manager",
          kinds={"parquet"}, deps=[evaluation], ins={"splits": dg.AssetIn(), "segments": ALL_RELEASES},
          output_required=False)  # fmt: skip
def predictions(context: dg.AssetExecutionContext, settings: ReconetSettings, splits: pa.Table,
                segments: pa.Table) -> Iterator[dg.Output]:  # fmt: skip
    """Every test song of the split kind identified by its trained model, as `reconet identify`
    answers (the clips the pipeline cut; ranking by mean probability; "unknown singer" by the
    open-set rule): track, truth, top-K with probabilities, the answer's score, the unknown flag."""
    from ml.device import device_from_params, precision_from_params
    from ml.identification.identify import Identifier, top_k_of
    from ml.identification.predictions import predict_songs, summary
    from ml.training.model_run import load_trained, model_dir, split_rows_of

    kind = context.partition_key
    if reason := unfit_reason(splits, kind):
        return skip_split_kind(context, reason)
    params, paths = settings.params(), settings.paths()
    _, info = load_trained(paths, kind)
    test_rows = split_rows_of(splits, segments, kind, "test")
    test_rows = test_rows.filter(pc.is_in(test_rows.column("artist"), pa.array(info["classes"], pa.string())))
    device = device_from_params(params)
    identifier = Identifier.from_folder(model_dir(paths, info), info, device, precision_from_params(params, device))
    top_k = top_k_of(params)
    table = predict_songs(identifier, test_rows, paths.data, kind, top_k,
                          on_song=lambda n, total: n % 20 == 0 and context.log.info(f"{n}/{total} songs"))  # fmt: skip
    figures = summary(table, top_k)
    context.log.info(f"{kind} split: {json.dumps(figures)}")
    preview = sorted(table.to_pylist(), key=lambda r: (r["correct"], r["truth"]))  # wrong answers first
    for r in preview:
        r["top_k"] = ", ".join(f"{s} {p:.2f}" for s, p in zip(r["top_k"], r["top_k_probabilities"], strict=True))
        r["singer"] = r["singer"] or "unknown singer"
    yield dg.Output(table, metadata={
        **figures, "model": info["model"], "mlflow_run_id": info["run_id"],
        "songs_table": dg.MetadataValue.md(_table_md(preview, ["truth", "title", "singer", "score", "correct",
                                                                "top_k"])),
    })  # fmt: skip


@dg.asset(partitions_def=inbox_recordings, group_name="identification", kinds={"mlflow"})
def inbox_identification(context: dg.AssetExecutionContext, settings: ReconetSettings,
                         mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:  # fmt: skip
    """A recording dropped in the inbox (`identify.inbox`), identified by the registry's champion
    model; the result (as `reconet identify --json` prints it) is written beside it as
    `<file>.reconet.json`. A recording that cannot be identified (not audio, corrupt, no vocals)
    is materialised with its status and reason, not failed."""
    from ml.identification.bundle import load_bundle
    from ml.identification.identify import top_k_of
    from ml.identification.inbox import inbox_files, result_path
    from ml.tables import write_text
    from ml.training.tracking import CHAMPION

    params, paths = settings.params(), settings.paths()
    key = context.partition_key
    path = inbox_files(paths.inbox, params["library"]["audio_extensions"]).get(key)
    if path is None:
        raise FileNotFoundError(f"{key}: no longer in the inbox ({paths.inbox})")
    uri = f"models:/{mlflow_tracking.registered_model}@{CHAMPION}"
    bundle = load_bundle(uri, mlflow_tracking.uri(paths.root))
    result = bundle.identify(path, top_k_of(params), name=key, logger=context.log)
    written = write_text(json.dumps({**result, "model": uri}, indent=1), result_path(path))
    answer = {"ok": result["singer"] or "unknown singer", "no_vocals": "no vocals found"}.get(result["status"], "error")
    context.log.info(f"{key}: {answer}" + (f" ({result['error']})" if result["error"] else ""))
    timeline = [{"start–end": f"{c['start_s']:.1f}–{c['end_s']:.1f} s", "singer": c["singer"] or "unknown",
                 "confidence": c["confidence"]} for c in result["timeline"]]  # fmt: skip
    return dg.MaterializeResult(metadata={
        "status": result["status"], "singer": answer, "score": result["score"] or 0.0,
        "threshold": result["threshold"] or 0.0, "error": result["error"] or "", "model": uri,
        "top_k": dg.MetadataValue.md(_table_md(result["top_k"], ["singer", "probability"])),
        "timeline": dg.MetadataValue.md(_table_md(timeline, ["start–end", "singer", "confidence"], limit=100)),
        "result_file": dg.MetadataValue.path(str(written)), "seconds": round(result["seconds"], 1),
    })  # fmt: skip
