"""Song re-identification against the Chromaprint anchor (issue 15, point 4).

Songs: the jamendo songs of ``../shared/real-audio/jamendo``, the real music that Debian packages
ship (``asc-music``, ``singularity-music``, ``hyperrogue-music``, ``drascula-music``: fetched with
``apt-get download`` into ``<work>/cache`` and unpacked there, duplicates dropped by content), and
the demo library (``reconet demo-library --size small``). A fixed share of them is left out of the
index: their excerpts measure the false-accept rate.

Queries: for every indexed song, an excerpt of 3, 5 and 10 s at a seeded random offset, clean and
transformed (pitch ±1 semitone and tempo ±5 % with ffmpeg's asetrate/atempo, pink noise at 10 dB
SNR, MP3 at 64 kbps, a telephone band-pass 300–3400 Hz at 8 kHz); the same for the left-out songs.
Each goes to reconet's index (``ml/identification/song_id.py``, each embedding) and to Chromaprint:
``fpcalc -raw`` fingerprints of the full songs and of the excerpt, matched by the bit-error rate of
the 32-bit sub-fingerprints at the best alignment, accepted below a bit-error rate calibrated per
excerpt length as reconet's threshold is, on the index alone (the 1 % quantile of the best
bit-error rate of runs of each song's own fingerprint against the other songs, its copies in
reconet's duplicate groups left out with it), or ``--chromaprint-ber``. "nearest" (reconet):
its best song is right, whatever its threshold says.

Also: index build seconds per hour of audio, and query milliseconds as the index grows from 100 to
10,000 songs' worth of entries (the real entries plus perturbed copies of them), on 2 threads.

    nice -n 19 .venv/bin/python benchmarks/song_id.py [--work /tmp/song-id] [--quick]

Writes ``benchmarks/results/song_id.md`` and ``song_id.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ml.identification import song_id  # noqa: E402

JAMENDO = Path("/work/shared/real-audio/jamendo/mp3")
PACKAGES = {
    "asc-music": "usr/share/games/asc/music",
    "singularity-music": "usr/share/games/singularity/music",
    "hyperrogue-music": "usr/share/hyperrogue/music",
    "drascula-music": "usr/share/scummvm/drascula",
}
RESULTS = ROOT / "benchmarks" / "results"
SR = 16000
LENGTHS = (3.0, 5.0, 10.0)
TRANSFORMS = ("clean", "pitch +1", "pitch -1", "tempo +5%", "tempo -5%", "pink 10 dB", "mp3 64k", "telephone")
SEMITONE = 2 ** (1 / 12)


def package_music(work: Path) -> list[tuple[str, Path]]:
    """(source, file) of the packages' music, fetched and unpacked under ``work/cache`` when missing."""
    cache = work / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    found = []
    for package, folder in PACKAGES.items():
        unpacked = cache / package
        if not unpacked.is_dir():
            subprocess.run(["apt-get", "download", package], cwd=cache, check=True, capture_output=True)
            deb = next(cache.glob(f"{package}_*.deb"))
            subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
        found += [(package, p) for p in sorted((unpacked / folder).rglob("*")) if p.suffix in (".ogg", ".mp3")]
    return found


def collect_songs(work: Path, quick: bool) -> list[dict]:
    """Every usable song (at least 30 s, decodable, distinct content) as {source, path, audio}."""
    from ml.catalogue.demo_library import generate_demo_library

    demo = work / "demo"
    if not demo.is_dir():
        generate_demo_library(demo, size="small")
    candidates = [("jamendo", p) for p in sorted(JAMENDO.glob("*.mp3"))] + package_music(work)
    audio_suffixes = (".mp3", ".flac", ".ogg", ".m4a", ".wav")
    candidates += [("demo", p) for p in sorted(demo.rglob("*")) if p.suffix in audio_suffixes]
    songs, seen = [], set()
    for source, path in candidates:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        try:
            audio = song_id.decode_mono(path, SR)
        except Exception as exc:  # noqa: BLE001 - a file the packages ship broken is skipped, named
            print(f"skipped {path}: {exc}", file=sys.stderr)
            continue
        if len(audio) < 30 * SR or np.abs(audio).max() < 1e-3:
            continue
        songs.append({"source": source, "path": path, "audio": audio, "name": f"{source}/{path.stem}"})
        if quick and len(songs) >= 24:
            break
    return songs


