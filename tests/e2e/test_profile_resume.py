"""The profile of a stage killed with -9 mid-run and resumed equals the profile of an
uninterrupted run (partials are a function of each row group's content, merged in row-group
order), and profiling a 1,000,000-row stage holds about one row group in memory."""

from __future__ import annotations

import gc
import os
import random
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
from dd_assets.testing.workflows import (
    isolated_env,
    kill_after,
    people_config,
    run_materialize,
    write_config,
)

pytestmark = [pytest.mark.slow]


def _profile(cfg: Path, root: Path) -> dict:
    plan = plan_workflow(load_workflow(cfg))["people"]
    return stage_profile(plan, PartitionStore(root)).to_dict()


def test_profile_after_kill9_and_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    config = people_config(num_records=6000, buffer_size=300, partitions_per_run=6)
    config["stages"][0]["drift"] = {"share_tolerance": 0.02}
    cfg = write_config(tmp_path / "wf.yaml", config)
    root = tmp_path / "dd-data"
    env = isolated_env(tmp_path, cfg)
    kill_after(cfg, env, root, random.Random(os.getpid()).randint(1, 15))
    killed = _profile(cfg, root)  # a partial profile of what landed before the kill
    assert 0 < killed["num_records"] < 6000
    out = run_materialize(cfg, env)
    assert out.returncode == 0, out.stderr

    ref_root = tmp_path / "reference"  # uninterrupted, in this process (the runner the CLI drives)
    materialize(plan_workflow(load_workflow(cfg))["people"], PartitionStore(ref_root), range(20))
    resumed, reference = _profile(cfg, root), _profile(cfg, ref_root)
    assert resumed["num_records"] == 6000 and resumed["percent_complete"] == 100.0
    assert resumed == reference
    # and whatever the caches hold: recomputed from the files, the same again
    plan = plan_workflow(load_workflow(cfg))["people"]
    shutil.rmtree(PartitionStore(root).profile_dir(plan.ref))
    assert _profile(cfg, root) == reference


MEM_ROWS, MEM_BUFFER = 1_000_000, 50_000


def test_profiling_a_million_rows_holds_one_row_group(tmp_path: Path) -> None:
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
    # about one row group's worth over all 20, far below the stage's 1,000,000 rows
    assert all_peak < 2 * one_peak, (all_peak, one_peak)
    assert all_peak * 5 < data_bytes, (all_peak, data_bytes)
