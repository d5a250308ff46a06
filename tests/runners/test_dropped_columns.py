"""run.keep_dropped_columns without Dagster: a side table per row group of the columns `drop:
true` and post_batch drop_columns removed, committed before its row group and named in its
footer; exported row for row; written for older row groups by the next materialize."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dd_assets.config import parse_workflow
from dd_assets.errors import RunError
from dd_assets.runners.export import export_dropped_columns, export_stage
from dd_assets.runners.materialize import materialize_wave
from dd_assets.runners.plan import WorkflowPlan, plan_workflow
from dd_assets.store.partition_store import PartitionStore


def _plan(keep: bool) -> WorkflowPlan:
    return plan_workflow(
        parse_workflow(
            {
                "name": "dc",
                "run": {"keep_dropped_columns": keep},
                "stages": [
                    {
                        "name": "a",
                        "num_records": 25,
                        "buffer_size": 10,
                        "columns": [
                            {"name": "n", "column_type": "sampler", "sampler_type": "uniform",
                             "params": {"low": 1, "high": 9}, "convert_to": "int"},
                            {"name": "secret", "column_type": "expression", "expr": "s{{ n }}",
                             "drop": True},
                            {"name": "scratch", "column_type": "expression", "expr": "x{{ n }}"},
                            {"name": "text", "column_type": "expression",
                             "expr": "{{ secret }}/{{ scratch }}"},
                        ],
                        "post_batch": [
                            {"processor_type": "rename", "mapping": {"scratch": "tmp"}},
                            {"processor_type": "drop_columns", "column_names": ["tmp"]},
                        ],
                    },
                    {
                        "name": "b",
                        "num_records": 25,
                        "buffer_size": 10,
                        "seed": {"stage": "a", "mode": "row_group"},
                        "columns": [{"name": "t", "column_type": "expression", "expr": "{{ text }}"}],
                    },
                ],
            }
        )
    )  # fmt: skip


def _run(plan: WorkflowPlan, store: PartitionStore) -> dict[str, list[bool]]:
    out = materialize_wave([plan["a"], plan["b"]], store, range(3))
    return {stage: [o.reused for o in outcomes] for stage, outcomes in out.items()}


def test_side_tables_are_written_and_exported_row_for_row(tmp_path: Path) -> None:
    plan = _plan(keep=True)
    store = PartitionStore(tmp_path / "data")
    _run(plan, store)
    for info in store.completed(plan["a"].ref).values():
        side = store.dropped_columns(plan["a"].ref, info)
        assert side is not None and side.column_names == ["secret", "tmp"]
        assert side.num_rows == info.rows
        assert (store.dropped_columns_dir(plan["a"].ref) / str(info.dropped_columns)).exists()
        assert "secret" not in pq.read_schema(info.path).names
    rows = tmp_path / "rows.jsonl"
    dropped = tmp_path / "dropped.jsonl"
    export_stage(plan["a"], store, "jsonl", rows)
    res = export_dropped_columns(plan["a"], store, "jsonl", dropped)
    assert res.rows == 25 and res.what == "rows of dropped columns"
    for row, side in zip(
        map(json.loads, rows.read_text().splitlines()),
        map(json.loads, dropped.read_text().splitlines()),
        strict=True,
    ):
        assert row["text"] == f"{side['secret']}/{side['tmp']}"
    # A stage that drops nothing has nothing to export, and says why.
    with pytest.raises(RunError, match="it drops no column"):
        export_dropped_columns(plan["b"], store, "jsonl", dropped)


def test_turning_it_on_later_rewrites_row_groups_with_the_same_rows(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "data")
    off = _plan(keep=False)
    _run(off, store)
    with pytest.raises(RunError, match=r"run\.keep_dropped_columns is off"):
        export_dropped_columns(off["a"], store, "jsonl", tmp_path / "d.jsonl")
    before = {rg: i.data_version for rg, i in store.completed(off["a"].ref).items()}
    on = _plan(keep=True)
    assert on["a"].ref.fingerprint == off["a"].ref.fingerprint  # a run setting, not the data
    with pytest.raises(RunError, match=r"row group\(s\) 00000-00002 were written before"):
        export_dropped_columns(on["a"], store, "jsonl", tmp_path / "d.jsonl")
    # The next materialize rewrites a's row groups (same rows: same data versions), so b,
    # built from them, stays as it is.
    assert _run(on, store) == {"a": [False] * 3, "b": [True] * 3}
    after = store.completed(on["a"].ref)
    assert {rg: i.data_version for rg, i in after.items()} == before
    assert all(i.dropped_columns for i in after.values())
    assert _run(on, store) == {"a": [True] * 3, "b": [True] * 3}


def test_a_side_table_no_footer_names_is_ignored_and_swept_by_the_rewrite(tmp_path: Path) -> None:
    plan = _plan(keep=True)
    store = PartitionStore(tmp_path / "data")
    _run(plan, store)
    ref = plan["a"].ref
    info = store.completed(ref)[1]
    # What a crash between the side table's commit and its row group's leaves.
    orphan = store.dropped_columns_dir(ref) / "dropped_00001.0123456789abcdef.parquet"
    pq.write_table(
        pq.read_table(store.dropped_columns_dir(ref) / str(info.dropped_columns)), orphan
    )
    assert store.dropped_columns(ref, store.completed(ref)[1]).num_rows == info.rows
    store.write_row_group(
        ref, 1, pq.read_table(info.path), info.stats, info.inputs, store.dropped_columns(ref, info)
    )
    names = sorted(p.name for p in store.dropped_columns_dir(ref).iterdir())
    assert orphan.name not in names and len(names) == 3
