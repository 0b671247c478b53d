"""Per-release partitions: one dynamic partition per album folder of the library."""

from __future__ import annotations

import dagster as dg

from ml import config
from ml.catalogue.catalogue import find_releases
from ml.catalogue.rejected import forget_scope

releases = dg.DynamicPartitionsDefinition(name="releases")


def sync_release_partitions(
    instance: dg.DagsterInstance, paths: config.Paths, params: dict
) -> tuple[list[str], list[str]]:
    """Make the ``releases`` partitions match the library's release folders.

    Returns (added, removed) keys. A release that left the library also leaves the
    ``rejected`` ledger, so counts keep adding up.
    """
    found = find_releases(paths.library, params["library"]["audio_extensions"])
    known = set(instance.get_dynamic_partitions(releases.name))
    added = sorted(set(found) - known)
    removed = sorted(known - set(found))
    if added:
        instance.add_dynamic_partitions(releases.name, added)
    for key in removed:
        instance.delete_dynamic_partition(releases.name, key)
        forget_scope(paths.rejected, key)
    return added, removed
