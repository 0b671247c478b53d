"""Who sings a recording: ``reconet identify``, and what the registered model's ``predict`` runs.

A recording is decoded and separated (the torch backend, into the project's stem cache, keyed by
the file's content), cut into clips with the parameters the model was trained with (its bundle's
``preprocessing``), and each clip is classified. The song's ranking is the clips' mean
probability; the answer is the best-scoring singer's reference (enrolled singers included) when its
cosine score reaches the model's open-set threshold, "unknown singer" when it does not. An
embedding model's references are in its back-end's space; a network's in its penultimate layer's,
standardised (``model_run.network_open_set``); a network trained before that was kept answers its
most probable singer. A recording without singing answers
"no vocals found"; one that cannot be decoded gets an error naming it and the reason.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml import config
from ml.identification import open_set

log = logging.getLogger(__name__)

BUNDLE_FILES = ("backend.skops", "model.safetensors", "references.safetensors")  # beside bundle.json, when present
INSTRUMENTAL_RULE = ("silent_below_dbfs", "vocal_frame_db", "vocal_frame_floor_db", "vocal_frame_floor_dbfs",
                     "min_vocal_fraction")  # fmt: skip
Progress = Callable[[str, float, float | None], None]  # (stage, done, total)


def top_k_of(params: dict[str, Any]) -> int:
    """How many singers a result lists (``identify.top_k``)."""
    top_k = int((params.get("identify") or {}).get("top_k", 5))
    if top_k < 1:
        raise ValueError(f"identify.top_k must be at least 1, not {top_k}")
    return top_k


class NoVocals(ValueError):
    """The recording holds no singing to identify (instrumental, silent, or too little voice)."""


def preprocessing(params: dict[str, Any], paths: config.Paths) -> dict[str, Any]:
    """What a model's clips are made with, recorded in its bundle so that identification cuts a new
    recording the same way: the segment and feature parameters, the separation model's id (its
    checkpoint's SHA-256) and the instrumental rule."""
    from ml.clips.features import FeatureParams
    from ml.clips.segmentation import SegmentParams
    from ml.separation.separation import SeparationParams, checkpoint_sha256

    rule = SeparationParams.from_params(params, backend="torch")
    separation = {"model": "spleeter 2stems", "checkpoint_sha256": checkpoint_sha256(paths.spleeter_checkpoint)}
    return {"segments": asdict(SegmentParams.from_params(params)),
            "features": asdict(FeatureParams.from_params(params)),
            "separation": {**separation, **{k: getattr(rule, k) for k in INSTRUMENTAL_RULE}}}  # fmt: skip


def preprocessing_of(info: dict[str, Any], params: dict[str, Any], paths: config.Paths) -> dict[str, Any]:
    """The model's recorded preprocessing; params.yaml's for a model recorded before it was kept."""
    return info.get("preprocessing") or preprocessing(params, paths)


@dataclass
class RecordingClips:
    clips: np.ndarray  # (N, samples) float32 at the segments' sample rate
    spans: list[tuple[float, float]]  # each clip's (start, end) in seconds of the recording
    duration_s: float
    separation_s: float  # seconds spent decoding and separating (0 when the stems were cached)
    embeddings: np.ndarray | None = None  # an embedding model's clip embeddings, when already computed


