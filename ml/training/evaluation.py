"""Evaluating a vocalist classifier the way the five reports do.

At segment level and at song level (majority vote of the clips' predictions, and the arg-max of
their mean probabilities): accuracy; macro and weighted precision, recall and F1; the one-vs-all
table per artist (accuracy, precision, recall, F1 of "is it this artist?"); the confusion matrix;
the top-K accuracy curve for K = 1…N; a t-SNE map of the penultimate-layer embeddings; and the
sample-level report's error analysis: error rate per over-genre, and the share of errors whose
predicted artist shares an over-genre with the true one.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support  # noqa: E402

from ml.clips.loader import SegmentDataset, make_loader, model_input  # noqa: E402
from ml.tables import atomic_path, write_text  # noqa: E402


@dataclass
class Predictions:
    probabilities: np.ndarray  # (N, classes)
    embeddings: np.ndarray  # (N, embedding size)
    labels: np.ndarray  # (N,)
    track_ids: list[str]
    genres: list[str | None]
    classes: list[str]


@torch.inference_mode()
def predict(model: torch.nn.Module, dataset: SegmentDataset, device: torch.device, batch_size: int = 64,
            log_mel: torch.nn.Module | None = None, precision: torch.dtype = torch.float32) -> Predictions:  # fmt: skip
    """Class probabilities and embeddings of every clip (raw clips need ``log_mel``), the network
    computing in ``precision`` (``ml/device.py``; the log-mels stay float32)."""
    from ml.device import autocast
    from ml.models import embed

    model.eval()
    probabilities, embeddings = [], []
    for batch in make_loader(dataset, batch_size):
        inputs = model_input(batch, device, log_mel)
        with autocast(device, precision):
            embedding = embed(model, *inputs)
            logits = model.classifier(embedding)
        probabilities.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        embeddings.append(embedding.float().cpu().numpy())
    table = dataset.table
    genres = table.column("over_genre").to_pylist() if "over_genre" in table.column_names else [None] * len(dataset)
    return Predictions(
        probabilities=np.concatenate(probabilities) if probabilities else np.zeros((0, len(dataset.classes))),
        embeddings=np.concatenate(embeddings) if embeddings else np.zeros((0, 1)),
        labels=dataset.labels.numpy(),
        track_ids=table.column("track_id").to_pylist(),
        genres=genres,
        classes=dataset.classes,
    )


def _scores(truth: np.ndarray, predicted: np.ndarray, probabilities: np.ndarray, n_classes: int) -> dict[str, float]:
    labels = list(range(n_classes))
    scores = {"accuracy": float(np.mean(truth == predicted)) if len(truth) else 0.0, "count": int(len(truth)),
              "macro_true_probability": macro_true_probability(truth, probabilities)}  # fmt: skip
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(truth, predicted, labels=labels, average=average,
                                                     zero_division=0)  # fmt: skip
        scores.update({f"{average}_precision": float(p), f"{average}_recall": float(r), f"{average}_f1": float(f)})
    return scores


def macro_true_probability(truth: np.ndarray, probabilities: np.ndarray) -> float:
    """The probability given to the true artist, averaged per artist, then over the artists: 1 / the
    number of artists for any model that ignores its input (a constant answer, however peaked), so,
    unlike accuracy on a handful of songs, a continuous figure a broken model cannot beat by luck."""
    if not len(truth):
        return 0.0
    given = probabilities[np.arange(len(truth)), truth]
    return float(np.mean([given[truth == c].mean() for c in np.unique(truth)]))


def one_vs_all(truth: np.ndarray, predicted: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    rows = []
    for i, name in enumerate(classes):
        t, p = truth == i, predicted == i
        tp, tn = int(np.sum(t & p)), int(np.sum(~t & ~p))
        precision = tp / max(int(p.sum()), 1)
        recall = tp / max(int(t.sum()), 1)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"artist": name, "support": int(t.sum()), "accuracy": (tp + tn) / max(len(truth), 1),
                     "precision": precision, "recall": recall, "f1": f1})  # fmt: skip
    return rows


def top_k_curve(truth: np.ndarray, probabilities: np.ndarray) -> list[float]:
    """Accuracy@K for K = 1…classes: the true artist among the K most probable."""
    if not len(truth):
        return []
    ranks = (probabilities > probabilities[np.arange(len(truth)), truth][:, None]).sum(axis=1)
    return [float(np.mean(ranks < k)) for k in range(1, probabilities.shape[1] + 1)]


def song_level(pred: Predictions) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per song: (truth, majority-vote prediction, mean-probability prediction) and mean probabilities."""
    by_track: dict[str, list[int]] = defaultdict(list)
    for i, track in enumerate(pred.track_ids):
        by_track[track].append(i)
    truth, majority, mean_prob, probabilities = [], [], [], []
    for rows in by_track.values():
        votes = Counter(pred.probabilities[rows].argmax(axis=1).tolist())
        top = max(votes.values())  # ties go to the most probable on average among the tied
        mean = pred.probabilities[rows].mean(axis=0)
        tied = [c for c, n in votes.items() if n == top]
        majority.append(max(tied, key=lambda c: mean[c]))
        mean_prob.append(int(mean.argmax()))
        truth.append(int(pred.labels[rows[0]]))
        probabilities.append(mean)
    return {"truth": np.array(truth), "majority": np.array(majority), "mean_probability": np.array(mean_prob),
            "probabilities": np.array(probabilities).reshape(-1, len(pred.classes))}  # fmt: skip


