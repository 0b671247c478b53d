"""The `reconet` command: make the demo library, register releases, run the pipeline, open the UI."""

import argparse
import os
import shlex
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ml import config
from ml.catalogue.demo_library import SIZES

console = Console(stderr=True)



# Runs print warnings (rejected files) to the terminal; the full log is in the UI.
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


def make_demo_library(directory: Path, size: str, seed: int = 0) -> dict:
    started = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task(f"demo library ({size})", total=None)

        def on_progress(done: int, total: int, path: str) -> None:
            progress.update(task, completed=done, total=total, description=f"demo library: {path[:48]}")

        from ml.catalogue.demo_library import generate_demo_library

        manifest = generate_demo_library(directory, size=size, seed=seed, on_progress=on_progress)
    n_files = len(manifest["files"])
    console.print(f"demo library ({size}): {n_files} files in {directory} ({time.perf_counter() - started:.1f} s)")
    return manifest


def prepare_dagster_home(paths: config.Paths) -> Path:
    """Point DAGSTER_HOME at the project's instance folder, creating it on first use."""
    home = paths.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        from pipeline.instance import DAGSTER_YAML

        (home / "dagster.yaml").write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def _ensure_library(paths: config.Paths, params: dict) -> None:
    if paths.library.is_dir():
        return
    if not paths.library_is_default_demo:
        raise SystemExit(f"music library not found: {paths.library} (set RECONET_LIBRARY or library.path)")
    make_demo_library(paths.library, params.get("library", {}).get("demo_size", "default"))


@dataclass(frozen=True)
class Phase:
    """One step of a materialisation: a job of the definitions, what it runs over (``releases``: once
    per release partition; ``split_kinds``: once per kind in params.yaml's train.split_kinds; None:
    once), and the assets of the job it selects (empty: all of them)."""

    job: str
    over: str | None = None
    assets: tuple[str, ...] = ()


# The DVC stages (dvc.yaml): what `reconet materialize STAGE` runs, in this order.
STAGES: dict[str, tuple[Phase, ...]] = {
    "catalogue": (Phase("release_job", "releases"), Phase("catalogue_job")),
    "vocals": (Phase("vocals_job", "releases"),),
    "segments": (Phase("segments_job", "releases", ("segments",)),),
    "features": (Phase("segments_job", "releases", ("features",)),),
    "song_index": (Phase("song_index_job", "releases"),),
    "report": (Phase("report_job"),),
    "splits": (Phase("splits_job"),),
    "model": (Phase("training_job", "split_kinds", ("model",)),),
    "evaluation": (Phase("training_job", "split_kinds", ("evaluation",)),),
    "predictions": (Phase("training_job", "split_kinds", ("predictions",)),),
}


def _main_phases() -> tuple[Phase, ...]:
    """`reconet run`: the main job's phases, then training and evaluation per split kind."""
    from pipeline.jobs import MAIN_JOB_PHASES

    phases = [Phase(name, "releases" if per_release else None) for name, per_release in MAIN_JOB_PHASES]
    return (*phases, Phase("training_job", "split_kinds"))


def _failure(result) -> str:
    """The first step failure's message of a run, on one line."""
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        if error is not None:
            cause = error.cause or error
            message = (cause.message or error.message).strip().splitlines()
            return f"{event.step_key}: {message[-1] if message else cause.cls_name}"
    return "the run failed"


def run_phases(instance, phases: tuple[Phase, ...], releases: list[str],
               split_kinds: list[str]) -> dict[str, str] | None:  # fmt: skip
    """Run ``phases`` in order on ``instance``, each once per target. A release whose run fails is
    reported and left out of the later per-release phases (its failure is listed in `rejected`), and
    the other releases go on; returns the failed releases (release -> what failed), or None after a
    failed catalogue-wide run."""
    import dagster as dg

    from pipeline.definitions import defs
    from pipeline.instance import cli_run_tags

    failed: dict[str, str] = {}
    with _progress() as progress:
        for phase in phases:
            job = defs.resolve_job_def(phase.job)
            targets = {"releases": [k for k in releases if k not in failed], "split_kinds": split_kinds}
            targets = targets.get(phase.over, [None])
            selection = [dg.AssetKey(name) for name in phase.assets] or None
            label = phase.job + (f" [{', '.join(phase.assets)}]" if phase.assets else "")
            task = progress.add_task(escape(label), total=len(targets))
            for key in targets:
                progress.update(task, description=escape(f"{label} {key or ''}"[:60]))
                result = job.execute_in_process(
                    instance=instance, partition_key=key, asset_selection=selection, raise_on_error=False,
                    run_config=QUIET_CONSOLE, tags=cli_run_tags(),
                )  # fmt: skip
                if not result.success:
                    message = f"{label} failed{' for ' + key if key else ''}: {_failure(result)}"
                    console.print(f"[red]{escape(message)}\n(run {result.run_id}: its full log is in the UI)[/red]")
                    if phase.over != "releases":
                        return None
                    failed[key] = message
                progress.advance(task)
    return failed