def ffmpeg_filter(audio: np.ndarray, args: list[str], rate_out: int = SR) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.wav", Path(tmp) / "out.wav"
        sf.write(src, audio, SR)
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), *args, "-ar", str(rate_out), "-ac", "1",
                        str(out)], check=True)  # fmt: skip
        return song_id.decode_mono(out, SR)


def transform(audio: np.ndarray, name: str, rng: np.random.Generator) -> np.ndarray:
    if name == "clean":
        return audio
    if name.startswith("pitch"):
        r = SEMITONE if "+" in name else 1 / SEMITONE
        return ffmpeg_filter(audio, ["-af", f"asetrate={SR * r:.3f},aresample={SR},atempo={1 / r:.6f}"])
    if name.startswith("tempo"):
        return ffmpeg_filter(audio, ["-af", f"atempo={1.05 if '+' in name else 0.95}"])
    if name.startswith("pink"):
        from ml.clips.augment.audio import pink_noise

        generator = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
        return pink_noise(torch.from_numpy(audio)[None], 10.0, generator)[0].numpy()
    if name.startswith("mp3"):
        with tempfile.TemporaryDirectory() as tmp:
            src, mp3 = Path(tmp) / "in.wav", Path(tmp) / "x.mp3"
            sf.write(src, audio, SR)
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), "-c:a", "libmp3lame", "-b:a", "64k",
                            str(mp3)], check=True)  # fmt: skip
            return song_id.decode_mono(mp3, SR)[: len(audio)]
    if name == "telephone":
        return ffmpeg_filter(audio, ["-af", "highpass=f=300,highpass=f=300,lowpass=f=3400,lowpass=f=3400",
                                     "-ar", "8000"], rate_out=8000)  # fmt: skip
    raise ValueError(name)


# ---------------------------------------------------------------- Chromaprint


