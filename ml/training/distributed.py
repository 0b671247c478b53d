"""Training on several processes (one per GPU) with PyTorch DDP, launched by ``torchrun``.

    torchrun --nproc_per_node 4 -m ml.training.distributed --kind song

Every process reads the project's tables (``<data>/tables/{segments,features}/*.parquet`` and
``splits.parquet``, as the Dagster assets wrote them) and runs the same loop as the single-process
path (:func:`ml.training.training.train`), with :class:`DistributedTraining` sharing the work:

* the model is wrapped in ``DistributedDataParallel`` (gradients averaged over the processes);
* each epoch's order of clips (class-balanced or shuffled, seeded as on one process) is cut into
  one disjoint share per process, padded so that every process takes the same number of steps;
* losses and counts are summed over the processes, so the history, the learning-rate schedule and
  early stopping see the whole epoch and every process takes the same decisions;
* only rank 0 writes the checkpoint (the plain model's weights: it loads into a single-process
  model), ``model.safetensors`` and ``distributed.json``, logs the epochs, and records the run in
  MLflow as the `model` asset does (``ml/training/model_run.py``: params, metrics, weights, the
  pyfunc bundle, a registered version for ``train.split_kind``).

The device is chosen by ``ml/device.py`` (``compute.device`` / ``RECONET_DEVICE``); on CUDA each
process takes GPU ``LOCAL_RANK`` and the processes talk over NCCL, on the CPU over gloo. The batch
size (``train.batch_size``) is per process. A run is resumable like the single-process one; its
folder, ``<data>/models/<kind>/<digest>/``, depends on the number of processes too.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import mlflow
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from ml import config
from ml.clips.features import FeatureParams
from ml.clips.loader import SegmentDataset
from ml.device import device_from_params, precision_name
from ml.identification.backend import is_embedding_model
from ml.identification.identify import preprocessing
from ml.tables import read_table, write_text
from ml.training.model_run import (
    _record,
    _start_logging,
    augmenters_for,
    data_version,
    network_open_set,
    split_rows_of,
    with_features,
)
from ml.training.tracking import REGISTERED_MODEL, mlflow_run, tracking_uri
from ml.training.training import SingleProcess, TrainParams, dataset_sources, train, training_precision

log = logging.getLogger(__name__)


class EpochShard(Sampler[int]):
    """Process ``rank``'s share of an epoch drawn by ``epoch`` (any sampler: class-balanced, shuffled,
    sequential): every ``world_size``-th position from ``rank`` on. ``pad`` repeats the first
    positions so every share has the same length (DDP needs the same number of steps everywhere)."""

    def __init__(self, epoch: Sampler[int], rank: int, world_size: int, pad: bool) -> None:
        self.epoch, self.rank, self.world_size, self.pad = epoch, rank, world_size, pad

    def _order(self) -> list[int]:
        order = list(self.epoch)
        missing = -len(order) % self.world_size if self.pad and order else 0
        return order + (order * (missing // len(order) + 1))[:missing]

    def __iter__(self) -> Iterator[int]:
        return iter(self._order()[self.rank :: self.world_size])

    def __len__(self) -> int:
        n = len(self.epoch)
        n = -(-n // self.world_size) * self.world_size if self.pad else n
        return len(range(self.rank, n, self.world_size))


def state_checksum(model: nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers: equal on every process while DDP keeps them in sync."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class DistributedTraining(SingleProcess):
    """:func:`ml.training.training.train` on one process of a DDP group (already initialised). Records, per
    epoch, how many clips each process trained on, how many distinct clips they covered together,
    and the checksum of every process's weights after the epoch (see ``distributed.json``)."""

    def __init__(self, rank: int, world_size: int, device: torch.device) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device
        self.epochs: list[dict[str, Any]] = []
        self._rows: list[torch.Tensor] = []

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP with a static graph: every step uses the same parameters, which lets DDP skip the ones
        no step uses (the last WaveNet block's residual in ``reconet``) without searching every step."""
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, static_graph=True)

    def loader(self, dataset: SegmentDataset, batch_size: int, shuffle: bool = False, balanced: bool = False,
               seed: int = 0):  # fmt: skip
        whole = super().loader(dataset, batch_size, shuffle=shuffle, balanced=balanced, seed=seed)
        training = shuffle or balanced  # training shares are padded to equal length; validation's are exact
        share = DataLoader(dataset, batch_size=batch_size, collate_fn=whole.collate_fn,
                           sampler=EpochShard(whole.sampler, self.rank, self.world_size, pad=training))  # fmt: skip
        return self._recorded(share) if training else share

    def _recorded(self, loader: DataLoader) -> Iterator:
        for batch in loader:
            self._rows.append(batch.rows)
            yield batch

    def sum(self, *values: float) -> list[float]:
        total = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return total.tolist()

    def end_epoch(self, model: nn.Module, epoch: int) -> None:
        """Give every process rank 0's batch-norm statistics (DDP syncs them at the start of each
        step, so the last step leaves each process its own), then record the epoch's shares."""
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
        rows = torch.cat(self._rows).tolist() if self._rows else []
        self._rows = []
        shares: list[Any] = [None] * self.world_size
        dist.all_gather_object(shares, (rows, state_checksum(model)))
        self.epochs.append({
            "epoch": epoch, "clips_per_process": [len(r) for r, _ in shares],
            "distinct_clips": len({i for r, _ in shares for i in r}), "checksums": [c for _, c in shares],
        })  # fmt: skip