def _materialize(phases: tuple[Phase, ...], library: str | None = None) -> tuple[config.Paths, float, dict] | None:
    """Run ``phases`` in order on the persistent instance (the UI shows the runs), each once per
    target; None after a failed catalogue-wide run (it is reported), else the paths, the seconds taken
    and the releases that failed."""
    import dagster as dg

    from assets.partitions import sync_release_partitions
    from ml.training.training import TrainParams
    from pipeline.instance import release_orphaned_runs

    params = config.load_params()
    split_kinds = list(TrainParams.from_params(params).split_kinds)
    paths = config.paths(params, library=library)
    _ensure_library(paths, params)
    os.environ["RECONET_LIBRARY"] = str(paths.library)  # the runs' resources read the same library
    prepare_dagster_home(paths)
    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        added, removed = sync_release_partitions(instance, paths, params)
        for run_id in release_orphaned_runs(instance):
            console.print(f"[yellow]run {run_id} had been killed: marked failed, its pool slot freed[/yellow]")
        keys = instance.get_dynamic_partitions("releases")
        console.print(f"library {paths.library}: {len(keys)} releases ({len(added)} new, {len(removed)} removed)")
        failed = run_phases(instance, phases, keys, split_kinds)
    if failed is None:
        return None
    return paths, time.perf_counter() - started, failed


def _report_failed(failed: dict[str, str]) -> int:
    """The exit status after the phases ran: 1 when a release failed (the others went through)."""
    if failed:
        console.print(f"[red]{len(failed)} release(s) failed and were left out (the others went through; "
                      f"each is listed in rejected): {escape(', '.join(sorted(failed)))}[/red]")  # fmt: skip
    return 1 if failed else 0


def run_pipeline(library: str | None = None) -> int:
    """The main job, on the persistent instance (the UI shows the runs): read the releases, clean the
    catalogue, separate, segment, split, then train and evaluate one model per split kind."""
    done = _materialize(_main_phases(), library)
    if done is None:
        return 1
    paths, seconds, failed = done
    _print_summary(paths, seconds)
    return _report_failed(failed)


def materialize(stage: str, library: str | None = None) -> int:
    """One DVC stage (dvc.yaml): its assets for every release partition (or every split kind)."""
    done = _materialize(STAGES[stage], library)
    if done is None:
        console.print(f"[red]reconet materialize {stage}: failed[/red]")
        return 1
    console.print(f"materialised {stage} in {done[1]:.1f} s")
    return _report_failed(done[2])


def mlflow_ui(uri: str) -> str:
    """How to see the MLflow store at ``uri``: a tracking server is its own UI; a local store (SQLite,
    a database, a folder) opens with `mlflow ui`."""
    if uri.startswith(("http://", "https://")):
        return f"{uri}  (the tracking server's UI)"
    return f".venv/bin/mlflow ui --backend-store-uri {shlex.quote(uri)} -h 127.0.0.1  (then http://127.0.0.1:5000)"


