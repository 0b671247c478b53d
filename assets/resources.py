"""Dagster resources: the project's settings and the Parquet table store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa

from ml import config
from ml.tables import read_table, scope_filename, write_table


class ReconetSettings(dg.ConfigurableResource):
    """Where the music is and which parameters apply. Empty fields use the project defaults
    (``RECONET_LIBRARY`` / ``params.yaml`` for the library, ``RECONET_PARAMS`` for parameters)."""

    library: str = ""
    params_path: str = ""

    def params(self) -> dict[str, Any]:
        return config.load_params(self.params_path or None)

    def paths(self) -> config.Paths:
        return config.paths(self.params(), library=self.library or None)


def table_path(tables: Path, asset: str, partition_key: str | None = None) -> Path:
    """Where an asset's table (or one partition of it) is stored."""
    return tables / f"{asset}.parquet" if partition_key is None else tables / asset / scope_filename(partition_key)


# Input metadata: read the upstream partitions that exist, leaving out (with a warning) those not
# materialised yet, instead of failing.
SKIP_MISSING_PARTITIONS = "skip_missing_partitions"


class ParquetTableIOManager(dg.ConfigurableIOManager):
    """Stores pyarrow tables as Parquet: ``<base>/<asset>/<partition file>.parquet`` for
    per-release assets, ``<base>/<asset>.parquet`` otherwise. An unpartitioned asset that reads
    a per-release one gets all its partitions concatenated (those that exist, for an input with
    ``SKIP_MISSING_PARTITIONS`` metadata)."""

    base_dir: str = ""

    def _base(self) -> Path:
        return Path(self.base_dir) if self.base_dir else config.paths().tables

    def _path(self, asset_key: dg.AssetKey, partition_key: str | None) -> Path:
        return table_path(self._base(), "/".join(asset_key.path), partition_key)

    def handle_output(self, context: dg.OutputContext, obj: pa.Table | None) -> None:
        if obj is None:
            return
        key = context.asset_partition_key if context.has_asset_partitions else None
        path = write_table(obj, self._path(context.asset_key, key))
        context.add_output_metadata({"path": dg.MetadataValue.path(str(path)), "rows": obj.num_rows})

    def load_input(self, context: dg.InputContext) -> pa.Table:
        if not context.has_asset_partitions:
            return self._read(self._path(context.asset_key, None), context.asset_key, None)
        keys = list(context.asset_partition_keys)
        if context.definition_metadata.get(SKIP_MISSING_PARTITIONS):  # e.g. releases not read yet
            missing = [k for k in keys if not self._path(context.asset_key, k).exists()]
            if missing:
                context.log.warning(f"{context.asset_key.to_user_string()}: {len(missing)} partition(s) not "
                                    f"materialised yet, left out: {missing[:5]}")  # fmt: skip
            keys = [k for k in keys if k not in missing]
        tables = [self._read(self._path(context.asset_key, k), context.asset_key, k) for k in keys]
        return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})

    @staticmethod
    def _read(path: Path, asset_key: dg.AssetKey, partition_key: str | None) -> pa.Table:
        if not path.exists():
            what = asset_key.to_user_string() + (f" for release {partition_key!r}" if partition_key else "")
            raise FileNotFoundError(f"{what} has not been materialised yet (no {path}); materialise it first")
        return read_table(path)


class MlflowTracking(dg.ConfigurableResource):
    """Where training runs and the model registry go. Empty ``tracking_uri``: ``MLFLOW_TRACKING_URI``,
    else a SQLite store ``mlflow.db`` in the project root (artifacts in ``mlartifacts/``)."""

    tracking_uri: str = ""
    experiment: str = "reconet"
    registered_model: str = "reconet-vocalist"

    def uri(self, root: Path) -> str:
        from ml.training.tracking import tracking_uri

        return tracking_uri(root, self.tracking_uri)
