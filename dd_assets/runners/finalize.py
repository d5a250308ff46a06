"""Finalize a stage: stream its row groups through the `finalize` processors into
`<stage folder>/final/data.parquet`, sealing the raw row groups first.

State machine (stage.json `finalize_state`): None -> "started" (sealed: no row group may be
written) -> "complete". A crash or an error while "started" leaves the raw row groups intact and
the stage sealed; running finalize again redoes it from the row groups. `dd-assets unseal` moves
the final output aside and reopens the stage.

With `target_records: N`, the output is exactly the first N rows, in row order, that pass the
steps; only the row groups needed for them must be on disk (num_records is the budget of
candidates). Generating row groups in order until then is the caller's loop (TargetProgress);
finalize itself refuses, before sealing, while the target is not reached."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dd_assets.engine.finalize import Finalizer
from dd_assets.errors import RunError, StoreError
from dd_assets.runners.lineage import Lineage
from dd_assets.runners.plan import StagePlan
from dd_assets.store import files, parquet
from dd_assets.store.footer import content_hash
from dd_assets.store.layout import keys_head, partition_key
from dd_assets.store.partition_store import (
    EmptyFinalError,
    FinalMissingError,
    FinalOutput,
    PartitionStore,
)


@dataclass
class FinalizeResult:
    path: Path
    rows_in: int
    rows_out: int
    summary: dict[str, Any]


class TargetNotReachedError(RunError):
    """target_records rows do not pass finalize in the row groups there are (yet)."""


@dataclass
class TargetProgress:
    """How far the row groups of a stage with target_records go towards it: the finalize steps
    run over the contiguous run of row groups from 00000, stopping once the target passes."""

    plan: StagePlan
    finalizer: Finalizer
    passed: int = 0  # rows that passed every finalize step
    scanned: int = 0  # row groups 00000 .. scanned-1 were run through the steps
    missing: int | None = None  # the first row group not on disk, where the scan stopped

    @property
    def target(self) -> int:
        return self.plan.compiled.stage.target_records or 0

    @property
    def reached(self) -> bool:
        return self.passed >= self.target

    @property
    def exhausted(self) -> bool:
        """Every row group of the budget (num_records) is done and the target still not met."""
        return not self.reached and self.scanned == self.plan.ref.num_row_groups

    def advance(self, store: PartitionStore) -> TargetProgress:
        """Run the next row groups now on disk through the steps (resumes where it stopped)."""
        # Stale row groups are not counted: the next run regenerates them.
        done = Lineage(store).current(self.plan)
        self.missing = None
        while not self.reached and self.scanned < self.plan.ref.num_row_groups:
            info = done.get(self.scanned)
            if info is None:
                self.missing = self.scanned
                break
            self.passed += self.finalizer.process(store.read(info)).num_rows
            self.scanned += 1
        return self

    def error(self) -> TargetNotReachedError:
        ref, stage = self.plan.ref, self.plan.compiled.stage
        steps = _steps_text(self.finalizer.summary())
        got = (
            f"{self.passed} of the {self.finalizer.rows_in} candidate rows in row groups"
            f" 00000-{self.scanned - 1:05d} pass finalize ({steps})"
            if self.scanned
            else "no row group is on disk yet"
        )
        if not self.exhausted:
            return TargetNotReachedError(
                f"stage {stage.name!r}: target_records is {self.target} but {got}, and row group"
                f" {partition_key(self.missing or self.scanned)} is not on disk; materialize the"
                f" stage (`dd-assets materialize CONFIG --stage {stage.name}` generates row groups"
                " in order until the target passes), then finalize"
            )
        rate = self.passed / self.finalizer.rows_in if self.finalizer.rows_in else 0.0
        hint = (
            f"; at {100 * rate:.0f}% passing, about {math.ceil(1.1 * self.target / rate)} are"
            " needed"
            if rate
            else ""
        )
        return TargetNotReachedError(
            f"stage {stage.name!r}: the candidate budget is spent: all {ref.num_row_groups} row"
            f" groups (num_records {ref.num_records}) are generated and {got}, fewer than"
            f" target_records {self.target}. Raise num_records (the budget{hint}) or loosen the"
            " finalize steps, and materialize again: the row groups on disk are reused and the"
            " stage was not sealed"
        )


def target_progress(plan: StagePlan, store: PartitionStore) -> TargetProgress:
    return TargetProgress(plan, Finalizer(plan.compiled.stage)).advance(store)


def target_used(plan: StagePlan, store: PartitionStore) -> int | None:
    """For a stage with target_records whose current final output reached it: how many row
    groups (from 00000) it took; the others are not needed. None otherwise."""
    if plan.compiled.stage.target_records is None:
        return None
    try:
        final = read_final(store, plan)
    except FinalMissingError:
        return None
    used = final.info.get("target", {}).get("row_groups_used")
    return int(used) if used is not None else None


def needed_row_groups(plan: StagePlan, store: PartitionStore) -> int:
    """How many row groups (from 00000) the stage needs on disk: all of num_records, or the
    ones a target_records stage's final output took."""
    used = target_used(plan, store)
    return plan.ref.num_row_groups if used is None else used