def _print_summary(paths: config.Paths, seconds: float) -> None:
    import pyarrow.compute as pc

    from ml.catalogue.rejected import RELEASE_FAILED
    from ml.tables import read_table
    from ml.training.tracking import tracking_uri

    kept = read_table(paths.tables / "clean_tracks.parquet")
    rejected = read_table(paths.tables / "rejected.parquet")
    rows = lambda asset: sum(read_table(p).num_rows for p in (paths.tables / asset).glob("*.parquet"))  # noqa: E731
    failed = rejected.filter(pc.equal(rejected.column("reason"), RELEASE_FAILED))
    files = rejected.filter(pc.not_equal(rejected.column("reason"), RELEASE_FAILED))  # a release is no file
    unreadable = files.filter(pc.equal(files.column("stage"), "tracks")).num_rows
    table = Table(title=f"reconet pipeline ({seconds:.1f} s)")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("files scanned", str(rows("tracks") + unreadable))
    table.add_row("clean tracks", str(kept.num_rows))
    table.add_row("tracks with vocals", str(rows("vocals")))
    table.add_row("segments (clips)", str(rows("segments")))
    table.add_row("log-mel features", str(rows("features")))
    metrics_file = paths.reports / "metrics.json"
    table.add_row("artists", str(len(set(kept.column("artist").to_pylist()))))
    reasons = Counter(zip(rejected.column("stage").to_pylist(), rejected.column("reason").to_pylist(), strict=True))
    for (stage, reason), n in sorted(reasons.items()):
        table.add_row(f"rejected: {stage} / {reason}", str(n))
    Console().print(table)
    if failed.num_rows:
        releases = Table(title="failed releases (left out; they are in rejected)")
        for column in ("release", "step", "what failed"):
            releases.add_column(column)
        for row in failed.to_pylist():
            releases.add_row(escape(row["release"]), row["stage"], escape(row["detail"]))
        Console().print(releases)
    if metrics_file.exists():
        import json

        scores = Table(title="test set: accuracy / macro-F1")
        for column in ("split", "model", "segments acc", "segments F1", "songs acc", "songs F1"):
            scores.add_column(column, justify="left" if column in ("split", "model") else "right")
        for kind, m in sorted(json.loads(metrics_file.read_text()).items()):
            scores.add_row(kind, m["model"], *(f"{m[f'test_{level}_{name}']:.3f}" for level in
                           ("segment", "song_mean_probability") for name in ("accuracy", "macro_f1")))  # fmt: skip
        Console().print(scores)
    console.print(f"tables:  {paths.tables}\nstems:   {paths.vocals}\nreports: {paths.eda_reports.parent}")
    console.print(f"MLflow:  {mlflow_ui(tracking_uri(paths.root))}")
    console.print(f"UI:      DAGSTER_HOME={paths.dagster_home} .venv/bin/dagster dev -w workspace.yaml  (or: make ui)")


def register(library: str | None = None) -> int:
    import dagster as dg

    from assets.partitions import sync_release_partitions

    params = config.load_params()
    paths = config.paths(params, library=library)
    prepare_dagster_home(paths)
    with dg.DagsterInstance.get() as instance:
        added, removed = sync_release_partitions(instance, paths, params)
    console.print(f"releases: {len(added)} added, {len(removed)} removed")
    return 0


