"""DDP training through torchrun: two processes on the CPU (gloo) on a tiny real project's tables."""

import json
import os
import signal
import subprocess
import sys

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from ml import config
from ml.clips.loader import SegmentDataset, make_loader
from ml.identification.bundle import load_bundle
from ml.models import build_model
from ml.training.distributed import EpochShard, state_checksum
from ml.training.splits import SplitParams, split_segments
from tests.test_training import _tiny_project


def _torchrun(tmp_path, *args: str) -> str:
    """``torchrun --standalone --nproc_per_node 2 -m ml.training.distributed ARGS`` on the CPU; its output."""
    env = {**os.environ, "RECONET_PARAMS": str(tmp_path / "params.yaml"), "RECONET_DATA_DIR": str(tmp_path / "data"),
           "RECONET_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": _tracking_uri(tmp_path)}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "ml.training.distributed", *args]  # fmt: skip
    run = subprocess.Popen(cmd, cwd=config.project_root(), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, start_new_session=True)  # fmt: skip
    try:
        output, _ = run.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # processes that disagree wait for each other forever: end them all
        os.killpg(run.pid, signal.SIGKILL)
        output, _ = run.communicate()
        pytest.fail(f"torchrun did not finish in 120 s:\n{output[-4000:]}")
    assert run.returncode == 0, output[-4000:]
    return output


def _tracking_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def project_tables(tmp_path):
    """A tiny project with its `segments`, `features` and `splits` tables where the assets write them."""
    params, segments, features = _tiny_project(tmp_path)
    params["train"].update(balance="loss", batch_size=8)  # shuffled epochs: each clip once per epoch
    tables = tmp_path / "data" / "tables"
    for name, table in (("segments", segments), ("features", features)):
        (tables / name).mkdir(parents=True)
        pq.write_table(table, tables / name / "release.parquet")
    splits, _ = split_segments(segments, SplitParams(kinds=("song",)))
    pq.write_table(splits, tables / "splits.parquet")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    mask = pc.and_(pc.equal(splits.column("kind"), "song"), pc.equal(splits.column("split"), "train"))
    return params, splits.filter(mask).num_rows


def test_two_processes_share_every_epoch_and_rank_0_writes_a_single_process_checkpoint(tmp_path, project_tables):
    params, train_clips = project_tables
    output = _torchrun(tmp_path, "--kind", "song", "--epochs", "2")

    (checkpoint,) = (tmp_path / "data" / "models" / "song").rglob("checkpoint.pt")
    run_dir = checkpoint.parent
    summary = json.loads((run_dir / "distributed.json").read_text())
    assert summary["world_size"] == 2 and summary["backend"] == "gloo" and summary["written_by_rank"] == 0
    half = -(-train_clips // 2)
    assert [e["epoch"] for e in summary["epochs"]] == [1, 2]
    for epoch in summary["epochs"]:
        assert epoch["clips_per_process"] == [half, half]  # each process trained on its half...
        assert epoch["distinct_clips"] == train_clips  # ...and together they covered every clip
        assert epoch["checksums"][0] == epoch["checksums"][1]  # DDP kept the weights identical
    assert summary["epochs"][0]["checksums"][0] != summary["epochs"][1]["checksums"][0]  # and they trained

    # both processes took part; only rank 0 logged the epochs (and wrote the files beside them)
    assert "rank 0 INFO rank 0/2 on cpu (gloo)" in output and "rank 1 INFO rank 1/2 on cpu (gloo)" in output
    epoch_lines = [line for line in output.splitlines() if "epoch 2/2: train loss" in line]
    assert len(epoch_lines) == 1 and "rank 0 INFO" in epoch_lines[0]
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "bundle.json", "checkpoint.pt", "distributed.json", "mlflow_run_id", "model.json", "model.safetensors",
        "references.safetensors",  # the open-set rule's references (model_run.network_open_set)
    ]  # fmt: skip

    # the checkpoint is a single-process one: loads with weights_only into the plain model
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert len(json.loads(state["history"])) == 2 and state["finished"]
    model = build_model("crnn", len(state["classes"]), 64, params["models"]["crnn"])
    model.load_state_dict(state["model"])
    assert state_checksum(model) == summary["epochs"][-1]["checksums"][0]
    model.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    best = state["best_weights"]
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())

    # rank 0 recorded the run as the `model` asset does: an MLflow run with every epoch's metrics,
    # the weights, and a registered version of the bundle whose run is that run
    client = MlflowClient(_tracking_uri(tmp_path))
    run_id = (run_dir / "mlflow_run_id").read_text()
    run = client.get_run(run_id)
    assert run.data.params["world_size"] == "2" and run.data.params["split_kind"] == "song"
    history = json.loads(state["history"])
    for name in ("train_loss", "val_loss", "val_accuracy"):
        logged = [(m.step, m.value) for m in client.get_metric_history(run_id, name)]
        assert sorted(logged) == [(h["epoch"], pytest.approx(h[name])) for h in history], name
    assert run.data.metrics["best_epoch"] == state["best_epoch"]
    assert {a.path for a in client.list_artifacts(run_id, "weights")} >= {"weights/model.safetensors",
                                                                         "weights/distributed.json"}  # fmt: skip
    (version,) = client.search_model_versions("name='reconet-vocalist'")
    assert version.run_id == run_id
    info = json.loads((run_dir / "model.json").read_text())
    assert info["version"] == str(version.version) and info["run_id"] == run_id
    current = json.loads((tmp_path / "data" / "models" / "song" / "current.json").read_text())
    assert current["run_id"] == run_id  # `evaluation` and `reconet identify` take this model
    bundle = load_bundle(f"models:/reconet-vocalist/{version.version}", _tracking_uri(tmp_path))
    assert bundle.identifier.classes == state["classes"]

    # the checkpoint as a run of 3 epochs killed after epoch 2 leaves it: every process resumes from it
    # (weights, and the optimiser's moments: had one process started afresh, the weights would part)
    torch.save({**state, "finished": False}, checkpoint)
    _torchrun(tmp_path, "--kind", "song", "--epochs", "3")
    summary = json.loads((run_dir / "distributed.json").read_text())
    assert summary["resumed_from_epoch"] == 2 and [e["epoch"] for e in summary["epochs"]] == [1, 2, 3]
    assert summary["epochs"][2]["checksums"][0] == summary["epochs"][2]["checksums"][1]
    assert len(json.loads(torch.load(checkpoint, weights_only=True)["history"])) == 3
    # ...in the same MLflow run, which now has the third epoch; the registered versions are all of that run
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2, 3]
    assert {v.run_id for v in client.search_model_versions("name='reconet-vocalist'")} == {run_id}


