"""Real voices over real music (issue 12, point 5): the pipeline's own assets on a discography of
read speech mixed over instrumental music, at two levels, with each model; and the singers set's
leave-one-out identification with reconet's embedding extractors.

Library. The 10 LibriSpeech readers of ``/work/shared/real-audio/librispeech-speakers/<speaker>/``
(10 utterances each) are the artists. Each gets 2 albums x 3 songs; a song (45-60 s) is the
reader's utterances, concatenated with short pauses, over an excerpt (random file, random offset)
of the instrumental game music of the Debian package ``asc-music``. The music is fetched without
root: ``apt-get download asc-music`` into ``<work>/cache`` and ``dpkg-deb -x`` there (a copy
already extracted under /work/scratch_voices/pkgs/asc-music is used when present). Album 1 uses
utterances 0-4 and album 2 utterances 5-9 (disjoint train and test albums for the album split),
cyclically, each song starting at another offset; utterances recur across the songs of one album.
Every song is mixed twice, with the same voice and excerpt: ``normal`` (voice -3...+6 dB against
the music's RMS, uniform per song) and ``hard`` (voice 0...9 dB below the music). Songs are mp3
(ffmpeg, 44.1 kHz stereo), tagged with mutagen, laid out as Artist/Album/NN Title.mp3. Seeded.

Pipeline. Per level a library, data dir, reports dir and Dagster home; one stem cache for both
levels (each mix is separated once, whatever the models and re-runs) and one MLflow sqlite store. The first
model of a level runs ``reconet run``; later models only
``reconet materialize model`` and ``reconet materialize evaluation`` on the same data dir.

Level ``demo`` runs the same models on the default demo library (``reconet demo-library``), for
the training times the README quotes.

Usage: .venv/bin/python benchmarks/real_voices.py [--levels normal hard demo] [--models ...]
       [--epochs N] [--work DIR] [--skip-build] [--skip-singers] [--singers-only] [--set KEY=VALUE ...]
"""

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ml.audio import load_audio  # noqa: E402

SPEAKERS = Path("/work/shared/real-audio/librispeech-speakers")
SINGERS = Path("/work/shared/real-audio/singers")
SCRATCH_MUSIC = Path("/work/scratch_voices/pkgs/asc-music")
RESULTS = ROOT / "benchmarks" / "results"
RECONET = str(ROOT / ".venv" / "bin" / "reconet")
LEVELS = {"normal": (-3.0, 6.0), "hard": (-9.0, 0.0)}  # voice RMS against the music's, dB
EMBEDDING = ("voice_embedding", "classical", "voice_fusion")
SR = 44100


