"""Dagster resource handing out the partition store; the root defaults to ./dd-data."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from resources.store import PartitionStore

DEFAULT_ROOT = "./dd-data"


def default_root() -> str:
    """Absolute, so run workers started from another working directory write to the same place."""
    return str(Path(os.environ.get("DD_ASSETS_ROOT", DEFAULT_ROOT)).resolve())


class StoreResource(dg.ConfigurableResource):
    """Where row groups live. The filesystem, not Dagster's event log, is the truth for progress."""

    root: str = DEFAULT_ROOT

    def get_store(self) -> PartitionStore:
        return PartitionStore(self.root)
