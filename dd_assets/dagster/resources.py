"""Dagster resources: the partition store (where row groups live) for the assets and checks.
The IO manager, which serves stage data to downstream assets, is in io_manager.py."""

from __future__ import annotations

import dagster as dg

from dd_assets.store.layout import DEFAULT_ROOT
from dd_assets.store.partition_store import PartitionStore

# Resource keys. An asset or check takes the store as a parameter of this name (Dagster injects
# it by name); stage assets name the IO manager by its key.
STORE_KEY = "dd_store"
IO_MANAGER_KEY = "dd_io_manager"


class StoreResource(dg.ConfigurableResource):
    """Where row groups live. The filesystem, not Dagster's event log, is the truth for progress."""

    root: str = DEFAULT_ROOT

    def get_store(self) -> PartitionStore:
        return PartitionStore(self.root)
