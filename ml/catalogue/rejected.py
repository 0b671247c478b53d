"""The `rejected` ledger: every input left out, by which stage and why. Nothing is dropped silently.

Each stage writes its rejections for one scope (a release, or the whole catalogue) to its own
Parquet file, replacing that file atomically when it runs again, so re-runs never duplicate rows
and a killed run never leaves half a file. A step that fails for a release leaves one row for the
whole release (reason ``release_failed``, under ``failed/<step>/``) until it succeeds for it again.
:func:`load_rejected` gathers them all.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from ml.tables import REJECTED_SCHEMA, concat, read_table, scope_filename, table_from_rows, write_table

ALL = "_all"  # scope of a stage that runs on the whole catalogue
FAILED = "failed"  # the ledger's folder of steps that failed for a release
RELEASE_FAILED = "release_failed"


def ledger_path(ledger_dir: Path, stage: str, scope: str) -> Path:
    return Path(ledger_dir) / stage / scope_filename(scope)


def record_rejected(ledger_dir: Path, stage: str, scope: str, rejected: pa.Table) -> Path:
    """Replace the rejections of ``stage`` for ``scope`` (an empty table clears them)."""
    if rejected.num_rows and set(rejected.column("stage").to_pylist()) != {stage}:
        raise ValueError(f"rows recorded for stage {stage!r} carry another stage")
    return write_table(rejected, ledger_path(ledger_dir, stage, scope), REJECTED_SCHEMA)


def record_failure(ledger_dir: Path, step: str, release: str, error: str) -> Path:
    """``step`` failed for ``release``: its files are left out, listed as one row for the release."""
    row = {"path": release, "release": release, "track_id": None, "stage": step, "reason": RELEASE_FAILED,
           "detail": f"the {step} step failed for this release, so its files are left out: {error}"}  # fmt: skip
    return write_table(table_from_rows([row], REJECTED_SCHEMA), ledger_path(Path(ledger_dir) / FAILED, step, release))


def clear_failure(ledger_dir: Path, step: str, release: str) -> None:
    """``step`` succeeded for ``release``: drop the failure it had recorded, if any."""
    ledger_path(Path(ledger_dir) / FAILED, step, release).unlink(missing_ok=True)


def failed_releases(ledger_dir: Path) -> set[str]:
    """The releases with a step whose latest run failed."""
    return {read_table(path).column("release")[0].as_py() for path in Path(ledger_dir).glob(f"{FAILED}/*/*.parquet")}


def forget_scope(ledger_dir: Path, scope: str) -> None:
    """Drop every stage's rejections for a scope (a release that left the library)."""
    for path in Path(ledger_dir).glob(f"**/{scope_filename(scope)}"):
        path.unlink(missing_ok=True)


def load_rejected(ledger_dir: Path) -> pa.Table:
    files = sorted(Path(ledger_dir).glob("**/*.parquet"))
    return concat((read_table(f, REJECTED_SCHEMA) for f in files), REJECTED_SCHEMA)