def recording_clips(path: Path, prep: dict[str, Any], params: dict[str, Any], paths: config.Paths, device,
                    logger=None, on_progress: Progress | None = None) -> RecordingClips:  # fmt: skip
    """The vocal clips of one recording, cut as the pipeline cuts a song. Raises FileNotFoundError,
    ValueError (cannot be decoded, or a different separation model) or :class:`NoVocals`."""
    from ml.audio import load_audio, probe_duration, to_mono
    from ml.clips.segmentation import SegmentParams, cut_clips, pack
    from ml.separation.separation import (
        SeparationInput,
        SeparationParams,
        checkpoint_sha256,
        separate_with_torch,
        stem_cache,
        vocal_active_fraction,
    )

    logger = logger or log
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as f:
        track_id = f"recording-{hashlib.file_digest(f, 'sha256').hexdigest()[:32]}"
    sha = checkpoint_sha256(paths.spleeter_checkpoint)
    trained_on = prep["separation"]["checkpoint_sha256"]
    if sha != trained_on:
        raise ValueError(f"the model was trained on stems of separation model {trained_on[:12]}, "
                         f"this project has {sha[:12]} ({paths.spleeter_checkpoint})")  # fmt: skip
    settings = SeparationParams(**{**asdict(SeparationParams.from_params(params, backend="torch")),
                                   **{k: prep["separation"][k] for k in INSTRUMENTAL_RULE}})  # fmt: skip
    cache = stem_cache(paths.vocals, settings, sha, device)
    started = time.perf_counter()
    if cache.get(track_id) is None:
        total, done = probe_duration(path), 0.0

        def separated(_: str, seconds: float) -> None:
            nonlocal done
            done += seconds
            if on_progress:
                on_progress("separating", done, total)

        failures = separate_with_torch([SeparationInput(track_id, path.resolve())], cache, paths.spleeter_weights,
                                       device, settings, logger=logger, on_progress=separated)  # fmt: skip
        if failures:
            detail = failures[0].detail.removeprefix(f"{path.resolve()}: ")
            raise ValueError(f"{path}: {failures[0].reason}: {detail}")
    separation_s = time.perf_counter() - started
    entry = cache.get(track_id)
    if entry.meta["duration_s"] <= 0:
        raise ValueError(f"{path}: empty: decodes to no audio")
    if entry.meta["mix_dbfs"] < settings.silent_below_dbfs:
        raise NoVocals(f"{path}: no vocals found (the whole recording is at {entry.meta['mix_dbfs']:.0f} dBFS)")
    active = vocal_active_fraction(entry, settings)
    if active < settings.min_vocal_fraction:
        raise NoVocals(f"{path}: no vocals found (a voice is audible in {active:.1%} of it: an instrumental)")
    segments = SegmentParams(**prep["segments"])
    vocals = to_mono(load_audio(entry.vocals, segments.sample_rate, stereo=False))
    cut, _ = cut_clips(vocals, segments)
    if not cut:
        raise NoVocals(f"{path}: no vocals found (no clip of voice in its separated vocals)")
    rate = segments.sample_rate
    return RecordingClips(pack(vocals, cut, segments.clip_samples).astype(np.float32) / 32767,
                          [(c.start / rate, c.end / rate) for c in cut], entry.meta["duration_s"], separation_s)


