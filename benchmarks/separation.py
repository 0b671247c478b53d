"""Separation benchmark: the official Spleeter against the PyTorch port, on the same files, in one run.

    .venv/bin/python benchmarks/separation.py [--real-audio ../shared/real-audio] [--rounds 3] [--long-minutes 60]

Reports, for each backend (each in its own child process, so its peak memory is its own) — the
torch port in both precisions side by side (``torch-bf16``: bfloat16 autocast, only where the CPU
has bfloat16 units, ``ml/device.py``; ``torch-fp32``), with the CPU's capability:

* throughput — seconds of audio separated per second, end to end (start, model load, decoding,
  separation, writing) and for the separation alone — over real songs (≥ 5 minutes of jamendo
  audio), and the torch / official ratios for each precision. "Official" is measured two ways: Spleeter's documented
  Python API (``Separator.separate`` per file, which rebuilds the graph and restores the weights on
  every call) and reconet's Pipes worker (``pipeline/spleeter_worker.py``: the official graph
  built once per batch);
* the machine is shared and noisy (±15 % from one run to the next here), so the backends run in
  ``--rounds`` rounds, one after the other in a rotating order; each round gives its own ratios
  (its runs are minutes apart at most), and the report gives every round and the medians;
* peak resident memory (the child's ru_maxrss) on that batch and, for the torch backend, on one
  long file (a real song looped to ``--long-minutes``);
* quality on the SiSEC 2011 excerpts: SNR between each torch precision's vocals and the official
  ones, and each backend's SDR against the true vocal stem (plain SDR, 10·log10(|s|² / |s − ŝ|²), no
  bss_eval projection).

CUDA is measured too when PyTorch sees a GPU. Results go to ``benchmarks/results/separation.json``.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TORCH_CHILD = """
import json, sys, time
from pathlib import Path
import torch
from ml.separation.separation import SeparationInput, SeparationParams, separate_with_torch, stem_cache
spec = json.loads(Path(sys.argv[1]).read_text())
device = torch.device(spec["device"])
settings = SeparationParams(precision=spec["precision"])
cache = stem_cache(spec["cache_root"], settings, spec["model_sha256"], device)
tracks = [SeparationInput(t["track_id"], Path(t["path"])) for t in spec["tracks"]]
t0 = time.perf_counter()
failures = separate_with_torch(tracks, cache, Path(spec["weights"]), device, settings)
if device.type == "cuda":
    torch.cuda.synchronize()
print(json.dumps({"separation_s": time.perf_counter() - t0, "failures": [f.detail for f in failures]}))
"""


# Spleeter's documented Python API (Separator.separate per file): its Estimator rebuilds the graph
# and restores the checkpoint on every call. This is how Spleeter is usually run from Python.
OFFICIAL_API_CHILD = """
import json, sys, time
import numpy as np
from pathlib import Path
from spleeter.audio.adapter import AudioAdapter
from spleeter.separator import Separator
spec = json.loads(Path(sys.argv[1]).read_text())
separator = Separator("spleeter:2stems", multiprocess=False)
adapter = AudioAdapter.default()
separation_s = 0.0
for track in spec["tracks"]:
    waveform, _ = adapter.load(track["path"], sample_rate=44100)
    t0 = time.perf_counter()
    stems = separator.separate(waveform)
    separation_s += time.perf_counter() - t0
    np.save(Path(spec["cache_root"]) / (track["track_id"] + ".npy"), stems["vocals"])
print(json.dumps({"separation_s": separation_s}))
"""


def _run_child(cmd: list[str], env: dict | None = None) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in MiB, stdout) of one child process."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, **(env or {})})  # fmt: skip
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{cmd[:3]} failed with exit code {proc.returncode}")
    return wall, usage.ru_maxrss // 1024, stdout


def _duration(path: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return float(out.stdout.strip())


def torch_backends() -> list[str]:
    """The torch port's precisions to measure: bfloat16 only where the CPU has bfloat16 units."""
    from ml.device import cpu_bf16_flags

    return ["torch-bf16", "torch-fp32"] if cpu_bf16_flags() else ["torch-fp32"]