@contextlib.contextmanager
def process_group(params: dict[str, Any]) -> Iterator[DistributedTraining]:
    """Join the DDP group that ``torchrun`` describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...):
    NCCL on CUDA (GPU ``LOCAL_RANK``), gloo on the CPU; leave it at the end."""
    if "RANK" not in os.environ or "LOCAL_RANK" not in os.environ:
        raise RuntimeError("ml.training.distributed runs under torchrun: "
                           "torchrun --nproc_per_node N -m ml.training.distributed ...")
    rank, world_size, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    device = device_from_params(params)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        yield DistributedTraining(rank, world_size, device)
    finally:
        dist.destroy_process_group()


def read_project_tables(paths: config.Paths) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(segments, features, splits) as the Dagster assets wrote them under ``<data>/tables``."""
    tables = []
    for name in ("segments", "features"):
        files = sorted((paths.tables / name).glob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"no {name} tables in {paths.tables / name}: materialise `{name}` first")
        tables.append(pa.concat_tables([read_table(f) for f in files], promote_options="default"))
    splits_file = paths.tables / "splits.parquet"
    if not splits_file.exists():
        raise FileNotFoundError(f"no splits table at {splits_file}: materialise `splits` first")
    return tables[0], tables[1], read_table(splits_file)


def train_split(params: dict[str, Any], paths: config.Paths, kind: str, parallel: DistributedTraining,
                logger: logging.Logger | Any = None, experiment: str = "reconet",
                registered_model: str | None = REGISTERED_MODEL) -> dict[str, Any]:  # fmt: skip
    """Train the configured model on split ``kind`` on every process of ``parallel``'s group (or
    resume it); rank 0 writes the checkpoint, ``model.safetensors`` (the best epoch's weights) and
    ``distributed.json`` in the run's folder, and records the run as the `model` asset does: an
    MLflow run in ``experiment`` (params, each epoch's metrics, the weights and the pyfunc bundle),
    a new version of ``registered_model`` when ``kind`` is ``train.split_kind``, and
    ``<data>/models/<kind>/current.json`` naming the model. Returns what ``distributed.json`` holds."""
    logger = logger or log
    settings = TrainParams.from_params(params)
    if is_embedding_model(settings.model):
        raise ValueError(f"{settings.model} is an embedding model: it has no network to train in parallel "
                         "(`reconet run` fits it in one process); pass --model a network (crnn, reconet, ...)")
    feature_params = FeatureParams.from_params(params)
    segments, features, splits = read_project_tables(paths)
    segments = segments.filter(pc.is_in(segments.column("segment_id"), splits.column("segment_id")))
    table = with_features(segments, features)
    train_rows = split_rows_of(splits, table, kind, "train")
    classes = sorted(set(train_rows.column("artist").to_pylist()), key=str)
    val_rows = split_rows_of(splits, table, kind, "val")
    val_rows = val_rows.filter(pc.is_in(val_rows.column("artist"), pa.array(classes, pa.string())))
    if len(classes) < 2 or val_rows.num_rows == 0:
        raise ValueError(f"the {kind} split needs at least 2 artists and a validation set "
                         f"(has {len(classes)} artists, {val_rows.num_rows} validation clips)")  # fmt: skip
    version = data_version(pa.concat_tables([train_rows, val_rows]), feature_params)
    precision = training_precision(params, parallel.device)
    reduced = {"precision": precision_name(precision)} if precision != torch.float32 else {}  # as model_run's
    digest = settings.digest({"data": version, "kind": kind, "features": feature_params.digest(),
                              "world_size": parallel.world_size, **reduced})[:12]  # fmt: skip
    run_dir = paths.data / "models" / kind / digest
    train_source, eval_source = dataset_sources(settings.model, settings.augment)
    train_set = SegmentDataset(train_rows, paths.data, classes, source=train_source)
    val_set = SegmentDataset(val_rows, paths.data, classes, source=eval_source)
    augmenters = augmenters_for(params, feature_params.sample_rate) if settings.augment else (None, None)
    logger.info(f"rank {parallel.rank}/{parallel.world_size} on {parallel.device} ({dist.get_backend()}): "
                f"{settings.model} on the {kind} split, {len(train_set)} clips, {len(classes)} artists, "
                f"{len(val_set)} validation clips, batches of {settings.batch_size} per process")  # fmt: skip
    run_id_file = run_dir / "mlflow_run_id"
    previous_run = run_id_file.read_text(encoding="utf-8").strip() if run_id_file.exists() else None
    uri = tracking_uri(paths.root)
    # rank 0 records the run in MLflow as the `model` asset does (resuming the run its folder names)
    tracked = (mlflow_run(uri, experiment, f"{settings.model}-{kind}", previous_run) if parallel.writes
               else contextlib.nullcontext())  # fmt: skip
    with tracked as run:
        if run is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text(run.info.run_id, run_id_file)
            if previous_run is None:
                _start_logging(params, paths, kind, settings, classes, len(train_set), len(val_set), version,
                               parallel.device)  # fmt: skip
                mlflow.log_params({"world_size": parallel.world_size, "backend": dist.get_backend()})
        result = train(train_set, val_set, settings, feature_params, parallel.device, run_dir, augmenters,
                       on_epoch=_log_epoch, logger=logger, parallel=parallel, precision=precision)  # fmt: skip
        summary = _summary(result, settings, feature_params, classes, kind, version, run_dir, parallel)
        if run is not None:
            write_text(json.dumps(summary, indent=1), run_dir / "distributed.json")
            mlflow.log_artifact(str(run_dir / "distributed.json"), "weights")
            done = run_dir / "model.json"
            if result.resumed_from_epoch == len(result.history) and done.exists():  # finished before: nothing new
                info = json.loads(done.read_text(encoding="utf-8"))
            else:
                register = kind == settings.split_kind  # as the `model` asset: the primary kind's model only
                references_set = SegmentDataset(train_rows, paths.data, classes, source=eval_source)
                rule = network_open_set(result.model, references_set, val_set, params, parallel.device, run_dir)
                info = _record(result, run_dir, run.info.run_id, settings, preprocessing(params, paths), classes,
                               kind, version, uri, registered_model if register else None, logger, rule)  # fmt: skip
            write_text(json.dumps(info, indent=1), paths.data / "models" / kind / "current.json")
            logger.info(f"best epoch {result.best_epoch} (val accuracy {summary['val_accuracy']:.3f}): {run_dir}, "
                        f"MLflow run {run.info.run_id}")  # fmt: skip
    dist.barrier()  # the others wait until rank 0's files are in place
    return summary


def _log_epoch(m) -> None:
    """An epoch's metrics in the active MLflow run (``train`` calls it on rank 0 only)."""
    names = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate")
    mlflow.log_metrics({n: getattr(m, n) for n in names}, step=m.epoch)


def _summary(result, settings: TrainParams, feature_params: FeatureParams, classes: list[str], kind: str,
             version: str, run_dir, parallel: DistributedTraining) -> dict[str, Any]:  # fmt: skip
    """What ``distributed.json`` holds: the run, and per epoch how the processes shared it."""
    best = next((h for h in result.history if h.epoch == result.best_epoch), result.history[-1])
    summary_file = run_dir / "distributed.json"
    earlier = json.loads(summary_file.read_text(encoding="utf-8"))["epochs"] if summary_file.exists() else []
    return {
        "model": settings.model, "model_options": settings.model_options, "classes": classes,
        "n_mels": feature_params.n_mels, "kind": kind, "data_version": version, "dir": str(run_dir),
        "best_epoch": result.best_epoch, "val_accuracy": best.val_accuracy, "epochs_run": len(result.history),
        "resumed_from_epoch": result.resumed_from_epoch, "world_size": parallel.world_size,
        "backend": dist.get_backend(), "device": parallel.device.type, "written_by_rank": parallel.rank,
        # per epoch: clips each process trained on, distinct clips among them, each process's weight checksum
        "epochs": [e for e in earlier if e["epoch"] <= result.resumed_from_epoch] + parallel.epochs,
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="torchrun --nproc_per_node N -m ml.training.distributed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--kind", help="split kind to train on (default: train.split_kind in params.yaml)")
    parser.add_argument("--model", help="crnn, reconet, speaker_net, samplecnn or resnet_gru (default: train.model)")
    parser.add_argument("--epochs", type=int, help="maximum epochs (default: train.epochs)")
    args = parser.parse_args(argv)
    params = config.load_params()
    overrides = {k: v for k, v in (("model", args.model), ("epochs", args.epochs)) if v}
    if overrides:
        params = {**params, "train": {**params.get("train", {}), **overrides}}
    kind = args.kind or TrainParams.from_params(params).split_kind
    rank = os.environ.get("RANK", "?")
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank {rank} %(levelname)s %(message)s")
    with process_group(params) as parallel:
        train_split(params, config.paths(params), kind, parallel)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