def ui(port: int) -> int:
    paths = config.paths()
    prepare_dagster_home(paths)
    cmd = [str(Path(sys.executable).with_name("dagster")), "dev", "-w", str(paths.root / "workspace.yaml"),
           "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    os.chdir(paths.root)
    os.execv(cmd[0], cmd)


def enrol(artist: str, files: list[Path], kind: str | None) -> int:
    """Add a singer to the trained model from 1–3 recordings (ml/identification/enrolment.py)."""
    import logging

    from ml.identification.enrolment import enrol as enrol_singer
    from ml.training.tracking import tracking_uri
    from ml.training.training import TrainParams

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    params, paths = config.load_params(), config.paths()
    kind = kind or TrainParams.from_params(params).split_kind
    try:
        info = enrol_singer(params, paths, kind, artist, files, tracking_uri(paths.root), "reconet",
                            "reconet-vocalist")  # fmt: skip
    except ValueError as exc:
        console.print(f"[red]reconet enrol: {escape(str(exc))}[/red]")
        return 1
    entry = info["enrolled"][-1]
    console.print(f"enrolled {escape(entry['artist'])} from {len(files)} recording(s), {entry['clips']} clips, "
                  f"into the {kind} model (registered version {info.get('version')})")  # fmt: skip
    return 0


def identify(files: list[Path], model: str | None, top_k: int | None, as_json: bool) -> int:
    """Who sings each file (ml/identification/identify.py): 0 all answered, 1 a file could not be
    identified (its error is shown, the others still run), 2 no model (raised to main)."""
    import json
    import logging

    from ml.identification.bundle import load_bundle
    from ml.identification.identify import result_text, top_k_of

    quiet = logging.getLogger("reconet.identify")  # a file's failure is in its result, not logged twice
    quiet.setLevel(logging.ERROR)
    bundle = _with_model(model, load_bundle)
    top_k = top_k or top_k_of(config.load_params())
    results = []
    with _progress() as progress:
        for path in files:
            task = progress.add_task(escape(f"{path.name[:40]}: separating"), total=None)

            def on_progress(stage: str, done: float, total: float | None, task=task, path=path) -> None:
                progress.update(task, description=escape(f"{path.name[:40]}: {stage}"), completed=done, total=total)

            results.append(bundle.identify(path, top_k, str(path), on_progress, quiet))
            progress.remove_task(task)
            if not as_json:
                print(result_text(results[-1]), flush=True)
    if as_json:
        print(json.dumps(results, indent=1))
    return 1 if any(r["status"] == "error" for r in results) else 0


def identify_songs(files: list[Path], as_json: bool) -> int:
    """Which library song each excerpt comes from (ml/identification/song_id.py): 0 all answered
    ("not in the library" is an answer), 1 a file could not be read, 2 no song index (raised to main)."""
    import json

    from ml.identification.song_id import SongIndex, identify_song, index_folder, song_result_text

    folder = index_folder(config.paths())
    index = SongIndex(folder, autoencoder=folder / "autoencoder.safetensors")
    results = []
    for path in files:
        results.append(identify_song(index, path, str(path)))
        if not as_json:
            print(song_result_text(results[-1]), flush=True)
    if as_json:
        print(json.dumps(results, indent=1))
    return 1 if any(r["status"] == "error" for r in results) else 0


def serve(model: str | None, host: str | None, port: int | None) -> int:
    """The identification service (ml/identification/service.py) until interrupted."""
    from ml.identification.service import serve as serve_model

    _with_model(model, lambda uri, tracking: serve_model(uri, tracking, config.load_params(), host, port))
    return 0


def _with_model(model: str | None, use):
    """``use(model URI, tracking URI)``, the URI defaulting to the registry's champion; a model that
    is missing or not an audio bundle raises FileNotFoundError (exit code 2)."""
    from ml.training.tracking import CHAMPION, REGISTERED_MODEL, tracking_uri

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        return use(model or f"models:/{REGISTERED_MODEL}@{CHAMPION}", tracking_uri(config.project_root()))
    except ValueError as exc:
        raise FileNotFoundError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reconet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo-library", help="write the demo discography to DIR")
    demo.add_argument("directory", type=Path)
    demo.add_argument("--size", choices=sorted(SIZES), default="default")
    demo.add_argument("--seed", type=int, default=0)
    for name, text in (("run", "run the pipeline on the library"), ("register-releases", "sync release partitions")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--library", help="music library folder (default: RECONET_LIBRARY or params.yaml)")
    stage = sub.add_parser("materialize", help="materialise one pipeline stage (a dvc.yaml stage) for every partition")
    stage.add_argument("stage", choices=list(STAGES))
    stage.add_argument("--library", help="music library folder (default: RECONET_LIBRARY or params.yaml)")
    enrol_parser = sub.add_parser("enrol", help="add a singer to the trained model from 1-3 recordings (no retraining)")
    enrol_parser.add_argument("--artist", required=True, help="the singer's name")
    enrol_parser.add_argument("--kind", help="the split kind's model (default: train.split_kind)")
    enrol_parser.add_argument("files", nargs="+", type=Path, help="1 to 3 recordings of the singer")
    identify_parser = sub.add_parser("identify", help="who sings each recording: top-K singers and a timeline")
    identify_parser.add_argument("files", nargs="+", type=Path, help="recordings (any format the catalogue reads)")
    identify_parser.add_argument("--model", help="a model URI (models:/..., runs:/...) or folder (default: the "
                                 "registry's reconet-vocalist@champion)")  # fmt: skip
    identify_parser.add_argument("--top-k", type=int, default=None, help="singers to list (default: identify.top_k, 5)")
    identify_parser.add_argument("--json", action="store_true", help="print the results as JSON")
    identify_parser.add_argument("--song", action="store_true", help="which library song each excerpt comes from, "
                                 "at which offset, and its genre (the song index) instead of who sings")  # fmt: skip
    serve_parser = sub.add_parser("serve", help="identification over HTTP with a web page (127.0.0.1 by default)")
    serve_parser.add_argument("--model", help="a model URI or folder (default: reconet-vocalist@champion)")
    serve_parser.add_argument("--host", help="address to listen on (default: serve.host, 127.0.0.1)")
    serve_parser.add_argument("--port", type=int, help="port (default: serve.port, 8000)")
    ui_parser = sub.add_parser("ui", help="open the Dagster UI on 127.0.0.1")
    ui_parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args(argv)
    try:
        if args.command == "demo-library":
            make_demo_library(args.directory, args.size, args.seed)
            return 0
        if args.command == "run":
            return run_pipeline(args.library)
        if args.command == "materialize":
            return materialize(args.stage, args.library)
        if args.command == "register-releases":
            return register(args.library)
        if args.command == "enrol":
            return enrol(args.artist, args.files, args.kind)
        if args.command == "identify":
            if args.top_k is not None and args.top_k < 1:
                parser.error("--top-k must be at least 1")
            if args.song:
                return identify_songs(args.files, args.json)
            return identify(args.files, args.model, args.top_k, args.json)
        if args.command == "serve":
            return serve(args.model, args.host, args.port)
        return ui(args.port)
    except (FileNotFoundError, FileExistsError, RuntimeError) as exc:
        console.print(f"[red]reconet: {exc}[/red]")
        return 2


if __name__ == "__main__":
    sys.exit(main())
