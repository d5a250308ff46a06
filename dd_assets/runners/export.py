"""`dd-assets export`: stream a stage's row groups, one at a time, into a single file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dd_assets.errors import RunError
from dd_assets.runners.finalize import read_final
from dd_assets.runners.plan import StagePlan
from dd_assets.store.atomic import atomic_path
from dd_assets.store.partition_store import PartitionStore


@dataclass
class ExportResult:
    path: Path
    rows: int


def _flatten_for_csv(batch: pa.RecordBatch) -> pa.RecordBatch:
    # CSV has no nested types: structs and lists become JSON text, timestamps ISO text.
    arrays, names = [], []
    for name, col in zip(batch.schema.names, batch.columns, strict=True):
        if pa.types.is_nested(col.type):
            col = pa.array(
                [
                    None if v is None else json.dumps(v, default=str, ensure_ascii=False)
                    for v in col.to_pylist()
                ],
                pa.string(),
            )
        arrays.append(col)
        names.append(name)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def export_stage(
    plan: StagePlan, store: PartitionStore, fmt: str, output: str | Path
) -> ExportResult:
    stage = plan.name
    if plan.finalizes:
        # A stage with finalize processors is its final output; the raw row groups are an
        # intermediate. Refuse rather than silently export the unfiltered rows.
        final = read_final(store, plan)
        return _write(
            pq.ParquetFile(final.path).iter_batches(batch_size=65_536), fmt, output, 0, stage
        )
    done = store.completed(plan.ref)
    if not done:
        raise RunError(
            f"stage {stage!r} has no row groups under fingerprint {plan.ref.fp12} in {store.stage_dir(plan.ref)};"
            f" run `dd-assets materialize CONFIG --stage {stage}` first"
        )
    missing = plan.ref.num_row_groups - len(done)
    return _write(store.iter_batches(plan.ref), fmt, output, missing, stage)


def _write(
    batches: Iterator[pa.RecordBatch], fmt: str, output: str | Path, missing: int, stage: str
) -> ExportResult:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with atomic_path(output) as tmp:
        if fmt == "jsonl":
            with open(tmp, "w", encoding="utf-8") as fh:
                for batch in batches:
                    for rec in batch.to_pylist():
                        fh.write(json.dumps(rec, default=str, ensure_ascii=False) + "\n")
                    rows += batch.num_rows
        elif fmt == "csv":
            writer = None
            for batch in batches:
                flat = _flatten_for_csv(batch)
                if writer is None:
                    writer = pacsv.CSVWriter(str(tmp), flat.schema)
                writer.write_batch(flat)
                rows += batch.num_rows
            if writer is not None:
                writer.close()
        elif fmt == "parquet":
            writer = None
            for batch in batches:
                if writer is None:
                    writer = pq.ParquetWriter(str(tmp), batch.schema.remove_metadata())
                writer.write_batch(batch.replace_schema_metadata(None))
                rows += batch.num_rows
            if writer is not None:
                writer.close()
        else:
            raise RunError(f"unknown export format {fmt!r}; use jsonl, csv or parquet")
    if missing:
        print(
            f"warning: {missing} row group(s) of {stage!r} are not materialized yet; exported what exists"
        )
    return ExportResult(output, rows)
