"""Each stage's inputs are declared twice, for two tools: dvc.yaml's deps and params (for `dvc
repro`) and pipeline/staleness.py's STEP_INPUTS (the Dagster step versions that decide what is
stale). This test holds them to one another, so that a source file or parameter section added to
one and not the other fails here instead of leaving one tool blind to a change."""


import yaml

from ml import config
from pipeline.staleness import STEP_INPUTS

# the dvc.yaml stage that materialises each asset (pipeline/cli.py STAGES)
STAGE_ASSETS = {
    "catalogue": ("tracks", "clean_tracks"),
    "vocals": ("vocals",),
    "segments": ("segments",),
    "features": ("features",),
    "song_index": ("song_index",),
    "report": ("rejected", "metadata_eda"),
    "splits": ("splits",),
    "model": ("model",),
    "evaluation": ("evaluation",),
    "predictions": ("predictions",),
}
# code every stage reads through the table store and the partitions, listed in dvc.yaml only
SHARED_CODE = {"ml/tables.py", "ml/config.py", "assets/partitions.py", "assets/resources.py", "ml/device.py",
               "ml/catalogue/rejected.py"}  # and the rejected ledger, which every stage writes


def _stages() -> dict:
    return yaml.safe_load((config.PACKAGE_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def test_every_asset_is_in_a_stage_and_every_stage_names_its_assets():
    assert set(STEP_INPUTS) == {a for assets in STAGE_ASSETS.values() for a in assets}
    assert set(STAGE_ASSETS) <= set(_stages())


def test_dvc_deps_and_step_inputs_name_the_same_code():
    stages = _stages()
    for stage, assets in STAGE_ASSETS.items():
        deps = [d for d in stages[stage].get("deps", []) if d.startswith(("ml/", "assets/"))]
        code = {p for a in assets for p in STEP_INPUTS[a][1]}
        missing_in_dvc = sorted(p for p in code if not _covered(p, deps))
        assert not missing_in_dvc, f"dvc.yaml stage {stage} lacks deps {missing_in_dvc} (in STEP_INPUTS)"
        missing_in_steps = sorted(d for d in deps if d not in SHARED_CODE and not _covered(d, sorted(code))
                                  and not any(_covered(c, [d]) for c in code))  # fmt: skip
        assert not missing_in_steps, f"STEP_INPUTS of {assets} lack {missing_in_steps} (dvc.yaml stage {stage})"
        for path in code:
            assert (config.PACKAGE_ROOT / path).exists(), f"STEP_INPUTS names {path}, which does not exist"


def test_dvc_params_and_step_inputs_name_the_same_sections():
    """Section by section (a step version digests whole sections; dvc.yaml may list single keys)."""
    stages = _stages()
    params = config.load_params()
    for stage, assets in STAGE_ASSETS.items():
        keys = [k for k in stages[stage].get("params", []) if isinstance(k, str)]
        sections = {s for a in assets for s in STEP_INPUTS[a][0] if s in params}
        dvc_sections = {k.split(".")[0] for k in keys}
        assert dvc_sections == sections, f"stage {stage}: dvc.yaml {sorted(dvc_sections)}, steps {sorted(sections)}"
