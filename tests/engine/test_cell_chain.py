"""A row whose cell columns each read the one before runs them in its own task, one after the
other (issue 17: a task per cell and an `asyncio.wait` per row were a third of the objects the GC
walks, and CPU per request). What a row ends as must not change: these expectations are the
task-per-cell engine's, and hold for both kinds of stage (the second is not a chain)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dd_assets.config import parse_workflow
from dd_assets.engine import agenerate_rows, compile_stage
from dd_assets.engine.rowgroup import CellFailed, CellUnfinished, RowGroupUnfinished

ROWS = 8


def _stage(chain: bool) -> Any:
    """x -> a (LLM) -> b (LLM) -> c (expression); without `chain`, b reads x, not a, and c
    reads a and b."""

    def llm(name: str, prompt: str) -> dict[str, Any]:
        return {"name": name, "column_type": "llm-text", "model_alias": "m", "prompt": prompt}

    wf = parse_workflow(
        {
            "name": "w",
            "models": {"m": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}},
            "stages": [
                {
                    "name": "s",
                    "num_records": ROWS,
                    "buffer_size": ROWS,
                    "columns": [
                        {"name": "x", "column_type": "sampler", "sampler_type": "uuid"},
                        llm("a", "A {{ x }}"),
                        llm("b", "B {{ a }}" if chain else "B {{ x }}"),
                        {
                            "name": "c",
                            "column_type": "expression",
                            "expr": "{{ b }}!" if chain else "{{ a }} {{ b }}",
                        },
                    ],
                }
            ],
        }
    )
    return compile_stage(wf, "s")


def _cells(faults: dict[tuple[str, int], str], tasks: list[int] | None = None) -> Any:
    """Answers every cell, but for `faults`: (column, row) -> "failed" or "unfinished". Notes
    in `tasks` how many tasks are alive at each call."""

    async def cells(col: Any, row_index: int, row: dict[str, Any]) -> str:
        if tasks is not None:
            tasks.append(len(asyncio.all_tasks()))
        await asyncio.sleep(0)
        fault = faults.get((col.name, row_index))
        if fault == "failed":
            raise CellFailed("rejected", f"{col.name} refused row {row_index}", 400)
        if fault == "unfinished":
            raise CellUnfinished(f"{col.name} row {row_index}: 503s outlasted the retries")
        return f"{col.name}{row_index}"

    return cells


@pytest.mark.parametrize("chain", [True, False], ids=["chain", "not a chain"])
def test_a_failing_cell_drops_its_row_under_its_own_column(chain: bool) -> None:
    cs = _stage(chain)
    faults = {("a", 1): "failed", ("b", 4): "failed", ("a", 6): "failed", ("b", 6): "failed"}
    tasks: list[int] = []
    result = asyncio.run(agenerate_rows(cs, 0, ROWS, cells=_cells(faults, tasks)))
    # a task per row (and the run's own), or besides it one per cell
    assert max(tasks) <= ROWS + 1 if chain else max(tasks) > ROWS * 3
    assert [(d.row, d.column, d.kind) for d in result.drops] == [
        (1, "a", "rejected"),
        (4, "b", "rejected"),
        (6, "a", "rejected"),  # the first column in column order, whatever finished first
    ]
    kept = [i for i in range(ROWS) if i not in (1, 4, 6)]
    assert result.table.column("a").to_pylist() == [f"a{i}" for i in kept]
    assert result.table.column("c").to_pylist() == [
        f"b{i}!" if chain else f"a{i} b{i}" for i in kept
    ]


@pytest.mark.parametrize(
    ("chain", "cells_unfinished"),
    # row 2's a: a and every column waiting for it (chain: b and c; else c) are unfinished;
    # row 3's b: b and c. In the chain, row 5 is dropped by a, so its b is never asked.
    [(True, 3 + 2), (False, 2 + 2)],
    ids=["chain", "not a chain"],
)
def test_unfinished_cells_are_counted_with_every_column_that_waited_for_them(
    chain: bool, cells_unfinished: int
) -> None:
    cs = _stage(chain)
    faults = {("a", 2): "unfinished", ("b", 3): "unfinished"}
    if chain:
        faults |= {("a", 5): "failed", ("b", 5): "unfinished"}
    with pytest.raises(RowGroupUnfinished) as info:
        asyncio.run(agenerate_rows(cs, 0, ROWS, cells=_cells(faults)))
    assert info.value.cells == cells_unfinished
