"""Finalize a stage: stream its row groups through the `finalize` processors into
`<stage folder>/final/data.parquet`, sealing the raw row groups first.

State machine (stage.json `finalize_state`): None -> "started" (sealed: no row group may be
written) -> "complete". A crash or an error while "started" leaves the raw row groups intact and
the stage sealed; running finalize again redoes it from the row groups. `dd-assets unseal` moves
the final output aside and reopens the stage."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dd_assets.engine.finalize import Finalizer
from dd_assets.errors import StoreError
from dd_assets.runners.plan import StagePlan
from dd_assets.store.atomic import atomic_path, atomic_write_json
from dd_assets.store.footer import content_hash
from dd_assets.store.layout import keys_head
from dd_assets.store.partition_store import EmptyFinalError, FinalOutput, PartitionStore


@dataclass
class FinalizeResult:
    path: Path
    rows_in: int
    rows_out: int
    summary: dict[str, Any]


def finalize_stage(plan: StagePlan, store: PartitionStore) -> FinalizeResult:
    stage = plan.compiled.stage
    ref = plan.ref
    if not stage.finalize:
        raise ValueError(f"stage {stage.name!r} has no finalize processors")
    missing = store.missing(ref)
    if missing:
        raise StoreError(
            f"stage {stage.name!r} cannot be finalized: {len(missing)} of {ref.num_row_groups}"
            f" row groups are missing ({keys_head(missing)});"
            " materialize them first (backfill the missing partitions)"
        )
    store.begin_finalize(ref)
    data, meta = store.final_paths(ref)
    fin = Finalizer(stage)
    schema = store.dataset(ref).schema.remove_metadata()
    with atomic_path(data) as tmp:
        writer: pq.ParquetWriter | None = None
        # The final output's data version: its batches' content hashes, in order.
        version = hashlib.sha256()
        for batch in store.iter_batches(ref):
            out = fin.process(batch)
            if writer is None:
                writer = pq.ParquetWriter(str(tmp), out.schema.remove_metadata())
            if out.num_rows:
                writer.write_table(out.replace_schema_metadata(None))
                version.update(content_hash(out).encode())
        if writer is None:  # no row groups hold rows: derive the output schema from an empty batch
            empty = fin.process(pa.Table.from_batches([], schema=schema))
            writer = pq.ParquetWriter(str(tmp), empty.schema.remove_metadata())
        writer.close()
        summary = fin.summary()
        if fin.rows_out == 0 and not stage.allow_empty:
            raise EmptyFinalError(
                f"finalize of stage {stage.name!r} kept 0 of {fin.rows_in} rows"
                f" (steps: {_steps_text(summary)}); nothing was written and the raw row groups are"
                " intact. Fix the finalize processors and materialize the final asset again, set"
                f" `allow_empty: true` on {stage.name!r} to accept an empty result, or run"
                f" `dd-assets unseal CONFIG {stage.name}` to reopen the stage"
            )
    atomic_write_json(
        meta,
        {
            "stage": stage.name,
            "fingerprint": ref.fingerprint,
            "final_fingerprint": plan.fingerprint.final_hex,
            "data_version": version.hexdigest()[:32],
            **summary,
        },
    )
    store.complete_finalize(ref)
    return FinalizeResult(data, fin.rows_in, fin.rows_out, summary)


def _steps_text(summary: dict[str, Any]) -> str:
    return ", ".join(
        f"{s['step']} {s['rows_in']}->{s['rows_out']}"
        + (f" ({s['errors']} errors, e.g. {s['error_samples'][0]})" if s["errors"] else "")
        for s in summary["steps"]
    )


def read_final(store: PartitionStore, plan: StagePlan) -> FinalOutput:
    """The final output of a stage made by its current config (FinalMissingError otherwise)."""
    return store.final_output(plan.ref, plan.fingerprint.final_hex or "")
