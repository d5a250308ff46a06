"""IO manager for stage assets.

Stage assets write row groups themselves, each the moment it completes, so `handle_output` has
nothing to store. `load_input` serves assets downstream of a stage (yours or ours) a lazy
pyarrow Dataset over exactly the partitions they asked for: never one giant in-memory frame."""

from __future__ import annotations

from typing import Any

import dagster as dg
import pyarrow.dataset as pads

from resources.store import PartitionStore, StageRef

META_PREFIX = "dd_assets/"


def ref_metadata(ref: StageRef) -> dict[str, Any]:
    """Definition metadata of a stage asset: enough to find its files (and shown in the UI)."""
    return {
        f"{META_PREFIX}workflow": ref.workflow,
        f"{META_PREFIX}stage": ref.stage,
        f"{META_PREFIX}fingerprint": ref.fingerprint,
        f"{META_PREFIX}buffer_size": ref.buffer_size,
        f"{META_PREFIX}num_records": ref.num_records,
    }


def ref_from_metadata(meta: dict[str, Any]) -> StageRef:
    def get(key: str) -> Any:
        value = meta[f"{META_PREFIX}{key}"]
        return getattr(value, "value", getattr(value, "text", value))

    return StageRef(
        workflow=get("workflow"),
        stage=get("stage"),
        fingerprint=get("fingerprint"),
        buffer_size=int(get("buffer_size")),
        num_records=int(get("num_records")),
        identity={},
    )


class StageIOManager(dg.ConfigurableIOManager):
    root: str = "./dd-data"

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is not None:
            raise TypeError(
                f"stage asset {context.asset_key.to_user_string()} returned a value; stage data is"
                " written row group by row group through the partition store, so return None"
            )

    def load_input(self, context: dg.InputContext) -> pads.Dataset:
        upstream = context.upstream_output
        assert upstream is not None
        ref = ref_from_metadata(dict(upstream.definition_metadata or {}))
        store = PartitionStore(self.root)
        done = store.completed(ref)
        if context.has_asset_partitions:
            wanted = [ref.row_group_of(k) for k in context.asset_partition_keys]
        else:
            wanted = sorted(done)
        missing = [ref.partition_key(rg) for rg in wanted if rg not in done]
        if missing:
            raise FileNotFoundError(
                f"stage {ref.stage!r} (fingerprint {ref.fp12}) has no data for partition(s)"
                f" {missing[:10]}{'...' if len(missing) > 10 else ''} under {store.stage_dir(ref)};"
                " materialize them first (backfill the missing partitions)"
            )
        return pads.dataset([str(done[rg].path) for rg in wanted], format="parquet")
