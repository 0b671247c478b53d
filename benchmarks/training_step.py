"""Training-step benchmark: seconds per step in float32 and in bfloat16 autocast, side by side, in one run.

    .venv/bin/python benchmarks/training_step.py [--steps 5] [--batch 32] [--clips 8]

* ``crnn``: one training step of the CRNN (forward, cross-entropy, backward, Adam) on a batch of
  10 s log-mels, as ``ml/training/training.py`` runs it (autocast around the forward pass and the
  loss, float32 master weights);
* ``voice_embedding`` (the default model) has no training step: its encoder (ECAPA-TDNN) is frozen
  and pretrained, and only a scikit-learn back-end is fitted, in well under a second. What its
  training costs is embedding the clips, so that is measured instead: seconds per 10 s clip,
  with the cosine between each clip's float32 and bfloat16 embeddings.

bfloat16 is measured only where the CPU has bfloat16 units (``ml/device.py``: ``avx512_bf16`` or
``amx_bf16``); elsewhere the report gives float32 only and says why (autocast would still run,
emulated, and prove nothing about speed). Each figure is the median of ``--steps`` timed steps after
one untimed one. Results go to ``benchmarks/results/training_step.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _median_seconds(step, steps: int) -> float:
    step()  # untimed: first-call allocations, oneDNN kernel selection
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def crnn_step(precisions, steps: int, batch: int, params: dict) -> dict:
    import torch

    from ml.clips.features import FeatureParams, LogMel
    from ml.device import autocast, precision_name
    from ml.models import build_model

    features = FeatureParams.from_params(params)
    clip = int(params["segments"]["clip_s"] * features.sample_rate)
    generator = torch.Generator().manual_seed(0)
    x = LogMel(features)(0.1 * torch.randn(batch, clip, generator=generator))
    labels = torch.arange(batch) % 6
    out = {"model": "crnn", "batch": batch, "input": list(x.shape)}
    for precision in precisions:
        torch.manual_seed(0)
        model = build_model("crnn", 6, features.n_mels, params.get("models", {}).get("crnn", {})).train()
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step(model=model, optimiser=optimiser, precision=precision) -> None:
            with autocast("cpu", precision):
                loss = torch.nn.functional.cross_entropy(model(x).float(), labels)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()

        out[f"seconds_per_step_{precision_name(precision)}"] = round(_median_seconds(step, steps), 3)
    if len(precisions) == 2:
        out["bf16_speedup"] = round(out["seconds_per_step_fp32"] / out["seconds_per_step_bf16"], 2)
    return out


def embedding_step(precisions, steps: int, clips: int) -> dict:
    import numpy as np
    import torch

    from ml.device import precision_name
    from ml.identification.backend import BackendParams, ClipEmbedder

    generator = torch.Generator().manual_seed(0)
    t = torch.arange(10 * 16000) / 16000
    voice = torch.sin(2 * torch.pi * 180 * t * (1 + 0.05 * torch.sin(2 * torch.pi * 0.5 * t)))
    noise = 0.01 * torch.randn(clips, len(t), generator=generator)
    audio = 0.1 * voice * (1 + torch.rand(clips, 1, generator=generator)) + noise
    out = {"model": "voice_embedding (ECAPA-TDNN, frozen: embedding per clip, not a training step)", "clips": clips}
    vectors = {}
    for precision in precisions:
        embedder = ClipEmbedder("voice_embedding", BackendParams(encoder="ecapa"), torch.device("cpu"),
                                precision=precision)  # fmt: skip
        name = precision_name(precision)

        def step(embedder=embedder, name=name) -> None:
            vectors[name] = embedder.embed(audio, batch_size=clips)

        seconds = _median_seconds(step, steps)
        out[f"seconds_per_clip_{name}"] = round(seconds / clips, 4)
    if len(precisions) == 2:
        out["bf16_speedup"] = round(out["seconds_per_clip_fp32"] / out["seconds_per_clip_bf16"], 2)
        out["min_cosine_bf16_vs_fp32"] = round(float(np.min(np.sum(vectors["fp32"] * vectors["bf16"], axis=1))), 5)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per figure (median)")
    parser.add_argument("--batch", type=int, default=32, help="CRNN batch (train.batch_size)")
    parser.add_argument("--clips", type=int, default=8, help="clips per embedding batch")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    import torch

    from ml import config
    from ml.device import cpu_bf16_flags, cpu_capability

    if args.threads:
        torch.set_num_threads(args.threads)
    params = config.load_params()
    precisions = [torch.float32, torch.bfloat16] if cpu_bf16_flags() else [torch.float32]
    report: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
                               f"torch {torch.__version__}", "cpu_capability": cpu_capability()}  # fmt: skip
    if not cpu_bf16_flags():
        report["bf16"] = "not measured: this CPU has no bfloat16 units (avx512_bf16 / amx_bf16), so FP32 only"
    print(f"CPU: {report['cpu_capability']}", file=sys.stderr)
    report["crnn"] = crnn_step(precisions, args.steps, args.batch, params)
    print(json.dumps(report["crnn"]), file=sys.stderr)
    report["voice_embedding"] = embedding_step(precisions, args.steps, args.clips)
    out = ROOT / "benchmarks" / "results" / "training_step.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