def music_files(work: Path) -> list[Path]:
    """The asc-music package's mp3/ogg files: the colleague's extraction, else apt-get download."""
    for base in (SCRATCH_MUSIC, work / "cache" / "asc-music"):
        found = sorted(p for p in base.rglob("*") if p.suffix in (".mp3", ".ogg")) if base.is_dir() else []
        if found:
            return found
    cache = work / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", "asc-music"], cwd=cache, check=True)
    deb = next(cache.glob("asc-music_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(cache / "asc-music")], check=True)
    return sorted(p for p in (cache / "asc-music").rglob("*") if p.suffix in (".mp3", ".ogg"))


def check_music(work: Path) -> list[dict]:
    """Whether the music holds vocals: each file through the pipeline's separation and its
    instrumental rule (the share of 100 ms frames where the vocal stem is audible against the mix),
    and the longest run of such frames (a sung phrase lasts seconds; what leaks from a lead
    instrument flickers)."""
    import torch

    from ml import config
    from ml.separation.separation import (
        SeparationInput,
        SeparationParams,
        separate_with_torch,
        vocal_active_fraction,
        vocal_active_frames,
    )
    from ml.separation.stems import StemCache

    settings = SeparationParams.from_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    files = music_files(work)
    cache = StemCache(work / "music-stems", "torch", "0" * 64)
    todo = [SeparationInput(f.stem, f) for f in files if cache.get(f.stem) is None]
    separate_with_torch(todo, cache, config.paths().spleeter_weights, torch.device("cpu"), settings)
    out = []
    for f in files:
        entry = cache.get(f.stem)
        vocal_db, mix_db = entry.activity()
        edges = np.diff(np.r_[0, vocal_active_frames(entry, settings).astype(int), 0])
        runs = (np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)) * 0.1
        out.append({"file": f.name, "vocal_active": round(vocal_active_fraction(entry, settings), 4),
                    "longest_run_s": round(float(runs.max()) if len(runs) else 0.0, 1),
                    "median_vocal_vs_mix_db": round(float(np.median(vocal_db - mix_db)), 1)})  # fmt: skip
        print(f"  music {out[-1]}", flush=True)
    return out


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


def build(work: Path, levels: list[str], seed: int, readers: int, songs_per_album: int = 3) -> None:
    music = [load_audio(p, SR, stereo=True) for p in music_files(work)]
    print(f"music: {len(music)} files, {sum(len(m) for m in music) / SR / 60:.1f} min", flush=True)
    rng = np.random.default_rng(seed)
    for speaker in sorted(p.name for p in SPEAKERS.iterdir() if p.is_dir())[:readers]:  # same songs for a prefix
        utterances = [load_audio(p, SR, stereo=False)[:, 0] for p in sorted((SPEAKERS / speaker).glob("*.flac"))]
        half = len(utterances) // 2
        artist = f"Reader {speaker}"
        for album in range(2):
            pool = utterances[album * half:(album + 1) * half]
            for track in range(1, songs_per_album + 1):
                length = int(rng.uniform(45.0, 60.0) * SR)
                parts, n, i = [np.zeros(int(0.5 * SR), np.float32)], int(0.5 * SR), track - 1
                while n < length:  # the album's utterances, cyclically, from this song's offset
                    u = pool[i % len(pool)]
                    pause = np.zeros(int(rng.uniform(0.3, 0.8) * SR), np.float32)
                    parts += [u, pause]
                    n, i = n + len(u) + len(pause), i + 1
                voice = np.concatenate(parts)[:length]
                speech_rms = rms(np.concatenate([p for p in parts if p.any()]))
                source = music[int(rng.integers(len(music)))]
                start = int(rng.integers(0, max(1, len(source) - length)))
                excerpt = source[start:start + length]
                excerpt = np.pad(excerpt, ((0, length - len(excerpt)), (0, 0)))
                snrs = {lv: rng.uniform(*LEVELS[lv]) for lv in LEVELS}  # both drawn: levels stay seeded alike
                title = f"Reading {album * songs_per_album + track}"
                for level in levels:
                    gain = rms(excerpt) * 10 ** (snrs[level] / 20) / speech_rms
                    mix = excerpt + gain * voice[:, None]
                    mix *= min(1.0, 0.89 / (np.abs(mix).max() + 1e-9))
                    folder = work / f"library-{level}" / artist / f"Album {'AB'[album]}"
                    write_mp3(mix, folder / f"{track:02d} {title}.mp3", artist, f"Album {'AB'[album]}", title, track)
        print(f"  built {artist}", flush=True)


def write_mp3(audio: np.ndarray, path: Path, artist: str, album: str, title: str, track: int) -> None:
    from mutagen.easyid3 import EasyID3

    path.parent.mkdir(parents=True, exist_ok=True)
    wav = path.with_suffix(".tmp.wav")
    sf.write(wav, audio.astype(np.float32), SR, subtype="PCM_16")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(wav), "-codec:a", "libmp3lame", "-b:a", "192k",
                    "-map_metadata", "-1", "-fflags", "+bitexact", str(path)], check=True)  # fmt: skip
    wav.unlink()
    tags = EasyID3()
    tags.update({"artist": artist, "album": album, "title": title, "tracknumber": str(track)})
    tags.save(path)


