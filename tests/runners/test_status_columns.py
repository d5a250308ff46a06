"""`status` from the footer index's columns (runners/status_columns.py) says exactly what the
per-footer path says, and what the checks and materialize say, on a store with missing, dropped
and stale row groups in three chained stages."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dd_assets.store.footer_index as footer_index
from dd_assets.config import parse_workflow
from dd_assets.runners.checks import run_checks
from dd_assets.runners.lineage import Lineage
from dd_assets.runners.materialize import materialize, materialize_wave
from dd_assets.runners.plan import StagePlan, WorkflowPlan, plan_workflow
from dd_assets.runners.status import StageStatus, workflow_status
from dd_assets.runners.status_columns import ColumnLineage
from dd_assets.store.footer_index import STAT_COLUMNS
from dd_assets.store.layout import FOOTER_INDEX
from dd_assets.store.partition_store import PartitionStore

CONFIG = {
    "name": "wf",
    "stages": [
        {
            "name": "people",
            "num_records": 500,
            "buffer_size": 50,
            "columns": [
                {
                    "name": "x",
                    "column_type": "sampler",
                    "sampler_type": "uniform",
                    "params": {"low": 1, "high": 5},
                    "convert_to": "int",
                },
                # x == 3 divides by zero: the row is dropped (reason "inv: expression")
                {
                    "name": "inv",
                    "column_type": "expression",
                    "expr": "{{ 10 // (x - 3) }}",
                    "dtype": "int",
                },
            ],
        },
        {
            "name": "notes",
            "num_records": 500,
            "buffer_size": 50,
            "seed": {"stage": "people", "mode": "row_group"},
            "columns": [{"name": "note", "column_type": "expression", "expr": "n{{ x }}"}],
        },
        {
            "name": "digest",
            "num_records": 20,
            "buffer_size": 10,
            "seed": {"stage": "notes", "mode": "sample"},
            "columns": [{"name": "d", "column_type": "expression", "expr": "[{{ note }}]"}],
        },
    ],
}


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every folder counts as settled (footer_index.SETTLE_NS), so an index written by a scan
    stands for its folder at once, as it does 2 s later."""
    monkeypatch.setattr(footer_index, "SETTLE_NS", -(10**18))


def _rewrite(store: PartitionStore, plan: WorkflowPlan, stage: str, rg: int, column: str) -> None:
    """Row group `rg` of `stage` regenerated with other content (as other LLM answers would)."""
    ref = plan[stage].ref
    info = store.completed(ref)[rg]
    table = pq.read_table(info.path).replace_schema_metadata(None)
    i = table.schema.get_field_index(column)
    table = table.set_column(i, column, pa.array(["changed"] * table.num_rows))
    store.write_row_group(ref, rg, table, info.stats, info.inputs)


def test_status_from_columns_is_status_from_footers(
    tmp_path: Path, settled: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = plan_workflow(parse_workflow(CONFIG))
    store = PartitionStore(tmp_path)
    materialize_wave([plan["people"], plan["notes"]], store, range(10))
    materialize(plan["digest"], store, range(2))
    _rewrite(store, plan, "people", 1, "inv")  # notes' row group 1 was built from the old one
    _rewrite(store, plan, "notes", 3, "note")  # digest sampled the old notes: both stale
    (store.files_dir(plan["people"].ref) / "batch_00009.parquet").unlink()  # missing
    # A row group whose stats lack the counts (an older writer's): planned from its row range.
    info = store.completed(plan["people"].ref)[2]
    table = pq.read_table(info.path).replace_schema_metadata(None)
    store.write_row_group(plan["people"].ref, 2, table, {"rows": table.num_rows}, info.inputs)
    (store.files_dir(plan["digest"].ref) / "batch_00001.parquet").unlink()

    footers = workflow_status(plan, PartitionStore(tmp_path), columns=False)  # writes the indexes
    for sp in plan.stages.values():
        table = PartitionStore(tmp_path).footer_table(sp.ref)
        assert table is not None and STAT_COLUMNS.keys() <= set(table.column_names), sp.name
    lineage = ColumnLineage(PartitionStore(tmp_path))  # every stage from its columns
    assert all(lineage.done_columns(sp) is not None for sp in plan.stages.values())
    decoded = _decoded_row_groups(monkeypatch)
    columns = workflow_status(plan, PartitionStore(tmp_path))
    # Current row groups are told by their inputs' text alone: only the stale ones, and one
    # whose upstream row group is missing, are decoded.
    assert sorted(decoded) == [("digest", 0), ("notes", 1), ("notes", 9)]
    assert columns == footers
    _same_text(columns, footers)

    people, notes, digest = footers
    assert (people.missing, notes.missing, digest.missing) == ([9], [], [1])
    assert people.dropped > 0 and set(people.drop_reasons) == {"inv: expression"}
    assert people.planned == 450 and notes.dropped == 0
    assert sorted(notes.stale_row_groups) == [1] and notes.stale
    assert sorted(digest.stale_row_groups) == [0]
    assert not people.stale_row_groups

    # What check and materialize see: the same missing, dropped and stale row groups.
    for st, sp in zip(footers, plan.stages.values(), strict=True):
        found = {o.name: o.numbers for o in run_checks(sp, store)}
        assert found["row_groups_complete"]["missing"] == len(st.missing)
        assert found["rows_within_drop_budget"]["dropped_rows"] == st.dropped
        assert found["rows_within_drop_budget"]["planned_rows"] == st.planned
        if sp.upstreams:
            assert found["row_groups_current"]["stale"] == len(st.stale_row_groups)
        current = Lineage(store).current(sp)
        assert sorted(current) == sorted(set(range(sp.ref.num_row_groups)) - set(st.missing) - set(st.stale_row_groups))  # fmt: skip


def test_an_index_that_does_not_stand_for_its_folder_is_not_used(
    tmp_path: Path, settled: None
) -> None:
    plan = plan_workflow(parse_workflow(CONFIG))
    store = PartitionStore(tmp_path)
    materialize_wave([plan["people"]], store, range(4))
    ref = plan["people"].ref
    PartitionStore(tmp_path).completed(ref)  # writes the index
    assert PartitionStore(tmp_path).footer_table(ref) is not None
    (store.files_dir(ref) / "batch_00002.parquet").unlink()  # the folder changed since
    assert PartitionStore(tmp_path).footer_table(ref) is None
    (people,) = workflow_status(_only(plan, "people"), store)
    assert people.missing[:2] == [2, 4] and people.done == 3


def test_an_index_written_before_the_stat_columns_gives_the_same_status(
    tmp_path: Path, settled: None
) -> None:
    """An index without STAT_COLUMNS (written before they were): the stats are decoded."""
    plan = plan_workflow(parse_workflow(CONFIG))
    store = PartitionStore(tmp_path)
    materialize_wave([plan["people"]], store, range(5))
    one = _only(plan, "people")
    before = workflow_status(one, PartitionStore(tmp_path), columns=False)
    path = store.stage_dir(plan["people"].ref) / FOOTER_INDEX
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    meta = {k: v for k, v in table.schema.metadata.items() if k != b"stat_columns"}
    old = table.drop_columns(list(STAT_COLUMNS)).replace_schema_metadata(meta)
    tmp = path.with_name("old-index")  # then replaced, as the store writes it (never in place)
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, old.schema) as writer:
        writer.write_table(old)
    os.replace(tmp, path)
    assert STAT_COLUMNS.keys().isdisjoint(PartitionStore(tmp_path).footer_table(one["people"].ref).column_names)  # fmt: skip
    assert workflow_status(one, PartitionStore(tmp_path)) == before
    assert before[0].dropped > 0


