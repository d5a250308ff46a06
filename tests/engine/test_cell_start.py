"""A row group's cells start a few rows per turn of the event loop (issue 17)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from dd_assets.config import parse_workflow
from dd_assets.engine import agenerate_rows, compile_stage
from dd_assets.engine.rowgroup import ROWS_PER_STEP


def test_a_row_groups_first_cells_start_a_few_rows_per_turn_of_the_event_loop() -> None:
    """The loop that starts a row group's cells also reads answers and refills freed request
    slots: all 200 rows' first cells in one turn stopped it for ~70 ms (bench/llm_chain.py
    --timeline: the budget dipped every time a row group began). A ticker that runs once per
    turn sees at most ROWS_PER_STEP cells begin between two of its ticks."""
    wf = parse_workflow(
        {
            "name": "w",
            "models": {"m": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}},
            "stages": [
                {
                    "name": "s",
                    "num_records": 200,
                    "buffer_size": 200,
                    "columns": [
                        {"name": "x", "column_type": "sampler", "sampler_type": "uuid"},
                        {
                            "name": "q",
                            "column_type": "llm-text",
                            "model_alias": "m",
                            "prompt": "Ask about {{ x }}",
                        },
                    ],
                }
            ],
        }
    )
    cs = compile_stage(wf, "s")
    log: list[str] = []

    async def cells(col: Any, row_index: int, row: dict[str, Any]) -> str:
        log.append("cell")
        await asyncio.sleep(0)
        return f"answer {row_index}"

    async def main() -> Any:
        async def ticker() -> None:
            while True:
                log.append("tick")
                await asyncio.sleep(0)

        tick = asyncio.ensure_future(ticker())
        try:
            return await agenerate_rows(cs, 0, 200, cells=cells)
        finally:
            tick.cancel()

    result = asyncio.run(main())
    assert result.table.column("q").to_pylist() == [f"answer {i}" for i in range(200)]
    assert log.count("cell") == 200
    longest = max(len(list(run)) for kind, run in itertools.groupby(log) if kind == "cell")
    assert longest <= ROWS_PER_STEP