def fingerprint(audio: np.ndarray) -> np.ndarray:
    """``fpcalc -raw`` of the audio: its 32-bit sub-fingerprints (about 8 a second)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.wav"
        sf.write(path, audio, SR)
        out = subprocess.run(["fpcalc", "-raw", "-length", "0", str(path)], capture_output=True, text=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("FINGERPRINT=")), "FINGERPRINT=")
    values = line.removeprefix("FINGERPRINT=")
    if not values:
        return np.zeros(0, np.uint32)
    return np.array([int(v) for v in values.split(",")], np.int64).astype(np.uint32)


def chromaprint_match(query: np.ndarray, references: list[np.ndarray]) -> tuple[int, float, float]:
    """(best song, its bit-error rate at the best alignment, the alignment in seconds)."""
    best = (-1, 1.0, 0.0)
    if len(query) == 0:
        return best
    for song, ref in enumerate(references):
        if len(ref) < len(query):
            continue
        windows = np.lib.stride_tricks.sliding_window_view(ref, len(query))
        errors = np.bitwise_count(windows ^ query[None]).sum(axis=1)
        at = int(errors.argmin())
        ber = float(errors[at]) / (32 * len(query))
        if ber < best[1]:
            best = (song, ber, at * 0.1238)
    return best


# ---------------------------------------------------------------- the run


def build_index(folder: Path, songs: list[dict], p: song_id.SongIndexParams, embedder) -> dict:
    """One release per source; returns the manifest with the embedding seconds."""
    started = time.perf_counter()
    by_source: dict[str, list[int]] = {}
    for i, s in enumerate(songs):
        by_source.setdefault(s["source"], []).append(i)
    for source, members in by_source.items():
        parts = [song_id.song_entries(songs[i]["audio"], embedder, p) for i in members]
        info = [{"track_id": str(i), "artist": songs[i]["source"], "title": songs[i]["path"].stem,
                 "genre": songs[i]["source"], "duration_s": len(songs[i]["audio"]) / SR} for i in members]  # fmt: skip
        entries = song_id.ReleaseEntries(
            source, embedder.identity, info, np.concatenate([v for v, _, _ in parts]),
            np.concatenate([np.full(len(v), j, np.int32) for j, (v, _, _) in enumerate(parts)]),
            np.concatenate([o for _, o, _ in parts]), np.concatenate([t for _, _, t in parts]),
            np.concatenate([np.full(len(t), j, np.int32) for j, (_, _, t) in enumerate(parts)]),
        )  # fmt: skip
        entries.save(song_id.release_file(folder, source))
    embed_s = time.perf_counter() - started
    manifest = song_id.sync_view(folder, list(by_source), p, embedder.identity)
    return {**manifest, "embed_s": embed_s, "total_build_s": time.perf_counter() - started}


def make_queries(songs: list[dict], indexed: list[int], unknown: list[int], rng: np.random.Generator) -> list[dict]:
    """Per song and transform, a 10 s excerpt at a random offset transformed once; the 3 and 5 s
    excerpts are its beginnings (so one ffmpeg run per song and transform)."""
    queries = []
    for role, members in (("known", indexed), ("unknown", unknown)):
        for i in members:
            audio = songs[i]["audio"]
            longest = max(LENGTHS)
            start = int(rng.integers(0, len(audio) - int((longest + 1) * SR)))
            excerpt = audio[start : start + int(longest * SR)]
            for name in TRANSFORMS:
                changed = transform(excerpt, name, rng).astype(np.float32)
                for length in LENGTHS:
                    queries.append({"song": i, "role": role, "length": length, "transform": name,
                                    "offset_s": start / SR, "audio": changed[: int(length * SR)]})  # fmt: skip
    return queries


def run_reconet(index: song_id.SongIndex, queries: list[dict], songs_in_index: list[int],
                copies: dict[int, set[int]]) -> list[dict]:  # fmt: skip
    """Each query's answer: ``correct`` when the index names its song (or a copy of it: ``copies``,
    its duplicate group) and accepts it (above the "not in the library" threshold), ``nearest`` when
    its best song is right whatever the threshold."""
    out = []
    for q in queries:
        r = index.identify(q["audio"])
        # the track id is the song's position among the indexed songs
        best = songs_in_index[int(r["candidates"][0]["track_id"])] if r["candidates"] else None
        found = best if r["in_library"] else None
        right = copies.get(q["song"], {q["song"]})
        out.append({"correct": found in right, "nearest": best in right, "accepted": r["in_library"],
                    "ms": r["query_ms"],
                    "offset_error_s": abs(r["offset_s"] - q["offset_s"]) if found in right else None})  # fmt: skip
    return out


FINGERPRINTS_PER_S = 1 / 0.1238  # fpcalc's sub-fingerprints per second


def calibrate_chromaprint(references: list[np.ndarray], far: float, rng: np.random.Generator,
                          groups: list[list[int]] = (), per_song: int = 4) -> dict[float, float]:  # fmt: skip
    """Per excerpt length, the bit-error rate below which a match is accepted, calibrated as
    reconet's threshold is (on the index alone): runs of each reference's own sub-fingerprints
    matched against the other references, the ``far`` quantile of their best bit-error rates.
    As in reconet's calibration, a song's copies (``groups``: reconet's duplicate groups, as
    positions in ``references``) are left out with it: a copy matches at a bit-error rate near 0
    and would otherwise set the threshold below every match."""
    copies = {i: set(g) for g in groups for i in g}
    thresholds = {}
    for length in LENGTHS:
        n = int(length * FINGERPRINTS_PER_S) - 2  # an excerpt's fingerprint is a little shorter than its span
        errors = []
        for i, ref in enumerate(references):
            others = [r for j, r in enumerate(references) if j != i and j not in copies.get(i, ())]
            for _ in range(per_song if len(ref) > n else 0):
                start = int(rng.integers(0, len(ref) - n))
                errors.append(chromaprint_match(ref[start : start + n], others)[1])
        thresholds[length] = float(np.quantile(errors, far)) if errors else 0.0
    return thresholds


def run_chromaprint(references: list[np.ndarray], queries: list[dict], indexed: list[int],
                    ber: dict[float, float], copies: dict[int, set[int]]) -> list[dict]:  # fmt: skip
    out = []
    for q in queries:
        started = time.perf_counter()
        song, error, at = chromaprint_match(fingerprint(q["audio"]), references)
        found = indexed[song] if song >= 0 and error < ber[q["length"]] else None
        right = copies.get(q["song"], {q["song"]})
        out.append({"correct": found in right, "accepted": found is not None,
                    "ms": (time.perf_counter() - started) * 1e3,
                    "offset_error_s": abs(at - q["offset_s"]) if found in right else None})  # fmt: skip
    return out


def same_recording(groups: list[list[int]], indexed: list[int]) -> dict[int, set[int]]:
    """Song (its number among all songs) -> the songs of its duplicate group (``groups``: positions
    among the indexed songs): naming any copy of the recording is a right answer, for either method."""
    return {indexed[i]: {indexed[j] for j in g} for g in groups for i in g}


def table_rows(queries: list[dict], results: dict[str, list[dict]]) -> list[dict]:
    rows = []
    for name in TRANSFORMS:
        for length in LENGTHS:
            cell = [i for i, q in enumerate(queries) if q["transform"] == name and q["length"] == length]
            known = [i for i in cell if queries[i]["role"] == "known"]
            unknown = [i for i in cell if queries[i]["role"] == "unknown"]
            row = {"transform": name, "length_s": length, "known": len(known), "unknown": len(unknown)}
            for method, res in results.items():
                row[f"{method} top1"] = float(np.mean([res[i]["correct"] for i in known]))
                if "nearest" in res[0]:  # reconet: the right song first, before the threshold
                    row[f"{method} nearest"] = float(np.mean([res[i]["nearest"] for i in known]))
                row[f"{method} FA"] = float(np.mean([res[i]["accepted"] for i in unknown])) if unknown else None
                row[f"{method} ms"] = float(np.median([res[i]["ms"] for i in cell]))
            rows.append(row)
    return rows


def scaling(index_folder: Path, p: song_id.SongIndexParams, embedder, queries: list[dict], songs_now: int,
            sizes: tuple[int, ...]) -> list[dict]:  # fmt: skip
    """Query ms (median, 2 threads available, 1 used per query) as the index holds ``sizes`` songs'
    worth of entries: the real entries plus perturbed copies (noise of the spread between a song's
    neighbouring excerpts), in one hnswlib index built with the same settings."""
    import hnswlib

    index = song_id.SongIndex(index_folder, embedder)
    with np.load(index_folder / index.manifest["generation"] / "entries.npz") as z:
        live = int((z["song"] >= 0).sum())
    real = np.asarray(index.index.get_items(index.index.get_ids_list()), np.float32)
    per_song = live / songs_now
    rng = np.random.default_rng(1)
    rows = []
    sample = [q for q in queries if q["transform"] == "clean" and q["length"] == 5.0][:50]
    query_vectors = []
    for q in sample:
        log_mel = song_id.song_log_mel(q["audio"], p)
        starts = song_id.window_starts(log_mel.shape[1], p.window_frames, p.frames(p.query_hop_s))
        query_vectors.append(embedder.embed(log_mel, starts))
    for n_songs in sizes:
        n = int(n_songs * per_song)
        extra = max(0, n - len(real))
        started = time.perf_counter()
        h = hnswlib.Index("ip", real.shape[1])
        h.init_index(max(n, len(real)), p.hnsw_m, p.hnsw_ef_construction, 0)
        h.set_num_threads(2)
        h.add_items(real)
        for start in range(0, extra, 200_000):
            m = min(200_000, extra - start)
            base = real[rng.integers(0, len(real), m)]
            noise = rng.standard_normal(base.shape).astype(np.float32) / np.sqrt(base.shape[1])
            noisy = song_id._unit(base + 0.35 * noise)
            h.add_items(noisy)
        build = time.perf_counter() - started
        h.set_ef(max(p.hnsw_ef_search, p.k))
        h.set_num_threads(1)
        times = []
        for v in query_vectors:
            t = time.perf_counter()
            h.knn_query(v, p.k)
            times.append((time.perf_counter() - t) * 1e3)
        rows.append({"songs": n_songs, "entries": max(n, len(real)), "build_s": build,
                     "search_ms": float(np.median(times))})  # fmt: skip
        print(f"scaling: {n_songs} songs ({max(n, len(real))} entries): build {build:.1f} s, "
              f"search {np.median(times):.2f} ms", flush=True)  # fmt: skip
        del h
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "reconet-song-id")
    parser.add_argument("--quick", action="store_true", help="24 songs, the pooled log-mel only, no scaling")
    parser.add_argument("--unknown-share", type=float, default=0.2)
    parser.add_argument("--chromaprint-ber", type=float, default=None,
                        help="accept a Chromaprint match below this bit-error rate (default: calibrated on the index "
                             "to song_index.false_accept_rate, as reconet's threshold is)")  # fmt: skip
    parser.add_argument("--embeddings", default="pooled_log_mel,autoencoder")
    parser.add_argument("--scaling", default="100,1000,10000")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    songs = collect_songs(args.work, args.quick)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(songs))
    n_unknown = max(2, round(args.unknown_share * len(songs)))
    unknown, indexed = sorted(order[:n_unknown].tolist()), sorted(order[n_unknown:].tolist())
    real = sum(1 for i in indexed if songs[i]["source"] != "demo")
    hours = sum(len(songs[i]["audio"]) for i in indexed) / SR / 3600
    print(f"{len(songs)} songs: {len(indexed)} indexed ({real} real, {hours:.2f} h), {len(unknown)} left out")
    queries = make_queries(songs, indexed, unknown, rng)
    print(f"{len(queries)} queries made ({time.perf_counter() - started:.0f} s)", flush=True)
    base = song_id.SongIndexParams()
    results, builds, genre, copies = {}, {}, {}, []
    for embedding in args.embeddings.split(",") if not args.quick else ["pooled_log_mel"]:
        p = replace(base, embedding=embedding)
        folder = args.work / f"index-{embedding}"
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        train_s = 0.0
        if embedding == "autoencoder":
            t = time.perf_counter()
            log_mels = [song_id.song_log_mel(songs[i]["audio"], p) for i in indexed]
            model, genres = song_id.train_autoencoder(log_mels, [songs[i]["source"] for i in indexed], p)
            weights = args.work / "autoencoder.safetensors"
            song_id.save_autoencoder(model, genres, p, weights)
            embedder = song_id.load_embedder(p, weights)
            train_s = time.perf_counter() - t
            print(f"autoencoder trained in {train_s:.0f} s", flush=True)
        else:
            embedder = song_id.load_embedder(p)
        manifest = build_index(folder, [songs[i] for i in indexed], p, embedder)
        if embedding == base.embedding:  # the default's duplicate groups, as positions among the indexed songs
            copies = [[int(manifest["songs"][s]["track_id"]) for s in g] for g in manifest["duplicates"]]
        builds[embedding] = {"seconds": manifest["total_build_s"], "per_hour": manifest["total_build_s"] / hours,
                             "ann_s": manifest["build_s"], "entries": manifest["live"], "train_s": train_s,
                             "threshold": manifest["threshold"], "index_bytes": manifest["index_bytes"]}  # fmt: skip
        index = song_id.SongIndex(folder, embedder)
        results[f"reconet {embedding}"] = run_reconet(index, queries, indexed, same_recording(copies, indexed))
        genre[embedding] = _genre_accuracy(index, queries, songs)
        print(f"{embedding}: built {builds[embedding]}", flush=True)
        partial = {"rows": table_rows(queries, results), "builds": builds, "genre": genre, "partial": True}
        RESULTS.mkdir(parents=True, exist_ok=True)
        # kept if a later step fails
        (RESULTS / "song_id.json").write_text(json.dumps(partial, indent=1, default=float))
        if embedding == "pooled_log_mel" and not args.quick:
            builds["scaling"] = scaling(folder, p, embedder, queries, len(indexed),
                                        tuple(int(x) for x in args.scaling.split(",")))  # fmt: skip
    t = time.perf_counter()
    references = [fingerprint(songs[i]["audio"]) for i in indexed]
    builds["chromaprint"] = {"seconds": time.perf_counter() - t, "per_hour": (time.perf_counter() - t) / hours}
    if args.chromaprint_ber is None:
        ber = calibrate_chromaprint(references, base.false_accept_rate, np.random.default_rng(2), copies)
    else:
        ber = dict.fromkeys(LENGTHS, args.chromaprint_ber)
    builds["chromaprint"]["ber_thresholds"] = ber
    print(f"chromaprint bit-error-rate thresholds: {ber}", flush=True)
    results["chromaprint"] = run_chromaprint(references, queries, indexed, ber, same_recording(copies, indexed))
    rows = table_rows(queries, results)
    summary = {"songs": len(songs), "indexed": len(indexed), "real_indexed": real, "unknown": len(unknown),
               "audio_hours": hours, "builds": builds, "genre": genre, "rows": rows,
               "seconds": time.perf_counter() - started}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "song_id.json").write_text(json.dumps(summary, indent=1, default=float))
    (RESULTS / "song_id.md").write_text(markdown(summary, list(results)))
    print(markdown(summary, list(results)))
    return 0


def _genre_accuracy(index: song_id.SongIndex, queries: list[dict], songs: list[dict]) -> dict:
    """The kNN vote's and the SVM's genre accuracy on the clean 5 s excerpts of the left-out songs
    (their genre here: the source they come from)."""
    knn, svm = [], []
    for q in queries:
        if q["role"] == "unknown" and q["transform"] == "clean" and q["length"] == 5.0:
            r = index.identify(q["audio"])
            knn.append(r["genre"] == songs[q["song"]]["source"])
            svm.append(r["genre_svm"] == songs[q["song"]]["source"])
    return {"knn": float(np.mean(knn)) if knn else None, "svm": float(np.mean(svm)) if svm else None, "n": len(knn)}


def markdown(summary: dict, methods: list[str]) -> str:
    lines = [f"{summary['indexed']} songs indexed ({summary['real_indexed']} real, {summary['audio_hours']:.2f} h of "
             f"audio), {summary['unknown']} left out for the false-accept rate; one excerpt per song, length and "
             "transform. top1: right song; FA: a left-out song's excerpt accepted; ms: median per query.",
             ""]  # fmt: skip
    columns = {m: ("top1", "nearest", "FA", "ms") if m.startswith("reconet") else ("top1", "FA", "ms") for m in methods}
    head = ["transform", "s"] + [f"{m} {x}" for m in methods for x in columns[m]]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["rows"]:
        cells = [r["transform"], f"{r['length_s']:g}"]
        for m in methods:
            fa = r[f"{m} FA"]
            nearest = [f"{r[f'{m} nearest']:.3f}"] if "nearest" in columns[m] else []
            cells += [f"{r[f'{m} top1']:.3f}", *nearest, "" if fa is None else f"{fa:.3f}", f"{r[f'{m} ms']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for name, b in summary["builds"].items():
        if name == "scaling":
            lines.append("Query time as the index grows (pooled log-mel; real entries plus perturbed copies):")
            lines.append("")
            lines += ["| songs' worth | entries | build s | search ms (median, 1 thread) |", "|---|---|---|---|"]
            lines += [f"| {s['songs']} | {s['entries']} | {s['build_s']:.1f} | {s['search_ms']:.3f} |" for s in b]
            lines.append("")
        else:
            more = (f"; {b['entries']} entries, {b['index_bytes'] / 2**20:.1f} MiB, threshold {b['threshold']:.3f}, "
                    f"training {b['train_s']:.0f} s") if "entries" in b else ""  # fmt: skip
            lines.append(f"- {name}: index build {b['seconds']:.1f} s, {b['per_hour']:.1f} s per hour of audio{more}")
    for name, g in summary["genre"].items():
        lines.append(f"- genre of left-out songs' clean 5 s excerpts ({name}): kNN vote {g['knn']}, SVM {g['svm']} "
                     f"(n={g['n']}; the genre is the song's source)")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
