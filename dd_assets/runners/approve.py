"""Review gates: `dd-assets approve CONFIG STAGE FILE` makes a reviewed (edited, filtered) table
the output STAGE hands downstream, instead of what it generated.

- The file (parquet, csv or jsonl) must have exactly the stage's columns with its types (for a
  stage with finalize steps: its final output's); anything else is refused with the column
  named, and nothing is stored.
- It is copied into the store (store/approvals.py), content-hashed; the stage's generated row
  groups stay as they are.
- Descendants record the approved data versions as their inputs (runners/lineage.py), so
  approving, re-approving or clearing makes stale exactly what was built from other data.
- What reads it: a `mode: sample` descendant, the whole table; a `mode: row_group` descendant or
  a join, row group i = approved rows `i * buffer_size` onward (cut by position, like the
  generated row groups). A stage with finalize steps hands its final output only to `mode:
  sample` descendants, so its approval stands in for that final output; its `mode: row_group`
  descendants keep reading its generated row groups."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dd_assets.engine.finalize import Finalizer
from dd_assets.errors import RunError
from dd_assets.runners.checks import expected_schema
from dd_assets.runners.lineage import Lineage
from dd_assets.runners.plan import StagePlan, WorkflowPlan
from dd_assets.store.approvals import Approval, clear_approval, read_approval, write_approval
from dd_assets.store.partition_store import PartitionStore

FORMATS = (".parquet", ".csv", ".jsonl")


class ApprovalError(RunError):
    """A file cannot be approved as a stage's output; nothing was stored."""


@dataclass
class Readers:
    """The direct descendants of a stage and what they read of it."""

    read: list[tuple[str, str]]  # (stage, how) that read the approval
    unaffected: list[str]  # row_group descendants of a finalized stage: they read its row groups

    def text(self) -> str:
        if not self.read:
            return "no stage reads it yet"
        return ", ".join(f"{name} ({how})" for name, how in self.read)


def readers(plan: WorkflowPlan, stage: str) -> Readers:
    me = plan[stage]
    read: list[tuple[str, str]] = []
    unaffected: list[str] = []
    for name, p in plan.stages.items():
        if stage not in {up.name for up in p.upstreams}:
            continue
        how = ("join" if len(p.upstreams) > 1 else "row_group") if p.pairs_row_groups else "sample"
        if me.finalizes and p.pairs_row_groups:
            unaffected.append(name)
        else:
            read.append((name, how))
    return Readers(read, unaffected)


def approval_schema(plan: StagePlan, store: PartitionStore) -> pa.Schema:
    """What an approved table of the stage must look like: its row groups' schema, or its final
    output's when it has finalize steps."""
    schema = expected_schema(plan, store)
    if plan.finalizes:
        schema = Finalizer(plan.compiled.stage).process(schema.empty_table()).schema
    return schema.remove_metadata()


def approve(plan: WorkflowPlan, stage: str, store: PartitionStore, file: str | Path) -> Approval:
    """Check `file` against the stage and store it as the stage's approved output."""
    sp = plan[stage]
    path = Path(file)
    table = conform(read_table_file(path), approval_schema(sp, store), path)
    if table.num_rows == 0:
        raise ApprovalError(
            f"{path} has no rows; an empty approved output would leave every stage below"
            f" {stage!r} without seed rows. Nothing was stored"
        )
    replaces = "final" if sp.finalizes else "row_groups"
    rg_readers = [n for n, how in readers(plan, stage).read if how in ("row_group", "join")]
    if rg_readers and table.num_rows > sp.ref.num_records:
        raise ApprovalError(
            f"{path} has {table.num_rows} rows, more than num_records of stage {stage!r}"
            f" ({sp.ref.num_records}); {', '.join(map(repr, rg_readers))} read(s) it row group by"
            f" row group and would never see rows {sp.ref.num_records} onward. Nothing was"
            f" stored. Raise num_records of {stage!r} and of those stages, or approve fewer rows"
        )
    _refuse_joins_below(plan, stage, store, replaces)
    return write_approval(store, sp.ref, table, source=str(path.resolve()), replaces=replaces)


