"""Segmentation benchmark: silence detection against pydub, and vocal activity on real songs.

    .venv/bin/python benchmarks/segments.py [--real-audio ../shared/real-audio] [--songs 10]

1. Speed: ``ml.clips.segmentation.detect_nonsilent`` against ``pydub.silence.detect_nonsilent`` on the
   same vocal stems, in one process: both times, the ratio, and whether the ranges agree.
2. Quality: the JamendoLyrics songs are separated (torch backend) and segmented with the default
   parameters; the time the kept segments cover (without their padding) is compared with the
   annotated sung lines: precision = share of kept time inside a sung line, recall = share of
   sung-line time inside a kept segment.

Results go to ``benchmarks/results/segments.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _intervals_to_mask(intervals, n: int, rate: float) -> np.ndarray:
    mask = np.zeros(n, bool)
    for start, end in intervals:
        mask[int(start * rate) : int(end * rate)] = True
    return mask


def sung_lines(annotations: Path, song: Path) -> list[tuple[float, float]]:
    path = annotations / f"{song.stem}.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    start_col, end_col = 0, 1
    header = [h.strip().lower() for h in rows[0]]
    if any(h.startswith("start") for h in header):
        start_col = next(i for i, h in enumerate(header) if h.startswith("start"))
        end_col = next(i for i, h in enumerate(header) if h.startswith("end"))
        rows = rows[1:]
    return [(float(r[start_col]), float(r[end_col])) for r in rows if r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real-audio", type=Path, default=ROOT.parent / "shared" / "real-audio")
    parser.add_argument("--songs", type=int, default=10)
    parser.add_argument("--pydub-songs", type=int, default=2, help="songs timed against pydub (slow)")
    args = parser.parse_args()
    import torch
    from pydub import AudioSegment
    from pydub.silence import detect_nonsilent as pydub_detect_nonsilent

    from ml import config
    from ml.audio import load_audio
    from ml.clips.segmentation import SegmentParams, cut_clips, dbfs, detect_nonsilent
    from ml.separation.separation import SeparationInput, SeparationParams, checkpoint_sha256, separate_with_torch
    from ml.separation.stems import StemCache

    paths = config.paths()
    params = config.load_params()
    settings = SegmentParams.from_params(params)
    jamendo = args.real_audio / "jamendo"
    songs = sorted((jamendo / "mp3").glob("*.mp3"))[: args.songs]
    report: dict = {"segment_params": settings.__dict__, "songs": []}
    with tempfile.TemporaryDirectory(prefix="reconet-bench-") as tmp:
        cache = StemCache(Path(tmp), "torch", checkpoint_sha256(paths.spleeter_checkpoint))
        print(f"separating {len(songs)} jamendo songs", file=sys.stderr)
        separate_with_torch([SeparationInput(s.stem, s) for s in songs], cache, paths.spleeter_weights,
                            torch.device("cpu"), SeparationParams())  # fmt: skip
        ours_s = theirs_s = 0.0
        agree = []
        tp = kept_total = sung_total = 0.0
        for i, song in enumerate(songs):
            vocals = load_audio(cache.get(song.stem).vocals, settings.sample_rate, stereo=False).mean(axis=1)
            threshold = dbfs(vocals) - settings.silence_below_track_db
            if i < args.pydub_songs:
                t0 = time.perf_counter()
                ours = detect_nonsilent(vocals, settings.sample_rate, settings.min_silence_ms, threshold)
                t1 = time.perf_counter()
                pcm = np.round(np.clip(vocals, -1, 1) * 32767).astype(np.int16)
                segment = AudioSegment(pcm.tobytes(), frame_rate=settings.sample_rate, sample_width=2, channels=1)
                theirs = pydub_detect_nonsilent(segment, settings.min_silence_ms, threshold)
                t2 = time.perf_counter()
                ours_s, theirs_s = ours_s + t1 - t0, theirs_s + t2 - t1
                agree.append([list(r) for r in ours] == theirs)
            clips, _ = cut_clips(vocals, settings)
            duration = len(vocals) / settings.sample_rate
            kept = [
                (start / settings.sample_rate, (start + length) / settings.sample_rate)
                for c in clips
                for start, length in c.pieces
            ]  # a joined clip: each of its stretches
            rate = 100.0  # 10 ms resolution
            n = int(duration * rate) + 1
            kept_mask = _intervals_to_mask(kept, n, rate)
            sung_mask = _intervals_to_mask(sung_lines(jamendo / "annotations" / "lines", song), n, rate)
            overlap = float((kept_mask & sung_mask).sum())
            tp, kept_total, sung_total = tp + overlap, kept_total + kept_mask.sum(), sung_total + sung_mask.sum()
            report["songs"].append({
                "song": song.stem, "duration_s": round(duration, 1), "clips": len(clips),
                "precision": round(overlap / max(kept_mask.sum(), 1), 3),
                "recall": round(overlap / max(sung_mask.sum(), 1), 3),
            })  # fmt: skip
            print(report["songs"][-1], file=sys.stderr)
    report["silence_detection"] = {
        "songs": len(agree), "reconet_s": round(ours_s, 3), "pydub_s": round(theirs_s, 2),
        "speedup": round(theirs_s / ours_s, 1), "identical_ranges": all(agree),
    }  # fmt: skip
    report["vocal_activity"] = {"precision": round(tp / kept_total, 3), "recall": round(tp / sung_total, 3)}
    out = ROOT / "benchmarks" / "results" / "segments.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "songs"}, indent=2))


if __name__ == "__main__":
    main()
