"""Generate the rows of one row group.

Order of work inside a row group: seed rows, then sampler columns (vectorised), then expression
columns that need no LLM output (rendered a whole column at a time, in dependency order: see
template_columns.py), then the "cell" columns (LLM columns and whatever depends on them): one
task per cell, so a row's next column starts as soon as that row's inputs exist, never waiting
for a whole column to finish."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from dd_assets.config.columns import (
    ColumnConfig,
    CustomColumnConfig,
    ExpressionColumnConfig,
    SamplerColumnConfig,
    ValidationColumnConfig,
)
from dd_assets.config.workflow import column_owners
from dd_assets.engine import custom_columns, expressions, rng, samplers, skips, validators
from dd_assets.engine.compiled import CompiledStage
from dd_assets.engine.drops import DROP_KINDS, DROPS_SCHEMA, MESSAGE_EXCERPT, Drop
from dd_assets.engine.llm_cells import SideAnswer
from dd_assets.engine.processors import split_post_batch
from dd_assets.engine.schema import column_type, side_type
from dd_assets.errors import GenerationError


class CellFailed(Exception):
    """A cell can never get a value for this row (see DROP_KINDS); its row is dropped."""

    def __init__(self, kind: str, message: str, status: int | None = None):
        assert kind in DROP_KINDS, kind
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.status = status


class CellUnfinished(Exception):
    """A cell got no answer because transient faults outlasted the retries. Its row is not
    dropped: the row group is incomplete and is not saved, and the next run asks again."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class RowGroupUnfinished(Exception):
    """Raised instead of a result when cells of the row group are unfinished: a row group is
    saved whole or not at all, so every reader (resume, status, checks, export, Dagster's
    missing partitions) sees it as not done without knowing about this state."""

    def __init__(self, row_group: int | None, cells: int, reason: str):
        super().__init__(f"{cells} cell(s) unfinished; last: {reason}")
        self.row_group = row_group
        self.cells = cells
        self.reason = reason


# Rows whose cells start in one turn of the event loop. Each first cell renders its prompt and
# keys its request at once (~0.35 ms a row): a row group's 200 rows in one turn stopped the loop
# for 70 ms, during which no answer was read and no freed request slot was used again.
ROWS_PER_STEP = 8

# (column, global row index, the row so far) -> cell value; raises CellFailed to drop the row,
# CellUnfinished to leave the cell (and so the row group) unfinished.
CellRunner = Callable[[ColumnConfig, int, dict[str, Any]], Awaitable[Any]]


@dataclass
class RowGroupResult:
    row_group: int | None
    row_start: int
    row_end: int
    table: pa.Table
    seconds: float
    drops: list[Drop] = field(default_factory=list)  # every dropped row, in row order
    # Columns `drop: true` and drop_columns processors removed, row for row with `table`
    # (no columns when the stage drops none): the side table of run.keep_dropped_columns.
    dropped_columns: pa.Table = field(default_factory=lambda: pa.table({}))

    @property
    def planned(self) -> int:
        return self.row_end - self.row_start

    @property
    def dropped(self) -> Counter[str]:
        """Dropped rows per reason label (`column: kind`)."""
        return Counter(d.label for d in self.drops)

    def stats(self) -> dict[str, Any]:
        return {
            "rows": self.table.num_rows,
            "planned_rows": self.planned,
            "dropped_rows": len(self.drops),
            "drop_reasons": dict(self.dropped),
            "seconds": round(self.seconds, 4),
        }

    def drops_table(self) -> pa.Table:
        """The drops as a table (DROPS_SCHEMA): row group, row index, column, reason, HTTP status,
        message excerpt."""
        rg = self.row_group if self.row_group is not None else -1
        return pa.Table.from_pylist(
            [
                {
                    "row_group": rg,
                    "row": d.row,
                    "column": d.column,
                    "reason": d.kind,
                    "status": d.status,
                    "message": d.message,
                }
                for d in self.drops
            ],
            schema=DROPS_SCHEMA,
        )