def finalize_stage(plan: StagePlan, store: PartitionStore) -> FinalizeResult:
    stage = plan.compiled.stage
    ref = plan.ref
    if not stage.finalize:
        raise ValueError(f"stage {stage.name!r} has no finalize processors")
    target = stage.target_records
    row_groups = range(ref.num_row_groups)
    if target is not None:
        # Checked before sealing: a short budget is fixed by raising num_records, which
        # adds row groups, and a sealed stage would refuse them.
        progress = target_progress(plan, store)
        if not progress.reached:
            raise progress.error()
        row_groups = range(progress.scanned)
    missing = [rg for rg in store.missing(ref) if rg in row_groups]
    if missing:
        raise StoreError(
            f"stage {stage.name!r} cannot be finalized: {len(missing)} of {ref.num_row_groups}"
            f" row groups are missing ({keys_head(missing)});"
            " materialize them first (backfill the missing partitions)"
        )
    store.begin_finalize(ref)
    data, meta = store.final_paths(ref)
    fin = Finalizer(stage)
    done = store.completed(ref)
    schema = store.dataset(ref).schema.remove_metadata()
    kept = 0
    with files.atomic_path(data) as tmp:
        writer: pq.ParquetWriter | None = None
        # The final output's data version: its batches' content hashes, in order.
        version = hashlib.sha256()
        for rg in row_groups:
            for batch in store.batches(done[rg]):
                out = fin.process(batch)
                if target is not None:  # exactly the first `target` rows that pass
                    out = out.slice(0, target - kept)
                kept += out.num_rows
                if writer is None:
                    writer = parquet.writer(tmp, out.schema.remove_metadata())
                if out.num_rows:
                    writer.write_table(out.replace_schema_metadata(None))
                    version.update(content_hash(out).encode())
        if writer is None:  # no row groups hold rows: derive the output schema from an empty batch
            empty = fin.process(pa.Table.from_batches([], schema=schema))
            writer = parquet.writer(tmp, empty.schema.remove_metadata())
        writer.close()
        summary = fin.summary()
        if target is not None:
            summary["target"] = {
                "target_records": target,
                "row_groups_used": len(row_groups),
                "candidates": fin.rows_in,
                "passed": fin.rows_out,
            }
            summary["rows_out"] = kept
        if fin.rows_out == 0 and not stage.allow_empty:
            raise EmptyFinalError(
                f"finalize of stage {stage.name!r} kept 0 of {fin.rows_in} rows"
                f" (steps: {_steps_text(summary)}); nothing was written and the raw row groups are"
                " intact. Fix the finalize processors and materialize the final asset again, set"
                f" `allow_empty: true` on {stage.name!r} to accept an empty result, or run"
                f" `dd-assets unseal CONFIG {stage.name}` to reopen the stage"
            )
    files.write_json(
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
    return FinalizeResult(data, fin.rows_in, kept, summary)


def _steps_text(summary: dict[str, Any]) -> str:
    return ", ".join(
        f"{s['step']} {s['rows_in']}->{s['rows_out']}"
        + (f" ({s['errors']} errors, e.g. {s['error_samples'][0]})" if s["errors"] else "")
        for s in summary["steps"]
    )


def read_final(store: PartitionStore, plan: StagePlan) -> FinalOutput:
    """The final output of a stage made by its current config (FinalMissingError otherwise)."""
    return store.final_output(plan.ref, plan.fingerprint.final_hex or "")
