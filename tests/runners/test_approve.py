"""Review gates without Dagster (runners/approve.py, store/approvals.py): a file is checked
against the stage's schema (the column named otherwise, nothing stored), stored atomically
beside the fingerprint folder, read by row_group and sample descendants, recorded in their
inputs, and cleared by moving it aside."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from dd_assets.config import parse_workflow
from dd_assets.runners.approve import ApprovalError, approval_metadata, approve, clear, readers
from dd_assets.runners.export import export_stage
from dd_assets.runners.finalize import finalize_stage
from dd_assets.runners.lineage import Lineage
from dd_assets.runners.materialize import materialize, materialize_wave
from dd_assets.runners.plan import WorkflowPlan, plan_workflow
from dd_assets.runners.rerun import rerun_stages
from dd_assets.runners.status import workflow_status
from dd_assets.store.approvals import read_approval
from dd_assets.store.partition_store import PartitionStore
from dd_assets.testing.workflows import snapshot


def _config(*, join: bool = False, finalize: bool = False) -> dict:
    a = {
        "name": "a",
        "num_records": 30,
        "buffer_size": 10,
        "columns": [
            {"name": "rid", "column_type": "sampler", "sampler_type": "uuid"},
            {"name": "n", "column_type": "sampler", "sampler_type": "uniform",
             "params": {"low": 1, "high": 9}, "convert_to": "int"},
            {"name": "at", "column_type": "sampler", "sampler_type": "datetime",
             "params": {"start": "2024-01-01", "end": "2024-12-31"}},
            {"name": "who", "column_type": "sampler", "sampler_type": "person"},
            {"name": "text", "column_type": "expression", "expr": "n={{ n }}"},
        ],
    }  # fmt: skip
    if finalize:
        a["finalize"] = [{"processor_type": "filter", "expr": "{{ n > 2 }}"}]
    stages = [
        a,
        {
            "name": "b",
            "num_records": 30,
            "buffer_size": 10,
            "seed": {"stage": "a", "mode": "row_group"},
            "columns": [{"name": "line", "column_type": "expression", "expr": "{{ text }}!"}],
        },
        {
            "name": "c",
            "num_records": 10,
            "buffer_size": 10,
            "seed": {"stage": "a", "mode": "sample"},
            "columns": [{"name": "pick", "column_type": "expression", "expr": "<{{ text }}>"}],
        },
    ]
    if join:
        stages.append(
            {
                "name": "m",
                "num_records": 30,
                "buffer_size": 10,
                "columns": [{"name": "rid", "column_type": "sampler", "sampler_type": "uuid"}],
            }
        )
    return {"name": "gate", "stages": stages}


def _run(plan: WorkflowPlan, store: PartitionStore) -> None:
    materialize_wave([plan["a"], plan["b"]], store, range(3))
    if plan["a"].finalizes:
        finalize_stage(plan["a"], store)
    materialize(plan["c"], store, range(1))


def _a_table(plan: WorkflowPlan, store: PartitionStore) -> pa.Table:
    return pa.concat_tables(
        pq.read_table(i.path) for _, i in sorted(store.completed(plan["a"].ref).items())
    ).replace_schema_metadata(None)


@pytest.fixture
def gate(tmp_path: Path) -> tuple[WorkflowPlan, PartitionStore]:
    plan = plan_workflow(parse_workflow(_config()))
    store = PartitionStore(tmp_path / "data")
    _run(plan, store)
    return plan, store


def test_an_unchanged_file_changes_nothing(gate, tmp_path: Path) -> None:
    plan, store = gate
    path = tmp_path / "same.parquet"
    pq.write_table(_a_table(plan, store), path)
    approval = approve(plan, "a", store, path)
    assert approval.rows == 30 and approval.replaces == "row_groups"
    # The same rows as generated: the same versions, so nothing below is stale.
    lineage = Lineage(store)
    assert lineage.stale(plan["b"]) == {} and lineage.stale(plan["c"]) == {}


def _edited_export(plan: WorkflowPlan, store: PartitionStore, fmt: str, tmp_path: Path) -> Path:
    """a exported as a reviewer gets it (`dd-assets export`), row 12's text edited and only
    the first 25 rows kept."""
    path = tmp_path / f"reviewed.{fmt}"
    export_stage(plan["a"], store, fmt, path)
    if fmt == "parquet":
        table = pq.read_table(path)
        rows = table.to_pylist()
        rows[12]["text"] = "EDITED"
        pq.write_table(pa.Table.from_pylist(rows[:25], table.schema), path)
    elif fmt == "jsonl":
        lines = path.read_text().splitlines()
        row = json.loads(lines[12])
        lines[12] = json.dumps({**row, "text": "EDITED"})
        path.write_text("\n".join(lines[:25]) + "\n")
    else:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
        rows[13][rows[0].index("text")] = "EDITED"
        with open(path, "w", newline="") as fh:
            csv.writer(fh).writerows(rows[:26])
    return path


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_an_edited_file_seeds_row_group_and_sample_descendants(gate, tmp_path: Path, fmt) -> None:
    plan, store = gate
    generated = _a_table(plan, store)
    path = _edited_export(plan, store, fmt, tmp_path)
    before = snapshot(store.root)
    approve(plan, "a", store, path)
    # The stage's own row groups are untouched; b's row groups 1 and 2 and c are stale.
    assert snapshot(store.root) == before
    lineage = Lineage(store)
    assert sorted(lineage.stale(plan["b"])) == [1, 2]
    assert "now approved output" in lineage.stale(plan["b"])[1]
    assert sorted(lineage.stale(plan["c"])) == [0]
    outcomes = materialize(plan["b"], store, range(3))
    assert [o.reused for o in outcomes] == [True, False, False]
    b = _table(store, plan, "b")
    assert b.num_rows == 25 and b.column("line").to_pylist()[12] == "EDITED!"
    assert b.column("at").to_pylist() == generated.column("at").to_pylist()[:25]
    assert b.column("who").to_pylist() == generated.column("who").to_pylist()[:25]
    materialize(plan["c"], store, range(1))
    assert set(_table(store, plan, "c").column("rid").to_pylist()) <= set(
        b.column("rid").to_pylist()
    )
    assert Lineage(store).stale(plan["b"]) == {} and Lineage(store).stale(plan["c"]) == {}
    # status and the asset metadata show it; export exports it.
    status = {s.stage: s for s in workflow_status(plan, store)}
    assert any("approved: 25 rows" in n for n in status["a"].notes)
    assert approval_metadata(plan["a"], store)["approved_rows"] == 25
    out = export_stage(plan["a"], store, "jsonl", tmp_path / "out.jsonl")
    assert out.rows == 25 and out.what == "approved rows"
    # --clear: a hands down its generated rows again, b's regenerated rows equal the first ones.
    moved = clear(plan, "a", store)
    assert moved is not None and moved.exists() and read_approval(store, plan["a"].ref) is None
    assert sorted(Lineage(store).stale(plan["b"])) == [1, 2]
    materialize(plan["b"], store, range(3))
    assert _table(store, plan, "b").column("line").to_pylist() == [
        f"{t}!" for t in generated.column("text").to_pylist()
    ]


def _table(store: PartitionStore, plan: WorkflowPlan, stage: str) -> pa.Table:
    done = store.completed(plan[stage].ref)
    return pa.concat_tables(pq.read_table(done[rg].path) for rg in sorted(done))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.set_column(1, "n", pa.array([str(v) for v in t.column("n").to_pylist()])),
         "column 'n' is string, the stage's schema says int64"),
        (lambda t: t.drop_columns(["text"]), "missing column(s) 'text' (string)"),
        (lambda t: t.append_column("extra", pa.array([1] * t.num_rows)), "extra column(s) 'extra'"),
        (lambda t: t.set_column(1, "n", pa.array([1.5] * t.num_rows)),
         "column 'n' is double, the stage's schema says int64"),
    ],
)  # fmt: skip
def test_a_parquet_that_does_not_fit_is_refused_naming_the_column(
    gate, tmp_path: Path, change, message
) -> None:
    plan, store = gate
    path = tmp_path / "bad.parquet"
    pq.write_table(change(_a_table(plan, store)), path)
    before = sorted(p.name for p in store.stage_base("gate", "a").iterdir())
    with pytest.raises(
        ApprovalError, match=f"{path}.*{message.replace('(', '.').replace(')', '.')}"
    ):
        approve(plan, "a", store, path)
    assert sorted(p.name for p in store.stage_base("gate", "a").iterdir()) == before


def test_a_frame_saved_by_pandas_after_filtering_keeps_no_index_column(gate, tmp_path) -> None:
    plan, store = gate
    kept = _a_table(plan, store).slice(3)
    # What DataFrame.to_parquet writes for a frame whose index is not a plain range.
    table = kept.append_column("__index_level_0__", pa.array(range(3, 30)))
    pandas_meta = {"index_columns": ["__index_level_0__"], "columns": []}
    table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
    path = tmp_path / "filtered.parquet"
    pq.write_table(table, path)
    assert approve(plan, "a", store, path).read().equals(kept.replace_schema_metadata(None))


def test_text_files_name_the_column_and_row_of_a_bad_value(gate, tmp_path: Path) -> None:
    plan, store = gate
    rows = _a_table(plan, store).to_pylist()
    path = tmp_path / "bad.jsonl"
    rows[4]["n"] = "four"
    path.write_text("\n".join(json.dumps(r, default=str) for r in rows))
    with pytest.raises(ApprovalError, match="column 'n' row 4: \"four\" is not int64"):
        approve(plan, "a", store, path)
    table = _a_table(plan, store).drop_columns(["who"])  # csv cannot hold the struct column
    csv_path = tmp_path / "bad.csv"
    pacsv.write_csv(table, csv_path)
    with pytest.raises(ApprovalError, match=r"missing column\(s\) 'who'"):
        approve(plan, "a", store, csv_path)
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ApprovalError, match=r"must end in \.parquet, \.csv or \.jsonl"):
        approve(plan, "a", store, tmp_path / "x.txt")
    with pytest.raises(ApprovalError, match="not found"):
        approve(plan, "a", store, tmp_path / "nope.csv")


def test_more_rows_than_row_group_descendants_can_read_is_refused(gate, tmp_path: Path) -> None:
    plan, store = gate
    table = _a_table(plan, store)
    path = tmp_path / "long.parquet"
    pq.write_table(pa.concat_tables([table, table.slice(0, 5)]), path)
    with pytest.raises(ApprovalError, match=r"35 rows, more than num_records of stage 'a' \(30\)"):
        approve(plan, "a", store, path)
    pq.write_table(table.slice(0, 0), path)
    with pytest.raises(ApprovalError, match="has no rows"):
        approve(plan, "a", store, path)


def test_a_join_of_approved_and_generated_row_groups_is_refused(tmp_path: Path) -> None:
    cfg = _config(join=True)
    # m makes its own rids; a join pairs b (cut from a's approval) with a stage that is not.
    cfg["stages"][1]["columns"].append({"name": "k", "column_type": "expression", "expr": "1"})
    cfg["stages"].append(
        {
            "name": "j",
            "num_records": 30,
            "buffer_size": 10,
            "seed": {"stages": ["b", "b2"], "keys": "rid"},
            "columns": [{"name": "jj", "column_type": "expression", "expr": "{{ line }}"}],
        }
    )
    cfg["stages"].append(
        {
            "name": "b2",
            "num_records": 30,
            "buffer_size": 10,
            "seed": {"stage": "a", "mode": "row_group"},
            "columns": [{"name": "w", "column_type": "expression", "expr": "w"}],
        }
    )
    plan = plan_workflow(parse_workflow(cfg))
    store = PartitionStore(tmp_path / "data")
    materialize_wave([plan["a"], plan["b"], plan["b2"], plan["j"]], store, range(3))
    # Both joined stages are cut from the same approval: allowed.
    path = tmp_path / "ok.parquet"
    pq.write_table(_a_table(plan, store).slice(3), path)
    approve(plan, "a", store, path)
    materialize_wave([plan["b"], plan["b2"], plan["j"]], store, range(3))
    # An approval of b alone would pair its cut rows with b2's generated ones: refused.
    pq.write_table(_table(store, plan, "b").replace_schema_metadata(None).slice(1), path)
    with pytest.raises(
        ApprovalError,
        match=r"stage 'j' joins 'b' \(cut from the approved output of 'b'\), 'b2' \(cut from the"
        r" approved output of 'a'\)",
    ):
        approve(plan, "b", store, path)
    assert read_approval(store, plan["b"].ref) is None


def test_a_finalized_stage_approves_its_final_output(tmp_path: Path) -> None:
    plan = plan_workflow(parse_workflow(_config(finalize=True)))
    store = PartitionStore(tmp_path / "data")
    _run(plan, store)
    final = pq.read_table(store.final_paths(plan["a"].ref)[0])
    assert readers(plan, "a").read == [("c", "sample")] and readers(plan, "a").unaffected == ["b"]
    path = tmp_path / "final.parquet"
    pq.write_table(final.slice(0, 5), path)
    approval = approve(plan, "a", store, path)
    assert approval.replaces == "final"
    # b reads a's row groups (row_group seed), which the approval does not replace.
    assert Lineage(store).stale(plan["b"]) == {} and list(Lineage(store).stale(plan["c"])) == [0]
    materialize(plan["c"], store, range(1))
    c = pq.read_table(store.completed(plan["c"].ref)[0].path)
    assert set(c.column("rid").to_pylist()) == set(final.slice(0, 5).column("rid").to_pylist())
    # A file with the raw row groups' columns is not the final output's shape... same here, but
    # types are checked against the final output's.
    bad = final.set_column(1, "n", pa.array([str(v) for v in final.column("n").to_pylist()]))
    pq.write_table(bad, path)
    with pytest.raises(ApprovalError, match="column 'n' is string"):
        approve(plan, "a", store, path)


def test_rerun_set_is_the_stage_and_its_descendants_unless_one_is_approved(gate, tmp_path) -> None:
    plan, store = gate
    assert rerun_stages(plan, store, "a") == ["a", "b", "c"]
    assert rerun_stages(plan, store, "b") == ["b"]
    path = tmp_path / "b.parquet"
    b = pq.read_table(store.completed(plan["b"].ref)[0].path).replace_schema_metadata(None)
    pq.write_table(b, path)
    approve(plan, "b", store, path)
    with pytest.raises(Exception, match="--rerun-from 'a' would regenerate 'b', whose approved"):
        rerun_stages(plan, store, "a")
    assert rerun_stages(plan, store, "c") == ["c"]
