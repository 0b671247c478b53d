"""The `spleeter` separation backend: Deezer's official Spleeter, run in its own environment.

Started by the `vocals` asset through Dagster Pipes (``.venv-spleeter/bin/python
pipeline/spleeter_worker.py``); the asset passes, as Pipes extras, the model folder, the stem
cache and the tracks to separate. The official graph (spleeter's ``EstimatorSpecBuilder`` with
the 2-stems configuration) is built and its checkpoint restored once for the whole batch; each
track is decoded by Spleeter's own audio adapter, separated, and written to the stem cache
(``ml/separation/stems.py``). Per-track progress goes to the Dagster log; each track's outcome comes back
as a custom message ``{"track_id", "status": "done" | "failed", "reason", "detail"}``.

Without Pipes (benchmarks, by hand) it reads the same extras from a JSON file:
``python pipeline/spleeter_worker.py extras.json`` and prints the outcomes as JSON lines.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class _PlainReporter:
    """Stands in for the Pipes context when run by hand: logs to stderr, outcomes to stdout."""

    def __init__(self, extras: dict) -> None:
        self.extras = extras

    def info(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def outcome(self, payload: dict) -> None:
        print(json.dumps(payload), flush=True)


def _official_separator(model_dir: Path):
    """Build the official 2-stems graph once and restore its checkpoint: (run(waveform) -> stems)."""
    os.environ["MODEL_PATH"] = str(model_dir.parent)  # spleeter reads it at import: never downloads
    import tensorflow as tf
    from spleeter.model import EstimatorSpecBuilder, InputProviderFactory
    from spleeter.utils.configuration import load_configuration

    tf.get_logger().setLevel("ERROR")
    tf.compat.v1.disable_eager_execution()
    params = load_configuration("spleeter:2stems")
    params["model_dir"] = str(model_dir)
    params["MWF"] = False
    graph = tf.Graph()
    with graph.as_default():
        provider = InputProviderFactory.get(params)
        features = provider.get_input_dict_placeholders()
        outputs = EstimatorSpecBuilder(features, params).outputs
        session = tf.compat.v1.Session(graph=graph)
        tf.compat.v1.train.Saver().restore(session, tf.train.latest_checkpoint(str(model_dir)))

    def separate(waveform, audio_id: str) -> dict:
        feed = provider.get_feed_dict(features, waveform, audio_id)
        result = session.run(outputs, feed_dict=feed)
        return {"vocals": result["vocals"], "accompaniment": result["accompaniment"]}

    return separate


def run(extras: dict, info, outcome) -> None:
    import numpy as np
    from spleeter.audio.adapter import AudioAdapter
    from spleeter.audio.convertor import to_stereo

    from ml.separation.stems import STEM_SAMPLE_RATE, StemCache

    model_dir = Path(extras["model_dir"])
    cache = StemCache(extras["cache_root"], "spleeter", extras["model_sha256"])
    tracks = extras["tracks"]
    started = time.perf_counter()
    separate = _official_separator(model_dir)
    info(f"official Spleeter 2-stems loaded from {model_dir} in {time.perf_counter() - started:.1f} s")
    adapter = AudioAdapter.default()
    for i, track in enumerate(tracks, 1):
        t0 = time.perf_counter()
        try:
            waveform, _ = adapter.load(track["path"], sample_rate=STEM_SAMPLE_RATE)
            waveform = to_stereo(np.asarray(waveform, np.float32))
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
            lines = str(exc).strip().splitlines()
            detail = f"Spleeter's ffmpeg adapter cannot decode it: {lines[-1] if lines else type(exc).__name__}"
            outcome({"track_id": track["track_id"], "status": "failed", "reason": "undecodable", "detail": detail})
            info(f"[{i}/{len(tracks)}] {track['path']}: cannot decode: {exc}")
            continue
        try:
            with cache.writer(track["track_id"]) as writer:
                if len(waveform):
                    stems = separate(waveform, track["path"])
                    writer.write(stems["vocals"], stems["accompaniment"], waveform)
                meta = {"track_id": track["track_id"], "backend": "spleeter", "model_sha256": extras["model_sha256"],
                        "model": "spleeter 2stems (official)"}  # fmt: skip
                writer.commit(meta)
        except Exception as exc:  # noqa: BLE001
            outcome({"track_id": track["track_id"], "status": "failed", "reason": "separation_failed",
                     "detail": f"{type(exc).__name__}: {exc}"})  # fmt: skip
            info(f"[{i}/{len(tracks)}] {track['path']}: separation failed: {exc}")
            continue
        seconds = len(waveform) / STEM_SAMPLE_RATE
        elapsed = time.perf_counter() - t0
        info(f"[{i}/{len(tracks)}] {track['path']}: {seconds:.0f} s of audio in {elapsed:.1f} s")
        outcome({"track_id": track["track_id"], "status": "done", "seconds": seconds, "elapsed_s": elapsed})


def main() -> None:
    from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, open_dagster_pipes

    if DAGSTER_PIPES_CONTEXT_ENV_VAR in os.environ:  # started by Dagster
        with open_dagster_pipes() as pipes:
            run(dict(pipes.extras), pipes.log.info, pipes.report_custom_message)
        return
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    reporter = _PlainReporter(json.loads(Path(sys.argv[1]).read_text()))
    run(reporter.extras, reporter.info, reporter.outcome)


if __name__ == "__main__":
    main()
