"""Training a vocalist classifier on the segments: resumable, seeded, class-balanced.

Adam with weight decay 1e-6, ReduceLROnPlateau on the validation loss, early stopping on it (the
best epoch's weights are kept; neither acts during the first ``warmup_epochs``, while the batch-norm
statistics that evaluation uses are still settling), class-balanced sampling or loss weights, mixed
precision where ``compute.precision`` gives it (``ml/device.py``: bfloat16 autocast on a CPU with
bfloat16 units, float16 autocast with gradient scaling on CUDA; the weights stay float32).
The loss is the cross-entropy, or the model's own ``loss(scores, labels, weight=None)`` where it has one
(speaker_net's additive angular margin); validation always takes the cross-entropy of the scores.
Batches come from ``ml/clips/loader.py``: raw clips augmented on the device and turned into log-mels
there (``train.augment: true``), or the cached log-mels.

The same loop trains on one process or on several: ``train(..., parallel=...)`` takes how the work
is shared (:class:`SingleProcess` here; ``ml.training.distributed`` runs it with PyTorch DDP under ``torchrun``).

Every epoch ends with a checkpoint written atomically (``torch.save`` to a temporary file, then a
rename) holding the model, optimiser, scheduler, early-stopping state and history. Training started
again with the same configuration and data resumes after the last finished epoch; checkpoints are
loaded with ``weights_only=True``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ml import config
from ml.clips.features import FeatureParams, LogMel
from ml.clips.loader import SegmentDataset, make_loader, model_input
from ml.device import autocast, precision_from_params
from ml.models import build_model, logits, needs_audio
from ml.tables import atomic_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainParams:
    model: str = "crnn"
    split_kind: str = "song"  # which split trains the registered model
    split_kinds: tuple[str, ...] = ("song", "album")  # what `reconet run` trains and evaluates
    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-6
    lr_patience: int = 3  # epochs without a better validation loss before the rate drops
    lr_factor: float = 0.5
    early_stopping_patience: int = 8
    warmup_epochs: int = 10  # no learning-rate drop and no early stop before this (batch-norm statistics settle)
    balance: str = "sampler"  # sampler | loss | none
    augment: bool = True  # raw clips + on-device augmentation; false: cached log-mels
    mixed_precision: bool = True  # float16 autocast on CUDA when compute.precision is auto
    seed: int = 0
    model_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TrainParams:
        section = config.section(params, "train", cls)
        if section.get("balance", "sampler") not in ("sampler", "loss", "none"):
            raise ValueError("train.balance must be sampler, loss or none")
        if "split_kinds" in section:
            section["split_kinds"] = tuple(section["split_kinds"])
        if section.get("split_kind") == "kfold":
            raise ValueError("train.split_kind cannot be kfold: its folds cross-validate and are never registered "
                             "(ml/training/cross_validation.py); choose song, album or segment")  # fmt: skip
        name = section.get("model", cls.model)
        section["model_options"] = dict(params.get("models", {}).get(name, {}))
        return cls(**section)

    def digest(self, extra: dict[str, Any]) -> str:
        """Identity of a training run: everything that shapes its epochs. The epoch budget and the
        early-stopping patience are left out, so raising them resumes the same run."""
        shaping = {k: v for k, v in asdict(self).items() if k not in ("epochs", "early_stopping_patience",
                                                                     "split_kinds")}  # fmt: skip
        return hashlib.sha256(json.dumps({**shaping, **extra}, sort_keys=True, default=str).encode()).hexdigest()


def training_precision(params: dict[str, Any], device: torch.device) -> torch.dtype:
    """What training steps compute in (``compute.precision``; on CUDA, ``auto`` follows ``train.mixed_precision``).
    An embedding model trains no network: its frozen encoder embeds at the inference precision."""
    from ml.identification.backend import is_embedding_model

    settings = TrainParams.from_params(params)
    return precision_from_params(params, device, settings.mixed_precision and not is_embedding_model(settings.model))


def dataset_sources(model_name: str, augment: bool) -> tuple[str, str]:
    """(training source, evaluation source): raw clips where augmentation or the model needs them."""
    raw = needs_audio(model_name)
    return ("audio" if augment or raw else "features"), ("audio" if raw else "features")


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    learning_rate: float
    seconds: float


@dataclass
class TrainResult:
    model: nn.Module  # with the best epoch's weights, in eval mode
    classes: list[str]
    history: list[EpochMetrics]
    best_epoch: int
    resumed_from_epoch: int  # 0 when training started afresh
    stopped_early: bool


class Checkpointer:
    """One training run's checkpoint, replaced atomically after every epoch."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / "checkpoint.pt"

    def save(self, state: dict[str, Any]) -> None:
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=True)


