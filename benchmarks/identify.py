"""Identification benchmark: seconds per song for `reconet identify`, and the share of them that is
not separation, on a demo song of ``--minutes`` (default 4).

    .venv/bin/python benchmarks/identify.py [--model URI] [--minutes 4] [--rounds 3]

* cold: each round is a new `reconet identify --json` process (interpreter start, imports, the
  model loaded from the MLflow registry, decoding, separation, clips, classification) with an
  empty stem cache; its wall time, the separation's seconds inside it (decoding, the network and
  writing the stems: ``separation_s`` of the result), and the rest;
* warm: one process loads the model once, then identifies the song ``--rounds`` times, its stem
  cache emptied before each (what a service that keeps the model loaded pays per song).

Without ``--model``, a voice_embedding model is fitted on dry phrases of three demo vocalists
(seconds), logged as the pyfunc bundle and registered in a temporary MLflow store: what a song
costs depends on the model kind, not on what it was trained on. The device is the project's
(``compute.device``, ``RECONET_DEVICE``). Results go to ``benchmarks/results/identify.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WARM_CHILD = """
import json, shutil, sys, time
from pathlib import Path
from ml.identification.bundle import load_bundle
t0 = time.perf_counter()
bundle = load_bundle(sys.argv[1])
load_s = time.perf_counter() - t0
out = []
for _ in range(int(sys.argv[3])):
    shutil.rmtree(bundle.paths.vocals, ignore_errors=True)
    result = bundle.identify(Path(sys.argv[2]))
    out.append({k: result.get(k) for k in ("status", "singer", "seconds", "separation_s", "classification_s")})
print(json.dumps({"load_s": load_s, "device": str(bundle.identifier.device), "rounds": out}))
"""


def fit_demo_model(work: Path) -> str:
    """A voice_embedding model of three demo vocalists, registered in ``work``'s MLflow store."""
    import numpy as np
    import torch
    from scipy import signal

    from ml import config
    from ml.catalogue.demo_library import SR, VOCALISTS, WORDS, sing_phrase
    from ml.identification import open_set
    from ml.identification.backend import block_weights, fit_backend, save_backend, transform
    from ml.identification.bundle import log_bundle
    from ml.identification.identify import preprocessing
    from ml.training.embedding_run import embedder_for, save_references
    from ml.training.tracking import mlflow_run, register

    params = config.load_params()
    paths = config.paths(params)
    rng = np.random.default_rng(0)
    clips, labels = [], []
    for voice in VOCALISTS[:3]:
        for _ in range(4):
            phrase = sing_phrase(list(rng.choice(WORDS, 6)), [int(x) for x in rng.integers(-5, 7, 6)], voice, rng)
            audio = signal.resample_poly(phrase, 16000, SR)[: 3 * 16000]
            clips.append(np.pad(audio, (0, 3 * 16000 - len(audio))).astype(np.float32))
            labels.append(voice.name)
    info = {"model": "voice_embedding", "model_options": params["models"]["voice_embedding"],
            "classes": sorted(set(labels)), "kind": "song", "open_set": {"threshold": None},
            "preprocessing": preprocessing(params, paths), "dir": "benchmark"}  # fmt: skip
    embedder, settings = embedder_for(info, "cpu")
    x = embedder.embed(torch.from_numpy(np.stack(clips)))
    pipeline = fit_backend(settings, block_weights(embedder, settings), x, labels)
    run_dir = work / "model"
    run_dir.mkdir()
    save_backend(pipeline, run_dir / "backend.skops")
    save_references(open_set.references(open_set.Normaliser.unit_only()(transform(pipeline, x)), labels),
                    run_dir / "references.safetensors")  # fmt: skip
    uri = os.environ["MLFLOW_TRACKING_URI"]
    with mlflow_run(uri, "benchmark", "identify-benchmark") as run:
        logged = log_bundle(run_dir, info)
        version = register(uri, run.info.run_id, logged.model_uri)
    return f"models:/reconet-vocalist/{version}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a model URI or folder (default: a demo model fitted here)")
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "identify.json")
    args = parser.parse_args()

    from ml.catalogue.demo_library import make_song_file, plan_library

    work = Path(tempfile.mkdtemp(prefix="reconet-identify-bench-"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        spec = next(s for s in plan_library("default") if s.case == "song" and s.voices == [0] and s.fmt == "mp3")
        spec = replace(spec, duration_s=args.minutes * 60, path="song.mp3")
        song = work / make_song_file(spec, str(work)).path
        model = args.model or fit_demo_model(work)
        cold = []
        for r in range(args.rounds):
            env = {**os.environ, "RECONET_STEMS_DIR": str(work / f"stems-cold-{r}")}
            started = time.perf_counter()
            proc = subprocess.run([str(Path(sys.executable).with_name("reconet")), "identify", str(song), "--json",
                                   "--model", model], env=env, capture_output=True, text=True, check=False)  # fmt: skip
            wall = time.perf_counter() - started
            if proc.returncode != 0:
                sys.exit(f"reconet identify failed ({proc.returncode}): {proc.stderr[-2000:]}")
            [result] = json.loads(proc.stdout)
            separation = result["separation_s"]
            cold.append({"wall_s": wall, "separation_s": separation, "other_s": wall - separation,
                         "other_share": (wall - separation) / wall, "in_identify_s": result["seconds"],
                         "classification_s": result["classification_s"], "singer": result["singer"]})  # fmt: skip
            print(f"cold {r + 1}: {wall:.1f} s, separation {separation:.1f} s, other {wall - separation:.1f} s "
                  f"({cold[-1]['other_share']:.1%}), singer {result['singer']}")  # fmt: skip
        env = {**os.environ, "RECONET_STEMS_DIR": str(work / "stems-warm")}
        proc = subprocess.run([sys.executable, "-c", WARM_CHILD, model, str(song), str(args.rounds)], env=env,
                              capture_output=True, text=True, check=False, cwd=ROOT)  # fmt: skip
        if proc.returncode != 0:
            sys.exit(f"the warm run failed: {proc.stderr[-2000:]}")
        warm = json.loads(proc.stdout.strip().splitlines()[-1])
        for r, w in enumerate(warm["rounds"], 1):
            w["other_share"] = (w["seconds"] - w["separation_s"]) / w["seconds"]
            print(f"warm {r}: {w['seconds']:.1f} s, separation {w['separation_s']:.1f} s, other "
                  f"{w['seconds'] - w['separation_s']:.1f} s ({w['other_share']:.1%})")  # fmt: skip
        median = lambda rows, key: statistics.median(r[key] for r in rows)  # noqa: E731
        report = {"song_minutes": args.minutes, "device": warm["device"], "model": model if args.model else "demo",
                  "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                  "cold": {"rounds": cold, "median_wall_s": median(cold, "wall_s"),
                           "median_separation_s": median(cold, "separation_s"),
                           "median_other_share": median(cold, "other_share")},
                  "warm": {"load_s": warm["load_s"], "rounds": warm["rounds"],
                           "median_s": median(warm["rounds"], "seconds"),
                           "median_other_share": median(warm["rounds"], "other_share")}}  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
        print(f"cold: {report['cold']['median_wall_s']:.1f} s per song, {report['cold']['median_other_share']:.1%} "
              f"besides separation; warm: {report['warm']['median_s']:.1f} s, "
              f"{report['warm']['median_other_share']:.1%} besides separation ({warm['device']}) -> {args.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