class Identifier:
    """A trained model, loaded once from its bundle's files (``backend.skops`` for an embedding
    model or ``model.safetensors`` for a network, and ``references.safetensors`` when it has
    references): classifies clips and names a recording's singer."""

    def __init__(self, info: dict[str, Any], files: dict[str, Path], device, precision=None) -> None:
        from ml.device import precision_from_params
        from ml.identification.backend import is_embedding_model

        self.info, self.device = info, torch.device(device)
        # what the networks compute in: given, or params.yaml's compute.precision (ml/device.py), so that
        # every caller (the champion rule's candidate, enrolment) computes as the bundle's loader does
        self.precision = precision or precision_from_params(config.load_params(), self.device)
        self.classes = [str(c) for c in info["classes"]]
        self.embedding_model = is_embedding_model(info["model"])
        if self.embedding_model:
            from ml.identification.backend import load_backend
            from ml.training.embedding_run import embedder_for

            self.embedder, _ = embedder_for(info, self.device, self.precision)
            self.backend = load_backend(files["backend.skops"])
            self.order = [[str(c) for c in self.backend.classes_].index(c) for c in self.classes]
        else:
            from safetensors.torch import load_file

            from ml.clips.features import FeatureParams, LogMel
            from ml.models import build_model

            features = FeatureParams(**info["preprocessing"]["features"])
            self.network = build_model(info["model"], len(self.classes), info["n_mels"], info["model_options"])
            self.network.load_state_dict(load_file(str(files["model.safetensors"])))
            self.network.eval().to(self.device)
            self.log_mel = LogMel(features).to(self.device)
        self.references, self.normaliser = {}, open_set.Normaliser.unit_only()
        if "references.safetensors" in files:
            from ml.training.embedding_run import load_normaliser, load_references

            self.references = load_references(files["references.safetensors"])
            self.normaliser = load_normaliser(files["references.safetensors"])  # a network's standardisation

    @classmethod
    def from_folder(cls, folder: Path, info: dict[str, Any], device, precision=None) -> Identifier:
        """From a trained model's folder (``data/models/<kind>/<run>/``)."""
        return cls(info, {n: folder / n for n in BUNDLE_FILES if (folder / n).exists()}, device, precision)

    @torch.inference_mode()
    def classify(self, clips: np.ndarray, batch_size: int = 32, embeddings: np.ndarray | None = None,
                 ) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
        """(each clip's probability per singer (N, classes), in ``classes`` order; the clips'
        vectors in the references' space, or None without references). An embedding model takes
        the clips' ``embeddings`` when they were computed already (the pipeline's cache)."""
        audio = torch.from_numpy(np.ascontiguousarray(clips, np.float32))
        if self.embedding_model:
            from ml.identification.backend import probabilities, transform

            x = self.embedder.embed(audio, batch_size) if embeddings is None else embeddings
            return probabilities(self.backend, x)[:, self.order], transform(self.backend, x)
        from ml.device import autocast
        from ml.models import embed, needs_audio

        out, vectors = [], []
        for start in range(0, len(audio), batch_size):
            batch = audio[start : start + batch_size].to(self.device)
            log_mel = self.log_mel(batch)  # float32
            # as evaluation's predict: the penultimate layer, then the classifier
            with autocast(self.device, self.precision):
                embedding = embed(self.network, log_mel, batch if needs_audio(self.network) else None)
                scores = self.network.classifier(embedding)
            out.append(torch.softmax(scores.float(), dim=1).cpu().numpy())
            vectors.append(embedding.float().cpu().numpy())
        if not self.references:  # a network trained before its references were kept
            return np.concatenate(out), None
        return np.concatenate(out), self.normaliser(np.concatenate(vectors))

    def song_vector(self, vectors: np.ndarray) -> np.ndarray:
        """A recording's reference vector: the unit-length mean of its clips' unit vectors."""
        return open_set.mean_direction(open_set.Normaliser.unit_only()(vectors))

    def open_set_answer(self, vectors: np.ndarray) -> dict[str, Any]:
        """Every reference's cosine score for the recording, best first, and the answer: the best
        singer, or None ("unknown singer") when that score is below the open-set threshold."""
        names, scores = open_set.score(self.song_vector(vectors)[None], self.references)
        ranking = sorted(zip(names, scores[0].tolist(), strict=True), key=lambda x: -x[1])
        threshold = (self.info.get("open_set") or {}).get("threshold")
        known = threshold is None or ranking[0][1] >= threshold
        return {"singer": ranking[0][0] if known else None, "score": ranking[0][1], "threshold": threshold,
                "ranking": ranking}  # fmt: skip

    def identify(self, clips: RecordingClips, top_k: int = 5) -> dict[str, Any]:
        """The answer for one recording's clips: top-K singers by mean probability, the per-clip
        timeline, and the open-set answer."""
        started = time.perf_counter()
        probabilities, vectors = self.classify(clips.clips, embeddings=clips.embeddings)
        song = probabilities.mean(axis=0)
        best = np.argsort(-song)[:top_k]
        result: dict[str, Any] = {"top_k": [{"singer": self.classes[i], "probability": float(song[i])} for i in best]}
        if self.references and vectors is not None:
            answer = self.open_set_answer(vectors)
            result.update(singer=answer["singer"], unknown=answer["singer"] is None, score=answer["score"],
                          threshold=answer["threshold"],
                          references=[{"singer": n, "score": s} for n, s in answer["ranking"][:top_k]])  # fmt: skip
            # who sings when, by the same rule as the answer: each clip against the references
            names, scores = open_set.score(open_set.Normaliser.unit_only()(vectors), self.references)
            threshold = answer["threshold"]
            per_clip = [(names[j] if threshold is None or row[j] >= threshold else None, float(row[j]))
                        for row, j in zip(scores, scores.argmax(axis=1), strict=True)]  # fmt: skip
        else:  # no references (a network): its most probable singer, no open-set rule
            result.update(singer=self.classes[best[0]], unknown=False, score=float(song[best[0]]), threshold=None,
                          references=[])  # fmt: skip
            per_clip = [(self.classes[int(p.argmax())], float(p.max())) for p in probabilities]
        result["timeline"] = [{"start_s": round(s, 2), "end_s": round(e, 2), "singer": name, "confidence": confidence}
                              for (s, e), (name, confidence) in zip(clips.spans, per_clip, strict=True)]  # fmt: skip
        result["classification_s"] = time.perf_counter() - started
        return result