def run_backend(backend: str, files: list[Path], work: Path, model_sha: str, device: str = "cpu") -> dict:
    """One child process separating ``files``: ``torch-fp32``, ``torch-bf16``, ``spleeter`` (reconet's
    Pipes worker) or ``spleeter-api``."""
    from ml import config
    from ml.separation.separation import SeparationParams, stem_cache

    paths = config.paths()
    work.mkdir(parents=True, exist_ok=True)
    cache_root = work / f"stems-{backend}-{device}"
    tracks = [{"track_id": f"bench-{i:03d}", "path": str(p)} for i, p in enumerate(files)]
    spec = work / f"{backend}-{device}.json"
    if backend.startswith("torch"):
        spec.write_text(json.dumps({"device": device, "cache_root": str(cache_root), "model_sha256": model_sha,
                                    "weights": str(paths.spleeter_weights), "tracks": tracks,
                                    "precision": backend.removeprefix("torch-")}))  # fmt: skip
        wall, rss, out = _run_child([sys.executable, "-c", TORCH_CHILD, str(spec)])
        result = json.loads(out.strip().splitlines()[-1])
        separation_s = result["separation_s"]
    elif backend == "spleeter-api":
        cache_root.mkdir(parents=True, exist_ok=True)
        spec.write_text(json.dumps({"cache_root": str(cache_root), "tracks": tracks}))
        env = {"MODEL_PATH": str(paths.spleeter_checkpoint.parent), "TF_CPP_MIN_LOG_LEVEL": "3"}
        wall, rss, out = _run_child([str(paths.spleeter_python), "-c", OFFICIAL_API_CHILD, str(spec)], env)
        separation_s = json.loads(out.strip().splitlines()[-1])["separation_s"]
    else:
        spec.write_text(json.dumps({"model_dir": str(paths.spleeter_checkpoint), "cache_root": str(cache_root),
                                    "model_sha256": model_sha, "tracks": tracks}))  # fmt: skip
        wall, rss, out = _run_child([str(paths.spleeter_python), str(ROOT / "pipeline/spleeter_worker.py"), str(spec)])
        outcomes = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        separation_s = sum(o.get("elapsed_s", 0.0) for o in outcomes)
    audio_s = sum(_duration(p) for p in files)
    precision = backend.removeprefix("torch-") if backend.startswith("torch") else "fp32"
    settings = SeparationParams(backend="spleeter" if backend == "spleeter" else "torch", precision=precision)
    cache = stem_cache(cache_root, settings, model_sha, device)
    return {
        "backend": backend, "device": device, "files": len(files), "audio_s": round(audio_s, 1),
        "wall_s": round(wall, 2), "separation_s": round(separation_s, 2),
        "audio_s_per_s_end_to_end": round(audio_s / wall, 2),
        "audio_s_per_s_separation": round(audio_s / separation_s, 2),
        "peak_rss_mib": rss,
        "stems": {t["path"]: str(cache.entry_dir(t["track_id"])) for t in tracks},
    }  # fmt: skip


BASELINES = {"official_api": "spleeter-api", "official_pipes_worker": "spleeter"}


def throughput(songs: list[Path], work: Path, model_sha: str, rounds: int) -> dict:
    """Every backend once per round, in a rotating order; the torch / official ratios of each round
    and their medians, and each backend's median figures (peak memory: the largest)."""
    backends = ["spleeter-api", "spleeter", *torch_backends()]
    runs: dict[str, list[dict]] = {b: [] for b in backends}
    for r in range(rounds):
        order = backends[r % len(backends) :] + backends[: r % len(backends)]
        print(f"throughput round {r + 1}/{rounds}: {len(songs)} jamendo songs, {' then '.join(order)}", file=sys.stderr)
        for backend in order:
            run = run_backend(backend, songs, work / f"round-{r}", model_sha)
            run.pop("stems")
            runs[backend].append(run)
        shutil.rmtree(work / f"round-{r}")
    out: dict = {"rounds": rounds, "throughput": []}
    for rows in runs.values():
        summary = {k: rows[0][k] for k in ("backend", "device", "files", "audio_s")}
        for key in ("wall_s", "separation_s", "audio_s_per_s_end_to_end", "audio_s_per_s_separation"):
            summary[key] = round(statistics.median(row[key] for row in rows), 2)
        summary["peak_rss_mib"] = max(row["peak_rss_mib"] for row in rows)
        summary["per_round_audio_s_per_s_end_to_end"] = [row["audio_s_per_s_end_to_end"] for row in rows]
        out["throughput"].append(summary)
    for port in torch_backends():
        prefix = port.replace("-", "_")
        for name, baseline in (*BASELINES.items(), ("torch_fp32", "torch-fp32")):
            if baseline == port:
                continue
            for kind, key in (("end_to_end", "wall_s"), ("separation", "separation_s")):
                ratios = [b[key] / t[key] for b, t in zip(runs[baseline], runs[port], strict=True)]
                out[f"{prefix}_over_{name}_{kind}"] = round(statistics.median(ratios), 2)
                out[f"{prefix}_over_{name}_{kind}_per_round"] = [round(x, 2) for x in ratios]
    return out


