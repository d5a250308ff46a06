"""IO manager for stage assets.

Stage assets write row groups themselves, each the moment it completes, so `handle_output` has
nothing to store. `load_input` serves assets downstream of a stage (yours or ours) a lazy
pyarrow Dataset over exactly the partitions they asked for: never one giant in-memory frame."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dagster as dg

from dd_assets.store import files
from dd_assets.store.layout import DEFAULT_ROOT, StageRef, row_group_of
from dd_assets.store.partition_store import PartitionStore

if TYPE_CHECKING:  # pyarrow.dataset imports pandas when it is installed: ~0.5 s per process
    import pyarrow.dataset as pads

META_PREFIX = "dd_assets/"


def ref_metadata(ref: StageRef, final_fingerprint: str | None = None) -> dict[str, Any]:
    """Definition metadata of a stage asset (or, with `final_fingerprint`, of its final asset):
    enough to find its files (and shown in the UI)."""
    md = {
        f"{META_PREFIX}workflow": ref.workflow,
        f"{META_PREFIX}stage": ref.stage,
        f"{META_PREFIX}fingerprint": ref.fingerprint,
        f"{META_PREFIX}buffer_size": ref.buffer_size,
        f"{META_PREFIX}num_records": ref.num_records,
    }
    if final_fingerprint:
        md[f"{META_PREFIX}final_fingerprint"] = final_fingerprint
    return md


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
    root: str = DEFAULT_ROOT

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is not None:
            raise TypeError(
                f"stage asset {context.asset_key.to_user_string()} returned a value; stage data is"
                " written row group by row group through the partition store, so return None"
            )

    def load_input(self, context: dg.InputContext) -> pads.Dataset:
        upstream = context.upstream_output
        assert upstream is not None
        meta = dict(upstream.definition_metadata or {})
        ref = ref_from_metadata(meta)
        store = PartitionStore(self.root)
        final_fp = meta.get(f"{META_PREFIX}final_fingerprint")
        if final_fp is not None:
            final = store.final_output(ref, getattr(final_fp, "value", final_fp))
            return files.dataset([final.path])
        # Only the partitions this input maps to; an unpartitioned reader gets every one on disk.
        wanted = (
            [row_group_of(k) for k in context.asset_partition_keys]
            if context.has_asset_partitions
            else None
        )
        return store.dataset(ref, wanted)