class _Rows:
    """The row group's values and which rows are still alive; a dropped row gets no further work.

    The batch phase works column by column (`columns`: name -> one value per row, None where
    the row was dropped); the cell phase needs a dict per row, made from the columns the first
    time `rows` is read. After that the dicts hold the values."""

    def __init__(self, start: int, columns: dict[str, list[Any]], n: int):
        self.start = start
        self.n = n
        self.columns = columns
        self._rows: list[dict[str, Any]] | None = None
        self.alive = [True] * n
        # Per row, the columns (and side columns) skipped in it: see skips.py.
        self.skipped: list[set[str]] = [set() for _ in range(n)]
        self.drops: dict[int, Drop] = {}
        self.unfinished = 0
        self.unfinished_reason = ""

    @property
    def rows(self) -> list[dict[str, Any]]:
        if self._rows is None:
            names = list(self.columns)
            values = [self.columns[k] for k in names]
            self._rows = [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]
            if not names:
                self._rows = [{} for _ in range(self.n)]
        return self._rows

    def drop(self, i: int, column: str, kind: str, message: str, status: int | None = None) -> None:
        if not self.alive[i]:
            return
        self.alive[i] = False
        excerpt = " ".join(message.split())[:MESSAGE_EXCERPT]
        self.drops[i] = Drop(self.start + i, column, kind, excerpt, status)

    def unfinish(self, cells: list[CellUnfinished]) -> None:
        self.unfinished += len(cells)
        self.unfinished_reason = cells[-1].reason

    def dropped_in_order(self) -> list[Drop]:
        return [self.drops[i] for i in sorted(self.drops)]

    def live(self, name: str) -> list[Any]:
        """The values of the rows still alive, in order."""
        if self._rows is not None:
            values = [r.get(name) for r in self._rows]
        else:
            values = self.columns.get(name) or [None] * self.n
        if all(self.alive):
            return values
        return [v for v, a in zip(values, self.alive, strict=True) if a]


def _seed_columns(seed: pa.Table | None, n: int) -> dict[str, list[Any]]:
    if seed is None:
        return {}
    if seed.num_rows != n:
        raise GenerationError(f"seed gave {seed.num_rows} rows for a range of {n}")
    return {name: seed.column(name).to_pylist() for name in seed.column_names}


def _batch_phase(cs: CompiledStage, start: int, end: int, rows: _Rows) -> None:
    """Sampler and expression columns, a whole column at a time, over the rows still alive."""
    by_name = {c.name: c for c in cs.stage.columns}
    idx = rng.row_range(start, end)
    columns = rows.columns
    for name in cs.batch_columns:
        col = by_name[name]
        if all(rows.alive):
            pos: list[int] | None = None
            inputs, n = columns, rows.n
        else:
            pos = [i for i, a in enumerate(rows.alive) if a]
            inputs, n = {k: [v[i] for i in pos] for k, v in columns.items()}, len(pos)
        if isinstance(col, SamplerColumnConfig):
            # A value is a function of (column, row) only, so drawing the live rows alone gives
            # them the values a draw of every row would (a dropped row's inputs may be missing).
            try:
                values = samplers.sample_column(
                    col, cs.keys[name], idx if pos is None else idx[pos], inputs.__getitem__
                )
            except ValueError as exc:
                raise GenerationError(
                    f"sampler column {name!r} of stage {cs.stage.name!r}: {exc}"
                ) from None
            values = values.tolist() if isinstance(values, np.ndarray) else list(values)
        elif isinstance(col, ExpressionColumnConfig):
            skipped = _skipped_rows(col, inputs, n, rows, pos)
            if skipped:
                # Rendered over the rows not skipped only, then the skipped ones filled in.
                keep = [i for i in range(n) if i not in skipped]
                values = expressions.render_cells(
                    col.expr, {k: [v[i] for i in keep] for k, v in inputs.items()}, len(keep),
                    col.dtype,
                )  # fmt: skip
                full_values: list[Any] = [skips.skipped_value(col)] * n
                for i, v in zip(keep, values, strict=True):
                    full_values[i] = v
                values = full_values
            else:
                values = expressions.render_cells(col.expr, inputs, n, col.dtype)
            failures = 0
            for i, v in enumerate(values):
                if isinstance(v, expressions.CellError):
                    rows.drop(i if pos is None else pos[i], name, "expression", str(v))
                    values[i] = None
                    failures += 1
            if failures and not any(rows.alive):
                first = rows.dropped_in_order()[0].message
                raise GenerationError(
                    f"expression column {name!r} of stage {cs.stage.name!r} failed on every row of"
                    f" rows {start}..{end - 1}; first error: {first}"
                )
        elif isinstance(col, CustomColumnConfig):  # full_column (compile_stage)
            skipped = _skipped_rows(col, inputs, n, rows, pos)
            keep = [i for i in range(n) if i not in skipped]
            made = custom_columns.run_column(
                cs.workflow, col, {k: [v[i] for i in keep] for k, v in inputs.items()}, len(keep)
            )
            for side, side_values in made.items():
                if side == name:
                    continue
                full_side: list[Any] = [None] * n
                for i, v in zip(keep, side_values, strict=True):
                    full_side[i] = v
                columns[side] = _spread(full_side, pos, rows.n)
            values = [skips.skipped_value(col)] * n
            for i, v in zip(keep, made[name], strict=True):
                values[i] = v
        else:  # pragma: no cover - compile_stage puts LLM columns in cell_columns
            raise GenerationError(f"column {name!r} cannot be generated in batch")
        columns[name] = _spread(values, pos, rows.n)


