"""K-fold cross-validation through the `model` and `evaluation` assets (kfold partition), in Dagster:
every fold trained and evaluated on its own test songs, one MLflow parent run with a child per fold,
the mean ± standard deviation over the folds (ml/training/cross_validation.py)."""

import json

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from mlflow.tracking import MlflowClient

from ml import config
from ml.tables import write_table
from ml.training.splits import SplitParams, split_segments
from tests.test_embedding_models import _project

RELEASE = "Demo/All"
FOLDS = 3


def _materialise(asset, instance, uri: str) -> dg.ExecuteInProcessResult:
    from assets.partitions import releases
    from assets.resources import MlflowTracking, ParquetTableIOManager, ReconetSettings
    from assets.training import evaluation, model

    # the tables of the stages before, written by the test instead of materialised
    sources = [dg.AssetSpec("splits").with_io_manager_key("table_io_manager")] + [
        dg.AssetSpec(name, partitions_def=releases).with_io_manager_key("table_io_manager")
        for name in ("segments", "features")
    ]
    chosen = {"model": model, "evaluation": evaluation}[asset]
    return dg.materialize([*sources, model, evaluation], selection=[chosen], partition_key="kfold", instance=instance,
                          resources={"settings": ReconetSettings(), "table_io_manager": ParquetTableIOManager(),
                                     "mlflow_tracking": MlflowTracking(tracking_uri=uri, experiment="t")})  # fmt: skip


def test_kfold_trains_and_evaluates_every_fold_under_one_parent_run(tmp_path, monkeypatch):
    from assets.resources import table_path

    monkeypatch.setenv("RECONET_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RECONET_REPORTS_DIR", str(tmp_path / "reports"))
    params = config.load_params()
    params["train"].update(model="voice_embedding")
    params["models"]["voice_embedding"]["encoder"] = "ge2e"
    params["splits"].update(kinds=["kfold"], folds=FOLDS, min_songs=3)
    params["open_set"] = {"holdout_artists": 2, "far": 0.05, "seed": 0}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    monkeypatch.setenv("RECONET_PARAMS", str(tmp_path / "params.yaml"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    segments, features, _ = _project(tmp_path, ["Ada", "Bo", "Cy", "Di"])  # 4 songs of 3 clips per singer
    segments = segments.append_column("release", pa.array([RELEASE] * segments.num_rows))
    splits, _ = split_segments(segments, SplitParams.from_params(params))
    tables = config.paths(params).tables
    write_table(splits, table_path(tables, "splits"))
    write_table(segments, table_path(tables, "segments", RELEASE))
    write_table(features, table_path(tables, "features", RELEASE))

    # the folds' test sides: disjoint, and together every song
    kfold = splits.filter(pc.equal(splits.column("split"), "test")).to_pylist()
    tested = {f: {r["track_id"] for r in kfold if r["fold"] == f} for f in range(FOLDS)}
    assert all(tested[a].isdisjoint(tested[b]) for a in range(FOLDS) for b in range(a + 1, FOLDS))
    assert set().union(*tested.values()) == set(segments.column("track_id").to_pylist())

    with dg.instance_for_test() as instance:
        from assets.partitions import releases

        instance.add_dynamic_partitions(releases.name, [RELEASE])
        trained = _materialise("model", instance, uri)
        assert trained.success
        evaluated = _materialise("evaluation", instance, uri)
        assert evaluated.success
        again = _materialise("model", instance, uri)  # the same folds: the same runs, the same parent
    (first,), (second,) = (r.asset_materializations_for_node("model") for r in (trained, again))
    parent_id = first.metadata["mlflow_parent_run_id"].value
    assert second.metadata["mlflow_parent_run_id"].value == parent_id and first.metadata["folds"].value == FOLDS

    client = MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "t"]
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.run_id for r in parents] == [parent_id]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert sorted(int(r.data.tags["fold"]) for r in children) == list(range(FOLDS)) and len(runs) == FOLDS + 1
    assert client.search_model_versions() == []  # a kfold model is never registered

    parent = client.get_run(parent_id).data.metrics
    reports = config.paths(params).reports / "evaluation" / "kfold"
    for child in children:  # each fold's model on its own fold's test clips
        fold = int(child.data.tags["fold"])
        report = json.loads((reports / f"fold{fold}" / "metrics.json").read_text())
        assert report["segment"]["count"] == sum(r["fold"] == fold for r in kfold)
        assert report["song_mean_probability"]["count"] == len(tested[fold])
    for name in ("test_segment_accuracy", "test_segment_macro_f1", "test_song_mean_probability_accuracy",
                 "test_song_mean_probability_macro_f1"):  # fmt: skip
        values = [c.data.metrics[name] for c in children]
        assert parent[f"cv_{name}_mean"] == np.mean(values)
        assert np.isclose(parent[f"cv_{name}_std"], np.std(values, ddof=1))
    assert parent["cv_test_song_mean_probability_accuracy_mean"] >= 0.75  # four clear voices: better than chance

    summary = json.loads((reports / "cross_validation.json").read_text())
    assert summary["mlflow_parent_run_id"] == parent_id and len(summary["folds"]) == FOLDS
    (event,) = evaluated.asset_materializations_for_node("evaluation")
    mean = event.metadata["test_song_mean_probability_macro_f1_mean"].value
    assert mean == summary["summary"]["test_song_mean_probability_macro_f1"]["mean"]
    metrics = json.loads((config.paths(params).reports / "metrics.json").read_text())
    assert metrics["kfold"]["folds"] == FOLDS and metrics["kfold"]["mlflow_run_id"] == parent_id