class SingleProcess:
    """How :func:`train` shares its work: here, not at all. ``ml.training.distributed.DistributedTraining``
    overrides these for DDP: the model wrapped, each process given its share of every epoch, sums
    taken over all processes, and only rank 0 writing checkpoints and logging results."""

    rank = 0
    world_size = 1

    @property
    def writes(self) -> bool:
        """Whether this process writes the checkpoint and logs the results."""
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training steps call (the model itself, or its DDP wrapper)."""
        return model

    def loader(self, dataset: SegmentDataset, batch_size: int, shuffle: bool = False, balanced: bool = False,
               seed: int = 0):  # fmt: skip
        """This process's batches of ``dataset``: the whole epoch on one process. A training epoch
        (shuffled or balanced) drops a last batch of a single clip: batch norm cannot train on one
        (speechbrain's ECAPA raises), and the clip left out changes from epoch to epoch."""
        lone_last = (shuffle or balanced) and len(dataset) % batch_size == 1 and len(dataset) > 1
        return make_loader(dataset, batch_size, shuffle=shuffle, balanced=balanced, seed=seed, drop_last=lone_last)

    def sum(self, *values: float) -> list[float]:
        """``values`` summed over every process (loss sums, counts)."""
        return list(values)

    def end_epoch(self, model: nn.Module, epoch: int) -> None:
        """Called after an epoch's training steps, before validation."""


def _evaluate_loss(model: nn.Module, loader, device: torch.device, loss_fn: nn.Module, log_mel: nn.Module | None,
                   parallel: SingleProcess, precision: torch.dtype) -> tuple[float, float]:  # fmt: skip
    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    with torch.inference_mode():
        for batch in loader:
            inputs = model_input(batch, device, log_mel)  # log-mels in float32
            with autocast(device, precision):
                scores = logits(model, *inputs).float()
            labels = batch.labels.to(device)
            loss_sum += float(loss_fn(scores, labels)) * len(labels)
            correct += int((scores.argmax(1) == labels).sum())
            total += len(labels)
    loss_sum, correct, total = parallel.sum(loss_sum, correct, total)
    return loss_sum / max(total, 1), correct / max(total, 1)


def train(
    train_set: SegmentDataset,
    val_set: SegmentDataset,
    settings: TrainParams,
    features: FeatureParams,
    device: torch.device,
    checkpoint_dir: Path,
    augmenters: tuple[Callable | None, Callable | None] = (None, None),
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    logger: logging.Logger | Any = None,
    parallel: SingleProcess | None = None,
    precision: torch.dtype | None = None,
) -> TrainResult:
    """Train (or resume) until early stopping or ``settings.epochs``. ``train_set`` uses the
    ``audio`` source when augmenting or when the model takes raw clips; ``val_set`` the
    ``features`` source unless the model takes raw clips (see :func:`dataset_source`).
    ``parallel`` shares the epochs between processes (default: one process); only its writing
    process saves checkpoints, logs and calls ``on_epoch``. ``precision``: what the steps compute in
    (:func:`training_precision`; by default ``compute.precision`` auto on ``device``)."""
    logger = logger or log
    parallel = parallel or SingleProcess()
    classes = train_set.classes
    torch.manual_seed(settings.seed)
    model = build_model(settings.model, len(classes), features.n_mels, settings.model_options).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimiser, mode="min", factor=settings.lr_factor, patience=settings.lr_patience
    )
    counts = train_set.class_counts().double()
    weights = (counts.sum() / (len(counts) * counts.clamp_min(1))).float() if settings.balance == "loss" else None
    class_weights = weights.to(device) if weights is not None else None
    loss_fn: Callable = nn.CrossEntropyLoss(weight=class_weights)
    own_loss = getattr(model, "loss", None)  # a model's own training loss (speaker_net: additive angular margin)
    if callable(own_loss):
        loss_fn = functools.partial(own_loss, weight=class_weights)
    val_loss_fn = nn.CrossEntropyLoss()
    if precision is None:
        precision = precision_from_params({}, device, settings.mixed_precision)
    # float16 needs its gradients scaled; bfloat16 has float32's range and does not
    scaler = torch.amp.GradScaler("cuda", enabled=precision == torch.float16 and device.type == "cuda")
    log_mel = LogMel(features).to(device)
    audio_augment, spectrogram_augment = augmenters if settings.augment else (None, None)

    checkpointer = Checkpointer(checkpoint_dir)
    state = checkpointer.load()
    history: list[EpochMetrics] = []
    best = {"loss": float("inf"), "epoch": 0, "weights": None}
    stale, start_epoch, stopped_early = 0, 1, False
    if state is not None:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        history = [EpochMetrics(**h) for h in json.loads(state["history"])]
        best = {"loss": state["best_loss"], "epoch": state["best_epoch"], "weights": state["best_weights"]}
        stale = state["stale_epochs"]
        # judged again with today's patience: a run that ended on its epoch budget goes on when the
        # budget is raised, an early stop stays one unless the patience is raised
        stopped_early = stale >= settings.early_stopping_patience
        start_epoch = history[-1].epoch + 1 if history else 1
        if parallel.writes:
            logger.info(f"resuming from the checkpoint after epoch {start_epoch - 1} ({checkpointer.path})")
    resumed_from = start_epoch - 1
    net = parallel.wrap(model)  # after loading the checkpoint: DDP starts every process from rank 0's weights
    raw = needs_audio(model)  # asked of the model: a DDP wrapper does not tell
    val_loader = parallel.loader(val_set, settings.batch_size)

    for epoch in range(start_epoch, settings.epochs + 1):
        if stopped_early:
            break
        started = time.perf_counter()
        model.train()
        loader = parallel.loader(train_set, settings.batch_size, shuffle=True, balanced=settings.balance == "sampler",
                                 seed=settings.seed * 1000 + epoch)  # fmt: skip
        # augmentation draws: the same as ever on one process, different on each of several
        generator = torch.Generator(device=device).manual_seed(
            (settings.seed * 1000 + epoch) * parallel.world_size + parallel.rank
        )
        total, correct, loss_sum = 0, 0, 0.0
        for batch in loader:
            x, audio = model_input(batch, device, log_mel, audio_augment, spectrogram_augment, generator)
            labels = batch.labels.to(device)
            with autocast(device, precision):
                scores = net(x, audio) if raw else net(x)
                loss = loss_fn(scores.float(), labels)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            loss_sum += float(loss.detach()) * len(labels)
            correct += int((scores.detach().argmax(1) == labels).sum())
            total += len(labels)
        loss_sum, correct, total = parallel.sum(loss_sum, correct, total)
        parallel.end_epoch(model, epoch)
        val_loss, val_accuracy = _evaluate_loss(model, val_loader, device, val_loss_fn, log_mel, parallel, precision)
        warming_up = epoch <= settings.warmup_epochs
        if not warming_up:
            scheduler.step(val_loss)
        metrics = EpochMetrics(epoch, loss_sum / max(total, 1), correct / max(total, 1), val_loss, val_accuracy,
                               optimiser.param_groups[0]["lr"], time.perf_counter() - started)  # fmt: skip
        history.append(metrics)
        if val_loss < best["loss"] - 1e-4:
            best = {"loss": val_loss, "epoch": epoch, "weights": {k: v.detach().cpu().clone()
                                                                  for k, v in model.state_dict().items()}}  # fmt: skip
            stale = 0
        elif not warming_up:
            stale += 1
        stopped_early = stale >= settings.early_stopping_patience
        if not parallel.writes:  # every process reached the same decisions; one writes them down
            continue
        checkpointer.save({
            "model": model.state_dict(), "optimiser": optimiser.state_dict(), "scheduler": scheduler.state_dict(),
            "history": json.dumps([asdict(h) for h in history]), "best_loss": best["loss"],
            "best_epoch": best["epoch"], "best_weights": best["weights"], "stale_epochs": stale,
            "finished": stopped_early or epoch == settings.epochs, "classes": classes,
        })  # fmt: skip
        logger.info(
            f"epoch {epoch}/{settings.epochs}: train loss {metrics.train_loss:.3f} acc {metrics.train_accuracy:.3f}, "
            f"val loss {val_loss:.3f} acc {val_accuracy:.3f}, lr {metrics.learning_rate:.1e}, {metrics.seconds:.0f} s"
        )
        if on_epoch:
            on_epoch(metrics)
        if stopped_early:
            logger.info(f"early stop: no better validation loss for {stale} epochs (best: epoch {best['epoch']})")
    if best["weights"] is not None:
        model.load_state_dict(best["weights"])
    model.eval()
    return TrainResult(model, classes, history, best["epoch"], resumed_from, stopped_early)