def _refuse_joins_below(
    plan: WorkflowPlan, stage: str, store: PartitionStore, replaces: str
) -> None:
    """A join below that would pair rows cut from this approval with rows that are not: the
    run would refuse it (Lineage.refuse_mixed_join), so refuse the approval now instead."""
    lineage = Lineage(store)
    lineage.assume_approval(plan[stage], Approval(Path(), {"replaces": replaces}))
    for name in plan.descendants(stage):
        try:
            lineage.refuse_mixed_join(plan[name])
        except RunError as exc:
            raise ApprovalError(f"nothing was stored: {exc}") from None


def clear(plan: WorkflowPlan, stage: str, store: PartitionStore) -> Path | None:
    """Revert the stage to handing down its generated output; the approval folder is moved
    aside (returned), never deleted. None: there was no approval."""
    return clear_approval(store, plan[stage].ref)


def approval_metadata(plan: StagePlan, store: PartitionStore) -> dict[str, Any]:
    """What the stage's asset metadata shows of its approval (plain values; {} without one):
    for the Dagster layer to add to the stage's (or its final asset's) materialization."""
    approval = read_approval(store, plan.ref)
    if approval is None:
        return {}
    return {
        "approved": True,
        "approved_rows": approval.rows,
        "approved_data_version": approval.data_version,
        "approved_at": str(approval.info.get("approved_at", "")),
        "approved_path": str(approval.path),
        "approved_replaces": approval.replaces,
    }


# ---- reading and checking the file ---------------------------------------------------------------


@dataclass
class _Read:
    """A file's columns as read: typed (parquet), text (csv) or JSON values (jsonl)."""

    table: pa.Table | None = None  # parquet, csv (every column as text)
    rows: list[dict[str, Any]] | None = None  # jsonl
    columns: list[str] | None = None
    kind: str = "parquet"


def read_table_file(path: Path) -> _Read:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ApprovalError(f"{path}: an approved file must end in .parquet, .csv or .jsonl")
    try:
        if suffix == ".parquet":
            table = pq.read_table(path)
            # A frame saved by pandas after filtering rows keeps its index as a column.
            index = [c for c in (table.schema.pandas_metadata or {}).get("index_columns", [])]
            table = table.drop_columns([c for c in index if isinstance(c, str)])
            return _Read(table=table.replace_schema_metadata(None))
        if suffix == ".csv":
            with open(path, encoding="utf-8", newline="") as fh:
                names = next(csv.reader(fh), [])
            table = pacsv.read_csv(
                path,
                convert_options=pacsv.ConvertOptions(
                    column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=False
                ),
            )
            return _Read(table=table, kind="csv")
        rows: list[dict[str, Any]] = []
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"line {n} is not a JSON object")
                rows.append(row)
        columns = list(dict.fromkeys(k for r in rows for k in r))
        return _Read(rows=rows, columns=columns, kind="jsonl")
    except FileNotFoundError:
        raise ApprovalError(f"{path} not found; nothing was stored") from None
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise ApprovalError(f"{path} could not be read ({exc}); nothing was stored") from None


_FAMILIES = (
    ("integer", pa.types.is_integer),
    ("floating", pa.types.is_floating),
    ("text", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)),
    ("bool", pa.types.is_boolean),
    ("timestamp", pa.types.is_timestamp),
    ("date", pa.types.is_date),
    ("struct", pa.types.is_struct),
    ("list", lambda t: pa.types.is_list(t) or pa.types.is_large_list(t)),
)


def _family(t: pa.DataType) -> str:
    if pa.types.is_dictionary(t):
        return _family(t.value_type)
    return next((name for name, test in _FAMILIES if test(t)), str(t))


