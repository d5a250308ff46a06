"""`dd-assets export`: stream a stage's row groups, one at a time, into a single file.

The format is the output's extension (case-insensitive) unless one is named; the file is written
atomically, and temp files a killed export left in that folder are swept by the next export."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from dd_assets.engine import DROPS_SCHEMA
from dd_assets.engine.images import image_columns
from dd_assets.errors import RunError, StoreError, UsageError
from dd_assets.runners.finalize import read_final
from dd_assets.runners.images import copy_images, image_paths
from dd_assets.runners.plan import StagePlan
from dd_assets.store import files, parquet
from dd_assets.store.approvals import read_approval
from dd_assets.store.atomic import sweep_temp_files
from dd_assets.store.layout import key_ranges
from dd_assets.store.partition_store import PartitionStore

FORMATS = ("jsonl", "csv", "parquet")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def export_format(output: str | Path, given: str | None = None) -> str:
    """`given` if any, else what the output's extension says; UsageError when it says nothing."""
    if given is not None:
        return given
    suffix = Path(output).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise UsageError(
            f"cannot tell the export format from {Path(output).name!r}; name the file"
            f" {', '.join(_EXTENSIONS)}, or give --format {'|'.join(FORMATS)}"
        )
    return _EXTENSIONS[suffix]


@dataclass
class ExportResult:
    path: Path
    rows: int
    what: str = "rows"  # what was exported, for the message: "approved rows", "dropped columns"


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
    """The stage's rows in one file; an image column's files are copied beside it first, under
    the same relative paths its cells hold (`images/<column>/...`), so they resolve from the
    exported file's folder as from DataDesigner's dataset folder."""
    columns = image_columns(plan.compiled.stage)
    if columns:
        out = files.root_path(output)
        copy_images(plan, store, image_paths(_source(plan, store), columns), out.parent)
    return _export_rows(plan, store, fmt, output)


def _source(plan: StagePlan, store: PartitionStore) -> Iterator[pa.RecordBatch]:
    """The batches export_stage exports (for the image paths they hold)."""
    approval = read_approval(store, plan.ref)
    if approval is not None:
        return _file_batches(approval.path, "approved output")
    if plan.finalizes:
        return _file_batches(read_final(store, plan).path, "final output")
    return store.iter_batches(plan.ref)


def _export_rows(
    plan: StagePlan, store: PartitionStore, fmt: str, output: str | Path
) -> ExportResult:
    stage = plan.name
    approval = read_approval(store, plan.ref)
    if approval is not None:
        # What the stage hands downstream (review gate), not what it generated.
        res = _write(_file_batches(approval.path, "approved output"), fmt, output, 0, stage)
        res.what = "approved rows"
        return res
    if plan.finalizes:
        # A stage with finalize processors is its final output; the raw row groups are an
        # intermediate. Refuse rather than silently export the unfiltered rows.
        final = read_final(store, plan)
        return _write(_file_batches(final.path, "final output"), fmt, output, 0, stage)
    done = store.completed(plan.ref)
    if not done:
        raise RunError(
            f"stage {stage!r} has no row groups under fingerprint {plan.ref.fp12} in {store.stage_dir(plan.ref)};"
            f" run `dd-assets materialize CONFIG --stage {stage}` first"
        )
    missing = plan.ref.num_row_groups - len(done)
    return _write(store.iter_batches(plan.ref), fmt, output, missing, stage)


def export_dropped_columns(
    plan: StagePlan, store: PartitionStore, fmt: str, output: str | Path
) -> ExportResult:
    """The columns the stage dropped (run.keep_dropped_columns), row for row with its row
    groups in row order: line i belongs to row i of `dd-assets export` of those row groups."""
    if not plan.keeps_dropped_columns:
        if plan.workflow.run.keep_dropped_columns:
            raise RunError(
                f"stage {plan.name!r} has no dropped columns to export: it drops no column"
                " (`drop: true` on a column, or a post_batch drop_columns)"
            )
        raise RunError(
            f"stage {plan.name!r} keeps no dropped columns: run.keep_dropped_columns is off. Set"
            " `run: {keep_dropped_columns: true}` in the config and materialize again (its row"
            " groups are rewritten with them; LLM answers come from the request cache)"
        )
    done = store.completed(plan.ref)
    lacking = [rg for rg, info in sorted(done.items()) if info.dropped_columns is None]
    if lacking:
        raise RunError(
            f"stage {plan.name!r}: row group(s) {key_ranges(lacking, 5)} were written before"
            " run.keep_dropped_columns was on, so their dropped columns were not kept; run"
            f" `dd-assets materialize CONFIG --stage {plan.name}` first (it rewrites them with"
            " their dropped columns; LLM answers come from the request cache)"
        )
    if not done:
        raise RunError(
            f"stage {plan.name!r} has no row groups under fingerprint {plan.ref.fp12}; run"
            f" `dd-assets materialize CONFIG --stage {plan.name}` first"
        )

    def batches() -> Iterator[pa.RecordBatch]:
        for _, info in sorted(done.items()):
            table = store.dropped_columns(plan.ref, info)
            assert table is not None
            yield from table.to_batches() or [pa.RecordBatch.from_pylist([], table.schema)]

    res = _write(batches(), fmt, output, plan.ref.num_row_groups - len(done), plan.name)
    res.what = "rows of dropped columns"
    return res


def export_drops(
    plan: StagePlan, store: PartitionStore, fmt: str, output: str | Path
) -> ExportResult:
    """Every dropped row of the stage's saved row groups (engine.DROPS_SCHEMA: row group, row,
    column, reason, HTTP status, message), in row order; the raw row groups' drops also for a
    stage with finalize steps (finalize filters rows, it does not drop them)."""
    done = store.completed(plan.ref)
    missing = plan.ref.num_row_groups - len(done)
    res = _write(_with_schema(store.iter_drops(plan.ref)), fmt, output, missing, plan.name)
    res.what = "dropped rows"
    return res


def _with_schema(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """At least one (empty) batch, so a stage without drops exports a file with the columns."""
    empty = True
    for b in batches:
        empty = False
        yield b
    if empty:
        yield pa.RecordBatch.from_pylist([], schema=DROPS_SCHEMA)


def _file_batches(path: files.StorePath, what: str) -> Iterator[pa.RecordBatch]:
    try:
        yield from files.iter_batches(path)
    except (OSError, pa.ArrowException) as exc:
        raise StoreError(
            f"{what} {path} cannot be read back intact ({type(exc).__name__}: {exc}); make it"
            " again (materialize the final asset, or approve the file again)"
        ) from None


def _write(
    batches: Iterator[pa.RecordBatch], fmt: str, output: str | Path, missing: int, stage: str
) -> ExportResult:
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; use {', '.join(FORMATS)}")
    output = files.root_path(output)  # a local file, or an object (s3://...) written whole
    files.mkdir(output.parent)
    if not files.is_object(output):
        sweep_temp_files(output.parent)  # what a killed export left here
    rows = 0
    with files.atomic_path(output) as tmp:
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
                    writer = parquet.writer(tmp, batch.schema.remove_metadata())
                writer.write_batch(batch.replace_schema_metadata(None))
                rows += batch.num_rows
            if writer is not None:
                writer.close()
    if missing:
        print(
            f"warning: {missing} row group(s) of {stage!r} are not materialized yet; exported what exists"
        )
    return ExportResult(output, rows)
