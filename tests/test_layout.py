"""The layout rules of DESIGN.md, read from the source: ``ml/`` imports no Dagster and is grouped
by stage, and the dependency between ``assets/`` and ``pipeline/`` runs one way (pipeline → assets)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("catalogue", "separation", "clips", "models", "training", "identification")
SHARED = {"__init__.py", "config.py", "tables.py", "audio.py", "device.py"}


def _imports(path: Path) -> set[str]:
    """Top-level package names and dotted modules a file imports (anywhere in it, lazy imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_ml_imports_no_dagster():
    offenders = {p.relative_to(ROOT).as_posix(): sorted(n for n in _imports(p) if n.split(".")[0] == "dagster")
                 for p in _modules("ml")}  # fmt: skip
    assert {k: v for k, v in offenders.items() if v} == {}


def test_ml_is_grouped_by_stage():
    top = {p.name for p in (ROOT / "ml").iterdir() if p.suffix == ".py"}
    assert top == SHARED, f"modules at ml/'s top besides the shared pieces: {sorted(top - SHARED)}"
    for stage in STAGES:
        assert (ROOT / "ml" / stage / "__init__.py").exists(), f"ml/{stage}/ is missing"


def test_assets_never_import_pipeline():
    offenders = {p.relative_to(ROOT).as_posix(): sorted(n for n in _imports(p) if n.split(".")[0] == "pipeline")
                 for p in _modules("assets")}  # fmt: skip
    assert {k: v for k, v in offenders.items() if v} == {}


def test_every_ml_import_resolves_to_a_file():
    """A module path left over from the flat layout (``ml.segmentation``) would only fail when the
    code that imports it lazily runs: check every ``ml.`` import against the files."""
    missing = []
    for folder in ("ml", "assets", "pipeline", "tests", "benchmarks", "scripts"):
        for path in _modules(folder):
            for name in _imports(path):
                if name.split(".")[0] != "ml":
                    continue
                target = ROOT / Path(*name.split("."))
                if not (target.with_suffix(".py").exists() or (target / "__init__.py").exists()):
                    missing.append(f"{path.relative_to(ROOT)}: {name}")
    assert missing == []
