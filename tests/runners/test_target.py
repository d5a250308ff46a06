"""target_records without Dagster: the config rules, the final fingerprint, and finalize taking
exactly the first N rows that pass, in row order, from the row groups generated so far (or
refusing, before sealing, with the numbers)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dd_assets.config import parse_workflow
from dd_assets.config.fingerprint import workflow_fingerprints
from dd_assets.errors import ConfigError
from dd_assets.runners.checks import run_checks
from dd_assets.runners.finalize import (
    TargetNotReachedError,
    finalize_stage,
    read_final,
    target_progress,
)
from dd_assets.runners.materialize import materialize
from dd_assets.runners.plan import StagePlan, plan_workflow
from dd_assets.runners.status import workflow_status
from dd_assets.store.partition_store import PartitionStore

KEEP_LOW = {"processor_type": "filter", "expr": "{{ score <= 3 }}"}


def _config(num_records: int = 400, target: int | None = 50, **stage: object) -> dict:
    cand = {
        "name": "cand",
        "num_records": num_records,
        "buffer_size": 20,
        "columns": [
            {"name": "rid", "column_type": "sampler", "sampler_type": "uuid"},
            {"name": "score", "column_type": "sampler", "sampler_type": "uniform",
             "params": {"low": 1, "high": 10}, "convert_to": "int"},
        ],
        "finalize": [KEEP_LOW],
        **stage,
    }  # fmt: skip
    if target is not None:
        cand["target_records"] = target
    return {"name": "tgt", "stages": [cand]}


def _plan(cfg: dict) -> StagePlan:
    return plan_workflow(parse_workflow(cfg))["cand"]


def _generate_until_reached(p: StagePlan, store: PartitionStore, chunk: int = 3) -> int:
    """What `dd-assets materialize` does: row groups in order, a chunk at a time."""
    rgs = list(range(p.ref.num_row_groups))
    for i in range(0, len(rgs), chunk):
        if target_progress(p, store).reached:
            break
        materialize(p, store, rgs[i : i + chunk])
    return len(store.completed(p.ref))


def test_config_rules() -> None:
    with pytest.raises(ConfigError, match="target_records counts the rows that pass the finalize"):
        parse_workflow(_config(finalize=[]))
    with pytest.raises(ConfigError, match=r"target_records \(50\) is more than num_records \(40\)"):
        parse_workflow(_config(num_records=40))
    cfg = _config()
    cfg["stages"].append(
        {
            "name": "down",
            "num_records": 400,
            "buffer_size": 20,
            "seed": {"stage": "cand", "mode": "row_group"},
            "columns": [{"name": "x", "column_type": "expression", "expr": "{{ rid }}"}],
        }
    )
    with pytest.raises(ConfigError, match="seed 'down' with mode: sample"):
        parse_workflow(cfg)


def test_target_records_changes_only_the_final_fingerprint() -> None:
    without = workflow_fingerprints(parse_workflow(_config(target=None)))["cand"]
    fifty = workflow_fingerprints(parse_workflow(_config(target=50)))["cand"]
    sixty = workflow_fingerprints(parse_workflow(_config(target=60)))["cand"]
    assert without.hex == fifty.hex == sixty.hex  # the row groups stay
    assert len({without.final_hex, fifty.final_hex, sixty.final_hex}) == 3


def test_exactly_the_first_n_passing_rows_in_row_order(tmp_path: Path) -> None:
    p = _plan(_config())
    store = PartitionStore(tmp_path / "a")
    generated = _generate_until_reached(p, store)
    res = finalize_stage(p, store)
    final = pq.read_table(res.path)
    assert final.num_rows == res.rows_out == 50
    # The first 50 rows with score <= 3, in row order, of every candidate row generated.
    done = store.completed(p.ref)
    every = pa.concat_tables(pq.read_table(done[rg].path) for rg in sorted(done)).to_pylist()
    assert final.to_pylist() == [r for r in every if r["score"] <= 3][:50]
    used = read_final(store, p).info["target"]["row_groups_used"]
    assert used <= generated < p.ref.num_row_groups
    # Only those row groups are needed: status and the completeness check say so.
    status = workflow_status(plan_workflow(p.workflow), store)[0]
    assert status.missing == [] and "reached with row groups 00000-" in status.notes[0]
    checks = {c.name: c for c in run_checks(p, store)}
    assert checks["row_groups_complete"].passed, checks["row_groups_complete"].description
    # Deterministic: another store, generated in other chunks, gives the same 50 rows.
    other = PartitionStore(tmp_path / "b")
    _generate_until_reached(p, other, chunk=1)
    assert pq.read_table(finalize_stage(p, other).path).equals(final)


def test_not_reached_yet_or_budget_spent_refuses_before_sealing(tmp_path: Path) -> None:
    p = _plan(_config())
    store = PartitionStore(tmp_path)
    materialize(p, store, [0, 1])
    with pytest.raises(TargetNotReachedError, match="row group 00002 is not on disk"):
        finalize_stage(p, store)
    assert not store.state(p.ref).get("finalize_state")  # not sealed
    small = _plan(_config(num_records=60))
    materialize(small, store, range(small.ref.num_row_groups))
    with pytest.raises(TargetNotReachedError) as err:
        finalize_stage(small, store)
    text = str(err.value)
    passed = target_progress(small, store).passed
    assert "the candidate budget is spent: all 3 row groups (num_records 60)" in text
    assert f"{passed} of the 60 candidate rows" in text and "fewer than target_records 50" in text
    assert f"filter 60->{passed}" in text and "Raise num_records" in text
    assert not store.state(small.ref).get("finalize_state")
    # Raising the budget keeps the row groups (same fingerprint) and adds the next ones.
    bigger = _plan(_config(num_records=400))
    assert bigger.ref.fingerprint == small.ref.fingerprint
    _generate_until_reached(bigger, store)
    assert pq.read_table(finalize_stage(bigger, store).path).num_rows == 50