def conform(read: _Read, expected: pa.Schema, path: Path) -> pa.Table:
    """The file's rows with exactly the stage's schema (columns in its order), or ApprovalError
    naming every missing or extra column, or the first column whose values do not fit."""
    have = read.table.column_names if read.table is not None else read.columns or []
    missing = [f"{f.name!r} ({f.type})" for f in expected if f.name not in have]
    extra = [repr(n) for n in have if n not in expected.names]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing column(s) {', '.join(missing)}")
        if extra:
            parts.append(f"extra column(s) {', '.join(extra)}")
        raise ApprovalError(
            f"{path} does not have the columns of the stage: {'; '.join(parts)}. Nothing was"
            f" stored; the stage's columns are {', '.join(expected.names)}"
        )
    arrays = [_column(read, f, path) for f in expected]
    return pa.Table.from_arrays(arrays, schema=expected)


def _wrong(path: Path, name: str, what: str) -> ApprovalError:
    return ApprovalError(f"{path}: column {name!r} {what}. Nothing was stored")


def _column(read: _Read, field: pa.Field, path: Path) -> pa.Array | pa.ChunkedArray:
    t = field.type
    if read.kind == "jsonl":
        values = [r.get(field.name) for r in read.rows or []]
        return _from_values(values, t, path, field.name)
    assert read.table is not None
    col = read.table.column(field.name)
    if read.kind == "csv":
        return _from_text(col.to_pylist(), t, path, field.name)
    if col.type.equals(t):
        return col
    if not (pa.types.is_null(col.type) or _family(col.type) == _family(t)):
        raise _wrong(path, field.name, f"is {col.type}, the stage's schema says {t}")
    try:
        return col.cast(t, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise _wrong(path, field.name, f"({col.type}) does not fit {t}: {exc}") from None


def _from_text(values: list[str | None], t: pa.DataType, path: Path, name: str) -> pa.Array:
    """A csv column: text as written by `dd-assets export` (nested values as JSON text, an
    empty cell as null for anything but text)."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pa.array(values, t)
    if pa.types.is_nested(t):
        parsed = []
        for i, v in enumerate(values):
            try:
                parsed.append(json.loads(v) if v else None)
            except ValueError:
                raise _wrong(path, name, f"row {i}: {v[:60]!r} is not JSON for {t}") from None
        return _from_values(parsed, t, path, name)
    cells = pa.array([v if v != "" else None for v in values], pa.string())
    if pa.types.is_boolean(t):
        cells = pc.utf8_lower(cells)
    try:
        return _parse(cells, t)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        for i, v in enumerate(cells.to_pylist()):
            try:
                _parse(pa.array([v], pa.string()), t)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise _wrong(path, name, f"row {i}: {v!r} is not {t}") from None
        raise  # pragma: no cover - one value must have failed


def _parse(cells: pa.Array, t: pa.DataType) -> pa.Array:
    if pa.types.is_timestamp(t):
        # Written with a fraction ("...:00.000") whatever the unit; a value that does not fit
        # the unit (a real fraction of a second for timestamp[s]) still fails the safe cast.
        return cells.cast(pa.timestamp("ns", t.tz), safe=True).cast(t, safe=True)
    return cells.cast(t, safe=True)


def _from_values(values: list[Any], t: pa.DataType, path: Path, name: str) -> pa.Array:
    """A jsonl column (or a csv column of JSON text): JSON values of the stage's type; text is
    parsed where the type is not text (a timestamp written as ISO text, say)."""
    texts = all(v is None or isinstance(v, str) for v in values)
    if texts and not (
        pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_nested(t)
    ):
        return _from_text([v if v is not None else "" for v in values], t, path, name)
    try:
        return pa.array(values, t)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        for i, v in enumerate(values):
            try:
                pa.array([v], t)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                raise _wrong(
                    path, name, f"row {i}: {json.dumps(v, default=str)[:60]} is not {t}"
                ) from None
        raise  # pragma: no cover
