"""Feature and loader benchmark: batched torchaudio log-mels against per-clip librosa, and the loader.

    .venv/bin/python benchmarks/features.py [--clips 256] [--batch 32] [--steps 20]

1. Log-mels (params.yaml ``features``) of the same 10 s clips: ``ml.clips.features.compute_log_mels``
   (batched, on the CPU and on CUDA when present) against ``librosa.feature.melspectrogram`` +
   ``power_to_db`` called clip by clip — clips per second and the ratio, in one process.
2. Loader: clips per second out of :class:`ml.clips.loader.SegmentDataset` for raw clips (with their
   accompaniment) and for cached log-mels, through a PyTorch DataLoader; then training steps of the
   default model (``model.name``) on batches of cached log-mels: the share of each step spent
   waiting for data (target ≤ 10 %).

The clips are real: vocal stems of the demo library's packed segments when `make run` has made
them (``data/tables/segments``), otherwise synthetic. Results go to
``benchmarks/results/features.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _clips(n: int, samples: int) -> tuple[np.ndarray, str]:
    import pyarrow as pa

    from ml import config
    from ml.clips.segmentation import PackedRows
    from ml.tables import read_table

    paths = config.paths()
    files = sorted((paths.tables / "segments").glob("*.parquet"))
    if files:
        table = pa.concat_tables(read_table(f) for f in files)
        clips = PackedRows.from_table(table, paths.data)
        if len(clips) and clips.shape[1] == samples:
            picked = clips.take(np.arange(n) % len(clips))
            return picked, f"{min(n, len(clips))} demo-library vocal clips"
    rng = np.random.default_rng(0)
    return np.round(rng.uniform(-0.3, 0.3, (n, samples)) * 32767).astype(np.int16), "synthetic noise clips"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--librosa-clips", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    import librosa
    import pyarrow as pa
    import torch

    from ml import config
    from ml.clips.features import FeatureParams, compute_log_mels
    from ml.clips.loader import SegmentDataset, make_loader, model_input
    from ml.clips.segmentation import SegmentParams
    from ml.models import build_model

    params = config.load_params()
    features = FeatureParams.from_params(params)
    samples = SegmentParams.from_params(params).clip_samples
    clips, what = _clips(args.clips, samples)
    report: dict = {"clips": what, "torch_threads": torch.get_num_threads()}

    # 1. log-mels: per-clip librosa vs batched torchaudio, same clips
    floats = clips.astype(np.float32) / 32767
    t0 = time.perf_counter()
    for clip in floats[: args.librosa_clips]:
        mel = librosa.feature.melspectrogram(y=clip, sr=features.sample_rate, n_fft=features.n_fft,
                                             hop_length=features.hop_length, n_mels=features.n_mels)  # fmt: skip
        librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=features.top_db)
    librosa_rate = args.librosa_clips / (time.perf_counter() - t0)
    compute_log_mels(clips[:8], features, torch.device("cpu"))  # warm-up
    t0 = time.perf_counter()
    compute_log_mels(clips, features, torch.device("cpu"))
    torch_rate = len(clips) / (time.perf_counter() - t0)
    report["log_mel"] = {"librosa_per_clip_clips_per_s": round(librosa_rate, 1),
                         "torch_batched_cpu_clips_per_s": round(torch_rate, 1),
                         "ratio_cpu": round(torch_rate / librosa_rate, 1)}  # fmt: skip
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        compute_log_mels(clips[:64], features, cuda)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        compute_log_mels(clips, features, cuda)
        torch.cuda.synchronize()
        report["log_mel"]["torch_batched_cuda_clips_per_s"] = round(len(clips) / (time.perf_counter() - t0), 1)
    print(report["log_mel"], file=sys.stderr)

    # 2. the loader, from packed files on disk
    with tempfile.TemporaryDirectory(prefix="reconet-bench-") as tmp:
        data = Path(tmp)
        np.save(data / "vocals.npy", clips)
        np.save(data / "accompaniment.npy", clips)
        np.save(data / "features.npy", compute_log_mels(clips, features, torch.device("cpu")))
        n_classes = 6
        table = pa.table({
            "audio_file": ["vocals.npy"] * len(clips), "accompaniment_file": ["accompaniment.npy"] * len(clips),
            "audio_row": list(range(len(clips))), "feature_file": ["features.npy"] * len(clips),
            "feature_row": list(range(len(clips))), "artist": [f"a{i % n_classes}" for i in range(len(clips))],
        })  # fmt: skip
        classes = [f"a{i}" for i in range(n_classes)]
        report["loader"] = {}
        for source in ("audio", "features"):
            loader = make_loader(SegmentDataset(table, data, classes, source=source), args.batch, shuffle=True)
            t0 = time.perf_counter()
            n = sum(len(b.labels) for b in loader)
            report["loader"][f"{source}_clips_per_s"] = round(n / (time.perf_counter() - t0), 1)

        # data time vs step time for the default model, on cached log-mels
        model_cfg = params.get("model", {})
        name = model_cfg.get("name", "crnn")
        model = build_model(name, n_classes, features.n_mels, model_cfg.get(name, {}))
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = torch.nn.CrossEntropyLoss()
        loader = make_loader(SegmentDataset(table, data, classes, source="features"), args.batch, shuffle=True)
        data_s = step_s = 0.0
        steps = 0
        while steps < args.steps:
            t_data = time.perf_counter()
            for batch in loader:
                x, _ = model_input(batch, torch.device("cpu"))
                t_step = time.perf_counter()
                data_s += t_step - t_data
                optimiser.zero_grad()
                loss_fn(model(x), batch.labels).backward()
                optimiser.step()
                t_data = time.perf_counter()
                step_s += t_data - t_step
                steps += 1
                if steps >= args.steps:
                    break
        report["training_step"] = {"model": name, "batch": args.batch, "steps": steps,
                                   "data_ms_per_step": round(1000 * data_s / steps, 1),
                                   "compute_ms_per_step": round(1000 * step_s / steps, 1),
                                   "data_share": round(data_s / (data_s + step_s), 3)}  # fmt: skip
    out = ROOT / "benchmarks" / "results" / "features.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