def _decoded_row_groups(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """(stage, row group) of every row group whose recorded inputs status decodes and hands
    to `stale_reason` from now on (the others it tells current by their text)."""
    decoded: list[tuple[str, int]] = []
    reason = ColumnLineage.stale_reason

    def counted(self: ColumnLineage, sp: StagePlan, info: Any) -> str | None:
        decoded.append((sp.name, info.row_group))
        return reason(self, sp, info)

    monkeypatch.setattr(ColumnLineage, "stale_reason", counted)
    return decoded


def _only(plan: WorkflowPlan, stage: str) -> WorkflowPlan:
    return dataclasses.replace(plan, stages={stage: plan[stage]})


def _same_text(a: list[StageStatus], b: list[StageStatus]) -> None:
    """What the command prints from them (the reasons and drop texts) is the same too."""
    for x, y in zip(a, b, strict=True):
        assert (x.missing_text, x.drops_text, x.stale_reason) == (
            y.missing_text,
            y.drops_text,
            y.stale_reason,
        )


def test_a_join_of_two_upstreams_is_told_current_by_text_and_stale_when_one_changes(
    tmp_path: Path, settled: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two upstreams (a join): the recorded inputs' text holds both, in key order; a current row
    group is not decoded, and one whose branch was regenerated is stale, naming that branch."""
    size = {"num_records": 40, "buffer_size": 10}
    cfg = {
        "name": "wf",
        "stages": [
            {
                "name": "people",
                **size,
                "columns": [{"name": "pid", "column_type": "sampler", "sampler_type": "uuid"}],
            },
            *(
                {
                    "name": name,
                    **size,
                    "seed": {"stage": "people", "mode": "row_group"},
                    "columns": [
                        {"name": col, "column_type": "expression", "expr": f"{col}-{{{{ pid }}}}"}
                    ],
                }
                for name, col in (("zbios", "bio"), ("atags", "tag"))
            ),
            {
                "name": "cards",
                **size,
                "seed": {"stages": ["zbios", "atags"], "keys": "pid"},
                "columns": [{"name": "card", "column_type": "expression", "expr": "{{ bio }}"}],
            },
        ],
    }
    plan = plan_workflow(parse_workflow(cfg))
    store = PartitionStore(tmp_path)
    materialize_wave([plan[s] for s in ("people", "zbios", "atags", "cards")], store, range(4))
    _rewrite(store, plan, "zbios", 2, "bio")
    footers = workflow_status(plan, PartitionStore(tmp_path), columns=False)
    decoded = _decoded_row_groups(monkeypatch)
    columns = workflow_status(plan, PartitionStore(tmp_path))
    assert columns == footers
    _same_text(columns, footers)
    assert decoded == [("cards", 2)]
    cards = footers[-1]
    assert sorted(cards.stale_row_groups) == [2] and "'zbios'" in cards.stale_reason