def _spread(values: list[Any], pos: list[int] | None, n: int) -> list[Any]:
    """Values of the live rows at positions `pos` as a full column (None in the rows dropped
    before it)."""
    if pos is None:
        return values
    full: list[Any] = [None] * n
    for i, v in zip(pos, values, strict=True):
        full[i] = v
    return full


def _skipped_rows(
    col: ColumnConfig, inputs: dict[str, list[Any]], n: int, rows: _Rows, pos: list[int] | None
) -> set[int]:
    """The rows (positions in `inputs`) whose cell of `col` is skipped; recorded in `rows`."""
    if col.skip is None and not (col.propagate_skip and any(rows.skipped)):
        return set()
    out: set[int] = set()
    names = list(inputs) if col.skip is not None else []
    for i in range(n):
        at = i if pos is None else pos[i]
        row = {k: inputs[k][i] for k in names}  # only a skip.when template reads the row
        if skips.is_skipped(col, row, rows.skipped[at]):
            rows.skipped[at].update(col.output_names)
            out.add(i)
    return out


async def _cell_phase(cs: CompiledStage, rows: _Rows, cells: CellRunner | None) -> None:
    by_name = {c.name: c for c in cs.stage.columns}
    owner = column_owners(cs.stage)
    if cells is None and any(by_name[n].is_llm for n in cs.cell_columns):
        raise GenerationError(
            f"stage {cs.stage.name!r} has LLM columns {[n for n in cs.cell_columns if by_name[n].is_llm]};"
            " they need an LLM cell runner (run them through Dagster or `dd-assets preview`)"
        )

    # The cell columns each one waits for, per column rather than per cell (a column's inputs
    # come from parsing its templates).
    deps: dict[str, list[str]] = {}
    for name in cs.cell_columns:
        needed = {owner.get(r, r) for r in by_name[name].required_columns}
        deps[name] = [d for d in cs.cell_columns if d in needed]
    may_skip = {name: skips.has_skips(by_name[name]) for name in cs.cell_columns}

    async def compute(name: str, i: int, row: dict[str, Any]) -> None:
        """The cell of column `name` in row i, its inputs in `row` already."""
        col = by_name[name]
        if may_skip[name] and skips.is_skipped(col, row, rows.skipped[i]):
            rows.skipped[i].update(col.output_names)
            for side in col.output_names[1:]:
                row[side] = None
            row[name] = skips.skipped_value(col)
        elif isinstance(col, ExpressionColumnConfig):
            row[name] = expressions.cast(expressions.render(col.expr, row), col.dtype)
        elif isinstance(col, ValidationColumnConfig):
            row[name] = await asyncio.to_thread(validators.validate, col, dict(row), cs.workflow)
        elif isinstance(col, CustomColumnConfig):
            value = await custom_columns.run_cell(cs.workflow, col, row)
            if isinstance(value, SideAnswer):
                row.update(value.sides)
                value = value.value
            row[name] = value
        else:
            assert cells is not None
            value = await cells(col, rows.start + i, row)
            if isinstance(value, SideAnswer):
                row.update(value.sides)
                value = value.value
            row[name] = value

    def dropped(i: int, name: str, exc: BaseException) -> bool:
        """Drop row i for the exception `exc` of its column `name`; False: not a drop."""
        if isinstance(exc, CellFailed):
            rows.drop(i, name, exc.kind, exc.message, exc.status)
        elif isinstance(exc, expressions.CellError):
            rows.drop(i, name, "expression", str(exc))
        elif isinstance(exc, custom_columns.CustomValueError):
            rows.drop(i, name, "custom", str(exc))
        else:
            return False
        return True

    # When each cell column reads the one before it, a row's cells can only run one after the
    # other: they run in the row's own task, without a task per cell and an `asyncio.wait` per
    # row (a third of the tasks and coroutines a row group keeps alive, which every full
    # collection of the GC walks, and their CPU). The outcome is the task path's: the first
    # failing column drops the row; an unfinished cell leaves every later column unfinished
    # with it (each awaited it), and each of them is counted.
    order = cs.cell_columns
    chained = all(order[k - 1] in deps[order[k]] for k in range(1, len(order)))

    async def run_chain(i: int) -> None:
        row = rows.rows[i]
        for k, name in enumerate(order):
            try:
                await compute(name, i, row)
            except CellUnfinished as exc:
                rows.unfinish([exc] * (len(order) - k))
                return
            except Exception as exc:
                if dropped(i, name, exc):
                    return
                raise

    async def run_row(i: int) -> None:
        row = rows.rows[i]
        tasks: dict[str, asyncio.Task[None]] = {}

        async def run_cell(name: str) -> None:
            for dep in deps[name]:
                await tasks[dep]
            await compute(name, i, row)

        for name in cs.cell_columns:
            tasks[name] = asyncio.ensure_future(run_cell(name))
        pending = set(tasks.values())
        unfinished: list[CellUnfinished] = []
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                # In column order, so a dependency's failure is reported under its own column;
                # every exception is retrieved, so none is logged as never retrieved.
                errors = [
                    (n, tasks[n].exception())
                    for n in cs.cell_columns
                    if tasks[n] in done and not tasks[n].cancelled()
                ]
                for name, exc in errors:
                    if exc is None:
                        continue
                    if dropped(i, name, exc):
                        return
                    if isinstance(exc, CellUnfinished):
                        # The row's other cells go on: their answers are cached for the next
                        # run, and a later drop still makes the row dropped, not unfinished.
                        unfinished.append(exc)
                        continue
                    raise exc
            if unfinished:
                rows.unfinish(unfinished)
        finally:
            # Also on cancellation: a cell task must never outlive its row (it would keep
            # calling the LLM client after the run closed it).
            await _cancel_all(pending)

    row_tasks: list[asyncio.Task[None]] = []
    try:
        for i in range(len(rows.rows)):
            if rows.alive[i]:
                row_tasks.append(asyncio.ensure_future((run_chain if chained else run_row)(i)))
                if len(row_tasks) % ROWS_PER_STEP == 0:
                    await asyncio.sleep(0)
        await asyncio.gather(*row_tasks)
    except BaseException:
        # gather does not cancel the other rows when one raises (fatal error, early stop).
        await _cancel_all(row_tasks)
        raise


