"""Precision parity (issue 16, point 3): each model trained and evaluated in float32 and in bfloat16
autocast, side by side in one run, on the same clips and splits, over several seeds.

    .venv/bin/python benchmarks/precision_parity.py --project /tmp/reconet-real-voices --level normal \
        [--models crnn speaker_net voice_embedding] [--seeds 0 1 2] [--epochs 10] [--kind song]

``--project`` is a work folder of ``benchmarks/real_voices.py`` (its ``library-<level>``,
``data-<level>`` and ``stems``, made by a ``reconet run`` there; float32 stems and features), or
any project whose ``--data`` folder holds the pipeline's tables up to ``splits`` (``--library``,
``--data``). For every model, seed and precision this script sets ``RECONET_PRECISION``, trains
with ``ml.training.model_run.train_and_log`` (not registered; a scratch MLflow store and reports
folder) and evaluates with ``evaluate_and_log`` on the split's test songs: the precision covers
the training steps (autocast, float32 master weights), the evaluation and, for an embedding model,
the frozen encoder's embeddings. The stems and log-mels are the project's own (float32) in both.

The seeds (``train.seed``: initial weights, batch order, augmentation) give the noise the
comparison is judged against: a precision is at parity when its mean is within the two
precisions' seed-to-seed spread. Writes ``benchmarks/results/precision_parity.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
METRICS = (("segment", "seg"), ("song_mean_probability", "song"))


def run_one(model: str, precision: str, seed: int, epochs: int | None, kind: str, library: Path, data: Path,
            scratch: Path) -> dict:  # fmt: skip
    import pyarrow as pa

    from ml import config
    from ml.tables import read_table
    from ml.training.model_run import evaluate_and_log, train_and_log

    os.environ["RECONET_PRECISION"] = precision
    os.environ["RECONET_DATA_DIR"] = str(data)
    os.environ["RECONET_REPORTS_DIR"] = str(scratch / f"reports-{model}-{precision}-{seed}")
    params = config.load_params()
    params["train"].update(model=model, seed=seed, split_kinds=[kind])
    if epochs:
        params["train"].update(epochs=epochs, warmup_epochs=min(params["train"].get("warmup_epochs", 0), epochs // 2))
    paths = config.paths(params, library)
    tables = data / "tables"
    releases = lambda asset: pa.concat_tables(read_table(p) for p in sorted((tables / asset).glob("*.parquet")))  # noqa: E731
    segments, features, splits = releases("segments"), releases("features"), read_table(tables / "splits.parquet")
    uri = f"sqlite:///{scratch / 'mlflow.db'}"
    started = time.perf_counter()
    out = train_and_log(params, paths, kind, splits, segments, features, uri, "precision-parity", register=False)
    train_s = time.perf_counter() - started
    report = evaluate_and_log(params, paths, kind, splits, segments, features, uri, trained=out)
    row = {"model": model, "precision": precision, "seed": seed, "kind": kind, "train_s": round(train_s, 1),
           "epochs_run": out.get("epochs_run"), "classes": len(out["classes"])}  # fmt: skip
    for name, short in METRICS:
        row[f"{short}_acc"] = report.metrics[name]["accuracy"]
        row[f"{short}_f1"] = report.metrics[name]["macro_f1"]
    print(json.dumps(row), flush=True)
    return row


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for precision in ("fp32", "bf16"):
            cell = [r for r in rows if r["model"] == model and r["precision"] == precision]
            if not cell:
                continue
            s = {"model": model, "precision": precision, "seeds": len(cell)}
            for key in ("seg_acc", "seg_f1", "song_acc", "song_f1", "train_s"):
                values = [r[key] for r in cell]
                s[key] = statistics.mean(values)
                s[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
            out.append(s)
    return out


def markdown(summary: list[dict], meta: dict) -> str:
    lines = [f"Precision parity on {meta['what']} ({meta['kind']} split; {meta['capability']}; "
             f"{meta['cpus']} cores): mean ± standard deviation over seeds {meta['seeds']}, each seed trained and "
             "evaluated once in each precision on the same clips and splits.", "",
             "| model | precision | seeds | seg acc | seg F1 | song acc | song F1 | train s |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for s in summary:
        cells = [f"{s[k]:.3f} ± {s[k + '_sd']:.3f}" for k in ("seg_acc", "seg_f1", "song_acc", "song_f1")]
        lines.append(f"| {s['model']} | {s['precision']} | {s['seeds']} | " + " | ".join(cells)
                     + f" | {s['train_s']:.0f} ± {s['train_s_sd']:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, help="a benchmarks/real_voices.py work folder")
    parser.add_argument("--level", default="normal", help="its level (library-<level>, data-<level>)")
    parser.add_argument("--library", type=Path, help="or: the library ...")
    parser.add_argument("--data", type=Path, help="... and the data folder a pipeline run made for it")
    parser.add_argument("--models", nargs="+", default=["crnn", "speaker_net", "voice_embedding"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="train.epochs for the networks (default: params.yaml's)")
    parser.add_argument("--kind", default="song", help="the split kind")
    parser.add_argument("--report", default="precision_parity", help="results file stem under benchmarks/results/")
    args = parser.parse_args()
    if args.project:
        library, data = args.project / f"library-{args.level}", args.project / f"data-{args.level}"
        os.environ["RECONET_STEMS_DIR"] = str(args.project / "stems")
        what = f"the real-voices benchmark's {args.level} level ({args.project})"
    elif args.library and args.data:
        library, data, what = args.library, args.data, str(args.library)
    else:
        parser.error("give --project, or --library and --data")
    if not (data / "tables" / "splits.parquet").exists():
        sys.exit(f"{data}: no splits table: run the pipeline on {library} first (reconet run)")
    import torch

    from ml.device import cpu_bf16_flags, cpu_capability

    if not cpu_bf16_flags():
        sys.exit(f"this CPU has no bfloat16 units ({cpu_capability()}): bfloat16 would be emulated; nothing to compare")
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="reconet-parity-") as tmp:
        for model in args.models:
            for seed in args.seeds:
                for precision in ("fp32", "bf16"):
                    rows.append(run_one(model, precision, seed, args.epochs, args.kind, library, data, Path(tmp)))
    meta = {"what": what, "kind": args.kind, "seeds": args.seeds, "epochs": args.epochs,
            "capability": cpu_capability(), "cpus": os.cpu_count(), "platform": platform.platform()}  # fmt: skip
    summary = summarise(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.report}.json").write_text(json.dumps({"meta": meta, "runs": rows, "summary": summary}, indent=1))
    text = markdown(summary, meta)
    (RESULTS / f"{args.report}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