def test_reconet_on_augmented_clips_with_class_balanced_draws(tmp_path, project_tables):
    """The dual model (its last WaveNet block's residual takes no part in the loss), raw clips
    augmented on each process with its own draws, class-balanced epochs drawn with replacement."""
    params, train_clips = project_tables
    params["train"].update(balance="sampler", augment=True)
    params["augment"] = {name: {"p": 1.0} for name in ("remix", "time_shift", "gaussian_noise", "cutout")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    _torchrun(tmp_path, "--kind", "song", "--model", "reconet", "--epochs", "1")
    (summary_file,) = (tmp_path / "data" / "models" / "song").rglob("distributed.json")
    (epoch,) = json.loads(summary_file.read_text())["epochs"]
    assert epoch["clips_per_process"] == [-(-train_clips // 2)] * 2
    assert epoch["checksums"][0] == epoch["checksums"][1]
    state = torch.load(summary_file.parent / "checkpoint.pt", weights_only=True)
    build_model("reconet", len(state["classes"]), 64, params["models"]["reconet"]).load_state_dict(state["model"])


def test_epoch_shards_are_the_one_process_epoch_dealt_out(tmp_path):
    """The class-balanced (drawn with replacement) epoch, cut into three shares: they interleave back
    into exactly the draws one process makes, padded with its first draws to equal lengths."""
    params, segments, features = _tiny_project(tmp_path)
    table = segments.join(features, "segment_id").sort_by("segment_id").slice(0, 31)
    dataset = SegmentDataset(table, tmp_path / "data", sorted(set(table.column("artist").to_pylist())),
                             source="features")  # fmt: skip
    epoch = list(make_loader(dataset, 8, balanced=True, seed=5).sampler)
    shares = [list(EpochShard(make_loader(dataset, 8, balanced=True, seed=5).sampler, r, 3, pad=True))
              for r in range(3)]  # fmt: skip
    assert [len(s) for s in shares] == [11, 11, 11]
    dealt = [s[i] for i in range(11) for s in shares]
    assert dealt == epoch + epoch[:2]
    exact = [list(EpochShard(make_loader(dataset, 8).sampler, r, 3, pad=False)) for r in range(3)]
    assert sorted(sum(exact, [])) == list(range(31))  # validation: every clip once, no padding
