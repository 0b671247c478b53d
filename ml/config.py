"""Where things are and what the parameters say: the one place for paths and params.

Every path reconet reads or writes is derived here from three inputs:

* ``RECONET_PROJECT_ROOT`` (default: the folder holding ``params.yaml`` above this file),
* ``RECONET_DATA_DIR`` (default: ``<root>/data``) for tables and audio artefacts,
* ``RECONET_LIBRARY`` (default: ``library.path`` in params.yaml) for the input music,
* ``RECONET_INBOX`` (default: ``identify.inbox`` in params.yaml) for recordings to identify.

Reports (plots, summaries, metrics) go to ``RECONET_REPORTS_DIR`` (default ``<root>/reports``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEMO_LIBRARY = "data/demo-library"


def project_root() -> Path:
    return Path(os.environ.get("RECONET_PROJECT_ROOT", PACKAGE_ROOT)).resolve()


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1})", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_params(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read params.yaml (``RECONET_PARAMS`` or ``<root>/params.yaml``)."""
    path = Path(path or os.environ.get("RECONET_PARAMS", project_root() / "params.yaml"))
    try:
        with open(path, encoding="utf-8") as f:
            params = yaml.load(f, Loader=_UniqueKeyLoader) or {}  # noqa: S506 - a SafeLoader
    except FileNotFoundError:
        raise FileNotFoundError(f"reconet parameters not found at {path}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid parameters: {exc}") from None
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping of sections, got {type(params).__name__}")
    return params


def section(params: dict[str, Any], name: str, settings_class: type) -> dict[str, Any]:
    """A copy of params.yaml's section ``name``, refusing keys ``settings_class`` (a dataclass)
    does not have: a typo in params.yaml must not pass silently."""
    values = dict(params.get(name) or {})
    unknown = set(values) - set(settings_class.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown key(s) in params.yaml {name}: {sorted(unknown)}")
    return values


@dataclass(frozen=True)
class Paths:
    """The folders of one reconet project. Build with :func:`paths`."""

    root: Path
    data: Path
    reports: Path
    library: Path
    library_is_default_demo: bool
    inbox: Path  # recordings dropped here are identified by the champion model (the inbox sensor)

    @cached_property
    def tables(self) -> Path:
        return self.data / "tables"

    @cached_property
    def rejected(self) -> Path:
        return self.data / "rejected"

    @cached_property
    def eda_reports(self) -> Path:
        return self.reports / "eda"

    @cached_property
    def vocals(self) -> Path:
        """The stem cache (``ml/separation/stems.py``): ``RECONET_STEMS_DIR`` or ``<data>/vocals``. Stems are
        large and keyed by content, so several projects may share one cache (on a bigger disk)."""
        stems = os.environ.get("RECONET_STEMS_DIR")
        return _resolve(self.root, stems) if stems else self.data / "vocals"

    @cached_property
    def models(self) -> Path:
        """Model files the setup installs: ``RECONET_MODELS_DIR`` or ``<root>/models``."""
        return _resolve(self.root, os.environ.get("RECONET_MODELS_DIR", "models"))

    @cached_property
    def spleeter_checkpoint(self) -> Path:
        return self.models / "spleeter" / "2stems"

    @cached_property
    def spleeter_weights(self) -> Path:
        return self.models / "spleeter-2stems.safetensors"

    @cached_property
    def spleeter_python(self) -> Path:
        """The official Spleeter's interpreter: ``RECONET_SPLEETER_PYTHON`` or ``<root>/.venv-spleeter``."""
        # not resolved: a virtual environment's python is a symbolic link to the base interpreter
        python = Path(os.environ.get("RECONET_SPLEETER_PYTHON", ".venv-spleeter/bin/python")).expanduser()
        return python if python.is_absolute() else self.root / python

    @cached_property
    def dagster_home(self) -> Path:
        """Dagster's instance folder (runs, logs, partitions): DAGSTER_HOME or ``<root>/.dagster``."""
        return Path(os.environ.get("DAGSTER_HOME") or self.root / ".dagster").resolve()


def _resolve(root: Path, value: str | os.PathLike) -> Path:
    p = Path(value).expanduser()
    return (p if p.is_absolute() else root / p).resolve()


def paths(params: dict[str, Any] | None = None, library: str | os.PathLike | None = None) -> Paths:
    """The project's folders; ``library`` (else RECONET_LIBRARY, else params) picks the music."""
    params = load_params() if params is None else params
    root = project_root()
    configured_library = params.get("library", {}).get("path", DEFAULT_DEMO_LIBRARY)
    library = _resolve(root, library or os.environ.get("RECONET_LIBRARY") or configured_library)
    return Paths(
        root=root,
        data=_resolve(root, os.environ.get("RECONET_DATA_DIR", "data")),
        reports=_resolve(root, os.environ.get("RECONET_REPORTS_DIR", "reports")),
        library=library,
        library_is_default_demo=library == _resolve(root, DEFAULT_DEMO_LIBRARY),
        inbox=_resolve(root, os.environ.get("RECONET_INBOX") or params.get("identify", {}).get("inbox", "data/inbox")),
    )