def genre_errors(pred: Predictions, predicted: np.ndarray) -> dict[str, Any]:
    """Error rate per over-genre; share of errors whose predicted artist shares an over-genre with
    the true artist (the sample-level report's analysis)."""
    artist_genres: dict[int, set] = defaultdict(set)
    for label, genre in zip(pred.labels.tolist(), pred.genres, strict=True):
        if genre:
            artist_genres[label].add(genre)
    per_genre: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    shared = errors = 0
    for truth, guess, genre in zip(pred.labels.tolist(), predicted.tolist(), pred.genres, strict=True):
        per_genre[genre or "unknown"][1] += 1
        if truth != guess:
            per_genre[genre or "unknown"][0] += 1
            errors += 1
            shared += bool(artist_genres[truth] & artist_genres[guess])
    return {"error_rate_by_genre": {g: e / n for g, (e, n) in sorted(per_genre.items())},
            "errors": errors, "errors_within_genre_share": shared / errors if errors else 0.0}  # fmt: skip


@dataclass
class Report:
    metrics: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


def _plot_confusion(matrix: np.ndarray, classes: list[str], title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(classes), 1 + 0.55 * len(classes)), dpi=110)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def evaluate(pred: Predictions, out_dir: Path, title: str, seed: int = 0) -> Report:
    """Every metric and figure for one test set, written under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(pred.classes)
    predicted = pred.probabilities.argmax(axis=1) if len(pred.labels) else np.zeros(0, int)
    songs = song_level(pred)
    metrics: dict[str, Any] = {
        "segment": _scores(pred.labels, predicted, pred.probabilities, n),
        "song_majority": _scores(songs["truth"], songs["majority"], songs["probabilities"], n),
        "song_mean_probability": _scores(songs["truth"], songs["mean_probability"], songs["probabilities"], n),
        "top_k_segment": top_k_curve(pred.labels, pred.probabilities),
        "top_k_song": top_k_curve(songs["truth"], songs["probabilities"]),
        **genre_errors(pred, predicted),
    }
    table = one_vs_all(pred.labels, predicted, pred.classes)
    metrics["one_vs_all"] = table
    files = {}
    csv = "artist,support,accuracy,precision,recall,f1\n" + "".join(
        f'"{r["artist"]}",{r["support"]},{r["accuracy"]:.4f},{r["precision"]:.4f},{r["recall"]:.4f},{r["f1"]:.4f}\n'
        for r in table
    )
    files["per_artist"] = write_text(csv, out_dir / "per_artist.csv")
    matrix = confusion_matrix(pred.labels, predicted, labels=list(range(n)))
    files["confusion"] = _plot_confusion(matrix, pred.classes, f"{title}: segments", out_dir / "confusion.png")
    song_matrix = confusion_matrix(songs["truth"], songs["mean_probability"], labels=list(range(n)))
    files["confusion_song"] = _plot_confusion(song_matrix, pred.classes, f"{title}: songs",
                                              out_dir / "confusion_song.png")  # fmt: skip
    metrics["confusion"] = matrix.tolist()
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=110)
    ks = list(range(1, n + 1))
    for name, curve in (("segments", metrics["top_k_segment"]), ("songs", metrics["top_k_song"])):
        if curve:
            ax.plot(ks, curve, marker="o", label=name)
    ax.set(xlabel="K", ylabel="top-K accuracy", title=f"{title}: top-K", ylim=(0, 1.02))
    ax.legend()
    fig.tight_layout()
    files["top_k"] = _save(fig, out_dir / "top_k.png")
    files["top_k_csv"] = write_text("k,segment,song\n" + "".join(
        f"{k},{s:.4f},{g:.4f}\n" for k, s, g in zip(ks, metrics["top_k_segment"], metrics["top_k_song"], strict=False)
    ), out_dir / "top_k.csv")  # fmt: skip
    if len(pred.labels) >= 5:
        from sklearn.manifold import TSNE

        points = TSNE(perplexity=min(30.0, (len(pred.labels) - 1) / 3), random_state=seed,
                      init="pca").fit_transform(pred.embeddings)  # fmt: skip
        fig, ax = plt.subplots(figsize=(6, 5), dpi=110)
        for i, name in enumerate(pred.classes):
            mask = pred.labels == i
            ax.scatter(points[mask, 0], points[mask, 1], s=12, label=name)
        ax.set_title(f"{title}: t-SNE of the embeddings")
        ax.legend(fontsize=7, markerscale=1.5)
        fig.tight_layout()
        files["tsne"] = _save(fig, out_dir / "tsne.png")
    files["metrics"] = write_text(json.dumps(metrics, indent=1), out_dir / "metrics.json")
    return Report(metrics, files)
