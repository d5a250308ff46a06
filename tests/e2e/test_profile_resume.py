"""Profiling a stage of 20 row groups holds about one row group in memory. (That the profile of a
stage killed with -9 mid-run and resumed equals the profile of an uninterrupted run is asserted
in tests/e2e/test_crash_resume.py, on the kill + resume it already makes.)"""

from __future__ import annotations

import gc
import shutil
import tracemalloc
from pathlib import Path

import pytest

from dd_assets.config import load_workflow
from dd_assets.runners.materialize import materialize
from dd_assets.runners.plan import plan_workflow
from dd_assets.runners.profile import stage_profile
from dd_assets.runners.profile.partials import row_group_partial
from dd_assets.store.partition_store import PartitionStore
from dd_assets.testing.workflows import write_config

pytestmark = [pytest.mark.slow]

# 20 row groups, as with 1,000,000 rows of 50,000 (which took 5x longer, most of it under
# tracemalloc, for the same ratios: peak / one row group's 1.03 vs 1.13 here, peak x 5 / all the
# data 0.49 vs 0.55, bounds 2 and 1).
MEM_ROWS, MEM_BUFFER = 200_000, 10_000


def test_profiling_twenty_row_groups_holds_one_row_group(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "wf.yaml",
        {
            "name": "big",
            "stages": [
                {
                    "name": "people",
                    "num_records": MEM_ROWS,
                    "buffer_size": MEM_BUFFER,
                    "columns": [
                        {
                            "name": "rid",
                            "column_type": "sampler",
                            "sampler_type": "uuid",
                            "params": {},
                        },
                        {
                            "name": "cat",
                            "column_type": "sampler",
                            "sampler_type": "category",
                            "params": {"values": ["a", "b", "c"], "weights": [1, 2, 3]},
                        },
                        {
                            "name": "x",
                            "column_type": "sampler",
                            "sampler_type": "uniform",
                            "params": {"low": 0, "high": 1000},
                            "convert_to": "int",
                        },
                        {
                            "name": "g",
                            "column_type": "sampler",
                            "sampler_type": "gaussian",
                            "params": {"mean": 0, "stddev": 1},
                        },
                    ],
                }
            ],
        },
    )
    plan = plan_workflow(load_workflow(cfg))["people"]
    store = PartitionStore(tmp_path / "dd-data")
    materialize(plan, store, range(plan.ref.num_row_groups))
    shutil.rmtree(store.profile_dir(plan.ref))  # profile from the files, not the cache
    infos = store.completed(plan.ref)
    # what holding every row in memory would take
    data_bytes = store.dataset(plan.ref, [0]).to_table().nbytes * len(infos)
    gc.collect()
    tracemalloc.start()
    try:
        row_group_partial(store, plan.ref, infos[0])
        one_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        prof = stage_profile(plan, store)
        all_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert prof.num_records == MEM_ROWS and prof.row_groups_done == 20
    assert prof.column("cat")["num_unique"] == 3
    # about one row group's worth over all 20, far below the stage's 200,000 rows
    assert all_peak < 2 * one_peak, (all_peak, one_peak)
    assert all_peak * 5 < data_bytes, (all_peak, data_bytes)
