"""Dagster software-defined assets: thin wrappers that call `ml/` and return data + metadata."""