def pipeline_env(work: Path, level: str, model: str, epochs: int | None, overrides: dict | None = None) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    name, _, encoder = model.partition(":")  # "voice_embedding:ecapa": that model with that encoder
    params["train"]["model"], params["train"]["split_kinds"] = name, ["song", "album"]
    if encoder:
        params["models"][name] = {**params["models"].get(name, {}), "encoder": encoder}
    if epochs and name not in EMBEDDING:
        params["train"]["epochs"] = epochs
        params["train"]["warmup_epochs"] = min(params["train"].get("warmup_epochs", 0), max(1, epochs // 2))
    for key, value in (overrides or {}).items():  # --set models.samplecnn.hidden=256
        *sections, last = key.split(".")
        target = params
        for section in sections:
            target = target.setdefault(section, {})
        target[last] = value
    path = work / "params" / f"{level}-{model.replace(':', '-')}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return {**os.environ, "RECONET_LIBRARY": str(work / f"library-{level}"),
            "RECONET_DATA_DIR": str(work / f"data-{level}"), "RECONET_REPORTS_DIR": str(work / f"reports-{level}"),
            "RECONET_STEMS_DIR": str(work / "stems"), "DAGSTER_HOME": str(work / f"dagster-{level}"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "RECONET_PARAMS": str(path)}  # fmt: skip


def reconet(args: list[str], env: dict, log: Path) -> tuple[bool, float, str]:
    started = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ reconet {' '.join(args)}\n")
        f.flush()
        done = subprocess.run([RECONET, *args], env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    tail = [line for line in log.read_text().splitlines() if "failed" in line or "rror" in line][-2:]
    return done.returncode == 0, time.perf_counter() - started, " / ".join(tail)


def train_seconds(dagster_home: Path, kind: str) -> float | None:
    """The `model` asset's train_seconds metadata for the split kind, from the level's instance."""
    try:
        import dagster as dg

        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("model"), asset_partitions=[kind]), limit=1).records
            return float(records[0].asset_materialization.metadata["train_seconds"].value) if records else None
    except Exception as exc:  # noqa: BLE001 - a figure left out, not a failed benchmark
        print(f"  (train_seconds unavailable: {exc})", flush=True)
        return None


def run_model(work: Path, level: str, model: str, epochs: int | None, prepared: set,
              overrides: dict | None = None) -> list[dict]:  # fmt: skip
    env, log = pipeline_env(work, level, model, epochs, overrides), work / f"{level}.log"
    print(f"[{time.strftime('%H:%M:%S')}] {level} / {model} ...", flush=True)
    if level not in prepared:
        ok, seconds, error = reconet(["run"], env, log)
        prepared.add(level) if ok else None
    else:
        ok, seconds, error = reconet(["materialize", "model"], env, log)
        if ok:
            ok, more, error = reconet(["materialize", "evaluation"], env, log)
            seconds += more
    rows = []
    for kind in ("song", "album"):
        row = {"model": model, "split": kind, "level": level, "wall_s": round(seconds, 1),
               "epochs": epochs if epochs and model.partition(":")[0] not in EMBEDDING else None}  # fmt: skip
        metrics = work / f"reports-{level}" / "evaluation" / kind / "metrics.json"
        if ok and metrics.exists():
            m = json.loads(metrics.read_text())
            for level_name, short in (("segment", "seg"), ("song_mean_probability", "song")):
                row[f"{short}_acc"], row[f"{short}_f1"] = m[level_name]["accuracy"], m[level_name]["macro_f1"]
            row["eer"] = (m.get("open_set") or {}).get("eer")
            if "song_lstm" in m:  # samplecnn: an LSTM over the songs' clip embeddings, beside the mean
                row["song_lstm_acc"], row["song_lstm_f1"] = m["song_lstm"]["accuracy"], m["song_lstm"]["macro_f1"]
            row["train_s"] = train_seconds(work / f"dagster-{level}", kind)
            shutil.copy(metrics, work / f"metrics-{level}-{model.replace(':', '-')}-{kind}.json")
        else:
            row["error"] = error or "failed (see log)"
        rows.append(row)
        print(f"  {row}", flush=True)
    return rows


def clips_of(audio: np.ndarray, clip: int | None) -> np.ndarray:
    """10 s clips the reconet way (a last remainder of at least half a clip padded), or the whole."""
    if clip is None or len(audio) <= clip:
        return [np.pad(audio, (0, max(0, (clip or 0) - len(audio))))]
    n = len(audio) // clip + (len(audio) % clip >= clip // 2)
    return [np.pad(audio[i * clip:(i + 1) * clip], (0, max(0, (i + 1) * clip - len(audio)))) for i in range(n)]


SINGER_EXTRACTORS = [*EMBEDDING, "voice_embedding:ecapa", "voice_fusion:ecapa"]


def singers(work: Path, extractors: list[str] = SINGER_EXTRACTORS) -> list[dict]:
    import torch

    from ml.identification.backend import BackendParams, ClipEmbedder

    with open(SINGERS / "manifest.csv", encoding="utf-8") as f:
        rows_in = list(csv.DictReader(f))
    audio = [load_audio(SINGERS / r["path"], 16000, stereo=False)[:, 0] for r in rows_in]
    names = np.array([r["singer"] for r in rows_in])
    out = []
    for label in extractors:
        name, _, encoder = label.partition(":")
        options = {"encoder": encoder} if encoder else {}
        embedder = ClipEmbedder(name, BackendParams.from_options(name, options), torch.device("cpu"))
        for clip_label, clip in (("10 s clips", 160000), ("whole recording", None)):
            if clip is None and name != "voice_embedding":
                continue
            clips = [embedder.embed(torch.from_numpy(np.stack(clips_of(a, clip)))) for a in audio]
            for standardise in (True, False):
                hits = []
                for q in [i for i in range(len(names)) if (names == names[i]).sum() >= 2]:
                    refs = [i for i in range(len(names)) if i != q]
                    stacked = np.concatenate([clips[i] for i in refs])
                    mu, sd = (stacked.mean(0), stacked.std(0) + 1e-8) if standardise else (0.0, 1.0)
                    song = {i: unit(unit((clips[i] - mu) / sd).mean(0)) for i in [q, *refs]}
                    cands = sorted(set(names[refs]))
                    centroids = np.stack([unit(np.mean([song[i] for i in refs if names[i] == s], 0)) for s in cands])
                    hits.append(cands[int(np.argmax(centroids @ song[q]))] == names[q])
                variant = f"{clip_label}, {'standardised' if standardise else 'raw'}"
                out.append({"extractor": label, "variant": variant, "queries": len(hits),
                            "accuracy": round(float(np.mean(hits)), 3)})  # fmt: skip
                print(f"  singers {label} / {variant}: {out[-1]['accuracy']:.3f} ({len(hits)} queries)", flush=True)
    return out


def unit(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-12)


def fmt(v) -> str:
    return "—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def write_report(rows: list[dict], singer_rows: list[dict], note: str, stem: str = "real_voices") -> str:
    lines = ["# Real voices over real music (benchmarks/real_voices.py)", "", note, "",
             "| model | split | level | seg acc | seg F1 | song acc | song F1 | open-set EER | train s | wall s "
             "| note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        extra = f"{r['epochs']} epochs" if r.get("epochs") else ""
        if r.get("song_lstm_f1") is not None:
            extra += f"; song LSTM acc / F1 {r['song_lstm_acc']:.3f} / {r['song_lstm_f1']:.3f}"
        if r.get("overrides"):
            extra += "; " + ", ".join(f"{k}={v}" for k, v in r["overrides"].items())
        extra = (extra + " " + "FAILED: " + r["error"][:160].replace("|", "/")).strip() if "error" in r else extra
        lines.append("| " + " | ".join(fmt(r.get(k)) for k in ("model", "split", "level", "seg_acc", "seg_f1",
                     "song_acc", "song_f1", "eer", "train_s", "wall_s")) + f" | {extra} |")  # fmt: skip
    saved = RESULTS / "real_voices_singers.json"
    singer_rows = singer_rows or (json.loads(saved.read_text()) if saved.exists() else [])
    if singer_rows:
        lines += ["", "Singers set, leave one recording out, nearest singer centroid (cosine), top-1:", "",
                  "| extractor | variant | queries | accuracy |", "|---|---|---|---|"]
        lines += [f"| {r['extractor']} | {r['variant']} | {r['queries']} | {r['accuracy']:.3f} |" for r in singer_rows]
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.md").write_text(text)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"pipeline": rows, "singers": singer_rows}, indent=1))
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", nargs="+", default=["normal", "hard"], choices=[*LEVELS, "demo"],
                        help="'demo': the default demo library instead (its synthetic voices: training times)")
    parser.add_argument("--models", nargs="+",
                        default=["voice_embedding", "classical", "voice_fusion", "crnn", "speaker_net", "reconet",
                                 "samplecnn", "resnet_gru"])
    parser.add_argument("--epochs", type=int, help="train.epochs for the networks (default: params.yaml's)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/reconet-real-voices"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--readers", type=int, default=10, help="the first N readers only (their songs are the same)")
    parser.add_argument("--skip-build", action="store_true", help="reuse the libraries already in --work")
    parser.add_argument("--skip-singers", action="store_true")
    parser.add_argument("--singers-only", action="store_true")
    parser.add_argument("--check-music", action="store_true", help="only: does the music hold vocals?")
    parser.add_argument("--singer-extractors", nargs="+", default=SINGER_EXTRACTORS, choices=SINGER_EXTRACTORS)
    parser.add_argument("--append", action="store_true",
                        help="keep the saved rows of the other models and levels in the report")
    parser.add_argument("--report", default="real_voices", help="results file stem under benchmarks/results/")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="params.yaml values for these runs, e.g. models.resnet_gru.width_divisor=4 (YAML)")
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.set)}
    started, work = time.perf_counter(), args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    note = (f"Work folder {work}; {args.readers} readers x 6 songs; epochs for the networks: "
            f"{args.epochs or 'params.yaml'}.")
    singer_rows = [] if args.skip_singers else None
    saved = RESULTS / f"{args.report}.json"
    rerun = {(m, lv) for m in args.models for lv in args.levels}
    rows: list[dict] = [r for r in json.loads(saved.read_text())["pipeline"] if (r["model"], r["level"]) not in rerun] \
        if args.append and saved.exists() else []  # fmt: skip
    if args.check_music:
        (RESULTS / "real_voices_music.json").write_text(json.dumps(check_music(work), indent=1))
        return
    if args.singers_only:  # beside a pipeline run: its own file, which the pipeline's report picks up
        singer_rows = singers(work, args.singer_extractors)
        saved_singers = RESULTS / "real_voices_singers.json"  # rows of the other extractors stay
        old = json.loads(saved_singers.read_text()) if saved_singers.exists() else []
        singer_rows = [r for r in old if r["extractor"] not in args.singer_extractors] + singer_rows
        (RESULTS / "real_voices_singers.json").write_text(json.dumps(singer_rows, indent=1))
        kept = json.loads(saved.read_text())["pipeline"] if saved.exists() else []  # the pipeline's rows stay
        print(write_report(kept, singer_rows, note, args.report))
        return
    if not args.skip_build and set(args.levels) - {"demo"}:
        build(work, [lv for lv in args.levels if lv != "demo"], args.seed, args.readers)
    if "demo" in args.levels and not (work / "library-demo").is_dir():
        subprocess.run([RECONET, "demo-library", str(work / "library-demo")], check=True)
    prepared: set = set()
    for model in args.models:  # the fast models first, for every level
        for level in args.levels:
            rows += [{**row, **({"overrides": overrides} if overrides else {})}
                     for row in run_model(work, level, model, args.epochs, prepared, overrides)]  # fmt: skip
            write_report(rows, singer_rows or [], note, args.report)
    if singer_rows is None:
        singer_rows = singers(work, args.singer_extractors)
    print(write_report(rows, singer_rows, note + f" Total {time.perf_counter() - started:.0f} s.", args.report))


if __name__ == "__main__":
    main()
