"""Benchmark (not a test): memory and speed of the row-group engine on a sampler + expression stage.

Generates NUM_RECORDS rows (default 1,000,000) row group by row group, the way a Dagster run does,
keeping nothing but counters, and prints:

- rows/s (pass 1, untraced);
- peak RSS (resource.getrusage) before and after, and its growth as a ratio to one row group's
  Arrow table;
- the Arrow memory pool's peak as a ratio to one row group's Arrow table (pass 1, every row group);
- the tracemalloc peak (Python objects) while iterating, as a ratio to one row group's Arrow table
  and to the traced peak of a single row group (pass 2; tracemalloc slows generation ~10x, so by
  default it covers the first --trace-groups row groups; --trace-groups 0 traces all of them).

The ideal bound is O(row groups in flight): here one at a time, so the peaks over the whole run
should be about those of one row group (ratio ~1 to the single-group peak), nowhere near the
NUM_RECORDS / buffer_size multiple that holding every row would need.

    .venv/bin/python bench/engine_memory.py [--rows 1000000] [--buffer 10000] [--trace-groups 10]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
import tracemalloc

import pyarrow as pa

from dd_assets.config import parse_workflow
from dd_assets.engine import CompiledStage, compile_stage, generate_row_group


def stage(rows: int, buffer: int) -> CompiledStage:
    wf = parse_workflow(
        {
            "name": "bench",
            "stages": [
                {
                    "name": "tickets",
                    "num_records": rows,
                    "buffer_size": buffer,
                    "columns": [
                        {"name": "ticket_id", "column_type": "sampler", "sampler_type": "uuid", "params": {"prefix": "T-", "short_form": True}},
                        {"name": "product", "column_type": "sampler", "sampler_type": "category", "params": {"values": ["laptop", "phone", "tablet"], "weights": [3, 5, 2]}},
                        {"name": "issue", "column_type": "sampler", "sampler_type": "subcategory", "params": {"category": "product", "values": {"laptop": ["battery", "screen"], "phone": ["signal", "camera"], "tablet": ["charging"]}}},
                        {"name": "satisfaction", "column_type": "sampler", "sampler_type": "uniform", "params": {"low": 1, "high": 5}, "convert_to": "int"},
                        {"name": "wait_minutes", "column_type": "sampler", "sampler_type": "poisson", "params": {"mean": 12}},
                        {"name": "score", "column_type": "sampler", "sampler_type": "gaussian", "params": {"mean": 0, "stddev": 1}},
                        {"name": "opened_at", "column_type": "sampler", "sampler_type": "datetime", "params": {"start": "2026-01-01", "end": "2026-06-30", "unit": "m"}},
                        {"name": "summary", "column_type": "expression", "expr": "{{ issue }} trouble with a {{ product }} after {{ wait_minutes }} min"},
                        {"name": "escalate", "column_type": "expression", "dtype": "bool", "expr": "{{ satisfaction < 2 or wait_minutes > 20 }}"},
                    ],
                }
            ],
        }
    )  # fmt: skip
    return compile_stage(wf, "tickets")


def rss_mib() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--buffer", type=int, default=10_000)
    ap.add_argument("--trace-groups", type=int, default=10, help="0 = all row groups")
    args = ap.parse_args()

    cs = stage(args.rows, args.buffer)
    groups = cs.stage.num_row_groups
    first = generate_row_group(cs, 0)  # warm-up: imports, compiled templates, sampler tables
    one_table = first.table.nbytes
    del first
    gc.collect()
    print(
        f"stage: {args.rows:,} rows, {len(cs.stage.columns)} columns (sampler + expression),"
        f" {groups} row groups of {args.buffer:,}"
    )
    print(f"one row group's Arrow table: {one_table / 2**20:.2f} MiB")
    print(f"all rows as Arrow would be:  {one_table * groups / 2**20:.1f} MiB ({groups}x)")

    # Pass 1: every row group, untraced: speed, RSS, Arrow pool peak.
    rss0 = rss_mib()
    pool = pa.default_memory_pool()
    pool_base = pa.total_allocated_bytes()
    rows = dropped = 0
    t0 = time.perf_counter()
    for g in range(groups):
        result = generate_row_group(cs, g)
        rows += result.table.num_rows
        dropped += sum(result.dropped.values())
        del result
    seconds = time.perf_counter() - t0
    rss1 = rss_mib()
    assert rows + dropped == args.rows, (rows, dropped)
    print(f"\npass 1 (untraced, {groups} row groups)")
    print(f"  rows:            {rows:,} ({dropped} dropped) in {seconds:.1f} s = {rows / seconds:,.0f} rows/s")  # fmt: skip
    print(f"  peak RSS:        {rss0:.1f} MiB after warm-up -> {rss1:.1f} MiB after all rows")
    print(f"  RSS growth:      {rss1 - rss0:.1f} MiB = {(rss1 - rss0) * 2**20 / one_table:.1f}x one row group's table")  # fmt: skip
    arrow_peak = pool.max_memory() - pool_base
    print(f"  Arrow pool peak: {arrow_peak / 2**20:.2f} MiB = {arrow_peak / one_table:.2f}x one row group's table")  # fmt: skip
    print("RESULT " + json.dumps({"engine_rows_per_s": rows / seconds}), flush=True)

    # Pass 2: tracemalloc (Python objects: row dicts, rendered strings) while iterating.
    n_traced = groups if args.trace_groups <= 0 else min(groups, args.trace_groups)
    gc.collect()
    tracemalloc.start()
    result = generate_row_group(cs, 0)
    single_peak = tracemalloc.get_traced_memory()[1]
    del result
    tracemalloc.reset_peak()
    t0 = time.perf_counter()
    for g in range(n_traced):
        result = generate_row_group(cs, g)
        del result
    traced_seconds = time.perf_counter() - t0
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"\npass 2 (tracemalloc, {n_traced} of {groups} row groups, {traced_seconds:.1f} s)")
    print(f"  traced peak, one row group:  {single_peak / 2**20:.2f} MiB = {single_peak / one_table:.1f}x its Arrow table")  # fmt: skip
    print(f"  traced peak, {n_traced} row groups: {peak / 2**20:.2f} MiB = {peak / one_table:.1f}x one row group's table")  # fmt: skip
    print(f"  ratio to the ideal bound (1 row group in flight): {peak / single_peak:.2f}")
    print(f"  left allocated after the loop: {current / 2**10:.0f} KiB")


if __name__ == "__main__":
    main()