async def _cancel_all(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel and await; gathering the finished ones too marks their exceptions as seen (a cell
    that re-raised its dependency's error would otherwise be logged as never retrieved)."""
    tasks = list(tasks)
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


def _to_table(cs: CompiledStage, rows: _Rows, seed: pa.Table | None) -> pa.Table:
    by_name = {c.name: c for c in cs.stage.columns}
    arrays: dict[str, pa.Array] = {}
    fields: list[pa.Field] = []
    if seed is not None:
        for f in seed.schema:
            if f.name not in by_name:
                arrays[f.name] = pa.array(rows.live(f.name), type=f.type)
                fields.append(pa.field(f.name, f.type))
    for c in cs.stage.columns:
        for name in c.output_names:
            t = column_type(c) if name == c.name else side_type(c, name)
            try:
                arrays[name] = pa.array(rows.live(name), type=t)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise GenerationError(
                    f"column {name!r} values do not fit type {t}: {exc}"
                ) from None
            fields.append(pa.field(name, t))
    return pa.Table.from_arrays([arrays[f.name] for f in fields], schema=pa.schema(fields))


async def agenerate_rows(
    cs: CompiledStage,
    start: int,
    end: int,
    *,
    seed: pa.Table | None = None,
    cells: CellRunner | None = None,
    row_group: int | None = None,
) -> RowGroupResult:
    t0 = time.perf_counter()
    rows = _Rows(start, _seed_columns(seed, end - start), end - start)
    _batch_phase(cs, start, end, rows)
    if cs.cell_columns:
        await _cell_phase(cs, rows, cells)
    if rows.unfinished:
        raise RowGroupUnfinished(row_group, rows.unfinished, rows.unfinished_reason)
    table, dropped_columns = split_post_batch(cs.stage, _to_table(cs, rows, seed))
    return RowGroupResult(
        row_group,
        start,
        end,
        table,
        time.perf_counter() - t0,
        rows.dropped_in_order(),
        dropped_columns,
    )


def generate_rows(
    cs: CompiledStage, start: int, end: int, *, seed: pa.Table | None = None
) -> RowGroupResult:
    """Synchronous generation for stages without LLM columns."""
    return asyncio.run(agenerate_rows(cs, start, end, seed=seed))


async def agenerate_row_group(
    cs: CompiledStage,
    row_group: int,
    *,
    seed: pa.Table | None = None,
    cells: CellRunner | None = None,
) -> RowGroupResult:
    start, end = cs.stage.row_group_bounds(row_group)
    if seed is not None:
        # A row_group seed may hold fewer rows than planned (upstream drops): one row per seed row.
        end = start + seed.num_rows
    return await agenerate_rows(cs, start, end, seed=seed, cells=cells, row_group=row_group)


def generate_row_group(
    cs: CompiledStage, row_group: int, *, seed: pa.Table | None = None
) -> RowGroupResult:
    return asyncio.run(agenerate_row_group(cs, row_group, seed=seed))