def _snr(reference, estimate) -> float:
    import numpy as np

    n = min(len(reference), len(estimate))
    reference, estimate = reference[:n], estimate[:n]
    return float(10 * np.log10(np.sum(reference**2) / np.sum((reference - estimate) ** 2)))


def quality(sisec: Path, work: Path, model_sha: str) -> list[dict]:
    import soundfile as sf

    from ml.audio import load_audio

    mixes = sorted(sisec.glob("*__mix.wav"))
    runs = {b: run_backend(b, mixes, work / "quality", model_sha) for b in ("spleeter", *torch_backends())}
    rows = []
    for mix in mixes:
        truth = load_audio(mix.with_name(mix.name.replace("__mix", "__vocals")), 44100)
        vocals = {b: sf.read(Path(r["stems"][str(mix)]) / "vocals.flac")[0] for b, r in runs.items()}
        row = {"song": mix.name.replace("__mix.wav", ""), "sdr_official_db": round(_snr(truth, vocals["spleeter"]), 2)}
        for port in torch_backends():
            name = port.replace("-", "_")
            row[f"snr_{name}_vs_official_db"] = round(_snr(vocals["spleeter"], vocals[port]), 1)
            row[f"sdr_{name}_db"] = round(_snr(truth, vocals[port]), 2)
        if "torch-bf16" in vocals:
            row["snr_torch_bf16_vs_fp32_db"] = round(_snr(vocals["torch-fp32"], vocals["torch-bf16"]), 1)
            row["sdr_bf16_minus_fp32_db"] = round(row["sdr_torch_bf16_db"] - row["sdr_torch_fp32_db"], 3)
        rows.append(row)
    return rows


def long_file(song: Path, minutes: float, work: Path) -> Path:
    out = work / f"long-{minutes:g}min.flac"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(song),
                    "-t", str(minutes * 60), "-c:a", "flac", str(out)], check=True)  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real-audio", type=Path, default=ROOT.parent / "shared" / "real-audio")
    parser.add_argument("--songs", type=int, default=2, help="jamendo songs in the throughput batch (≥ 5 min)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all backends (median ratios)")
    parser.add_argument("--long-minutes", type=float, default=60.0, help="0: no long-file memory run")
    args = parser.parse_args()
    import torch

    from ml import config
    from ml.device import cpu_bf16_flags, cpu_capability
    from ml.separation.separation import checkpoint_sha256

    paths = config.paths()
    model_sha = checkpoint_sha256(paths.spleeter_checkpoint)
    songs = sorted((args.real_audio / "jamendo" / "mp3").glob("*.mp3"))[: args.songs]
    if not songs:
        raise SystemExit(f"no jamendo songs under {args.real_audio}")
    report: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
                    "cpu_capability": cpu_capability(), "precisions": torch_backends(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}  # fmt: skip
    if not cpu_bf16_flags():
        report["bf16"] = "not measured: this CPU has no bfloat16 units (avx512_bf16 / amx_bf16), so FP32 only"
    with tempfile.TemporaryDirectory(prefix="reconet-bench-") as tmp:
        work = Path(tmp)
        report.update(throughput(songs, work, model_sha, args.rounds))
        if torch.cuda.is_available():
            on_gpu = run_backend("torch-auto", songs, work / "cuda", model_sha, device="cuda")
            on_gpu.pop("stems")
            report["throughput"].append(on_gpu)
        print("quality on SiSEC 2011", file=sys.stderr)
        report["quality"] = quality(args.real_audio / "sisec2011", work, model_sha)
        if args.long_minutes > 0:
            print(f"memory on a {args.long_minutes:g}-minute file", file=sys.stderr)
            long = long_file(songs[0], args.long_minutes, work)
            report["long_file"] = run_backend(torch_backends()[0], [long], work / "long", model_sha)
            report["long_file"].pop("stems", None)
    out = ROOT / "benchmarks" / "results" / "separation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