def identify_recording(identifier: Identifier, source: Path | bytes, params: dict[str, Any], paths: config.Paths,
                       top_k: int = 5, name: str | None = None, on_progress: Progress | None = None,
                       logger=None) -> dict[str, Any]:  # fmt: skip
    """One recording (a path, or the bytes of an encoded file) identified: a result with ``status``
    ``ok``, ``no_vocals`` or ``error`` (with the reason); never raises for a bad recording. Bytes
    go to a temporary file under a fixed name (never one taken from the upload) and are removed."""
    started = time.perf_counter()
    label = name or (str(source) if not isinstance(source, bytes | bytearray) else "upload")
    result: dict[str, Any] = {"file": label, "status": "ok", "singer": None, "unknown": False, "score": None,
                              "threshold": None, "top_k": [], "references": [], "timeline": [], "clips": 0,
                              "duration_s": None, "error": None}  # fmt: skip
    prep, path = identifier.info["preprocessing"], Path(label)
    try:
        with tempfile.TemporaryDirectory(prefix="reconet-identify-") as tmp:
            if isinstance(source, bytes | bytearray):
                path = Path(tmp) / "recording"
                path.write_bytes(source)
            else:
                path = Path(source)
            clips = recording_clips(path, prep, params, paths, identifier.device, logger, on_progress)
        if on_progress:
            on_progress("classifying", 0, len(clips.clips))
        result.update(identifier.identify(clips, top_k), clips=len(clips.clips), duration_s=clips.duration_s,
                      separation_s=clips.separation_s)  # fmt: skip
    except NoVocals as exc:
        result.update(status="no_vocals", error=_without(str(exc), path, label))
    except (OSError, ValueError, RuntimeError) as exc:
        result.update(status="error", error=_without(str(exc), path, label))
    result["seconds"] = time.perf_counter() - started
    return result


def _without(message: str, path: Path, label: str) -> str:
    """The message naming the recording by ``label`` (an upload's temporary path is not news)."""
    return message.replace(str(path.resolve()), label).replace(str(path), label)


def result_text(result: dict[str, Any]) -> str:
    """``reconet identify``'s plain-text report of one result."""
    name = result["file"]
    reason = (result["error"] or "").removeprefix(f"{name}: ")
    if result["status"] == "error":
        return f"{name}: error: {reason}"
    if result["status"] == "no_vocals":
        return f"{name}: {reason}"
    if result["unknown"]:
        best = result["references"][0]
        head = (f"{name}: unknown singer (closest: {best['singer']}, score {best['score']:.2f} "
                f"< threshold {result['threshold']:.2f})")  # fmt: skip
    else:
        rule = f", score {result['score']:.2f} >= threshold {result['threshold']:.2f}" if result["threshold"] else ""
        head = f"{name}: {result['singer']}{rule}"
    lines = [head]
    if result["references"]:
        lines.append("  scores (cosine to each reference): "
                     + ", ".join(f"{r['singer']} {r['score']:.2f}" for r in result["references"]))  # fmt: skip
    clips = result["clips"]
    lines.append(f"  top {len(result['top_k'])} of the trained singers (mean probability over {clips} clips):")
    lines += [f"    {i}. {t['singer']:<24} {t['probability']:.3f}" for i, t in enumerate(result["top_k"], 1)]
    lines.append("  timeline (each clip: " + ("its best reference, score)" if result["references"]
                                              else "its most probable singer, probability)"))  # fmt: skip
    lines += [f"    {_clock(c['start_s'])}-{_clock(c['end_s'])}  {c['singer'] or 'unknown':<24} {c['confidence']:.2f}"
              for c in result["timeline"]]  # fmt: skip
    return "\n".join(lines)


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"
