"""`check_row_group` (runners/checks.py): one row group's footer, schema and drop budget, the
check the Dagster assets record per partition as each row group lands."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from dd_assets.config import parse_workflow
from dd_assets.runners.checks import (
    ROW_GROUP_CHECK,
    check_row_group,
    expected_schema,
    parquet_schema,
)
from dd_assets.runners.materialize import materialize
from dd_assets.runners.plan import plan_workflow
from dd_assets.store.footer import read_footer
from dd_assets.store.partition_store import PartitionStore
from dd_assets.testing.workflows import people_config


def _written(tmp_path: Path, **stats: object) -> tuple[object, object, pa.Schema, Path]:
    plan = plan_workflow(parse_workflow(people_config(num_records=20, buffer_size=10)))["people"]
    store = PartitionStore(tmp_path)
    info = materialize(plan, store, [0])[0].info
    expected = parquet_schema(expected_schema(plan, store))
    if stats:  # the same rows, written again with other footer stats
        table = store.read_row_group(plan.ref, 0).replace_schema_metadata(None)
        info = store.write_row_group(plan.ref, 0, table, {**info.stats, **stats})
    return plan, store, expected, info.path


def test_a_fresh_row_group_passes(tmp_path: Path) -> None:
    plan, _, expected, path = _written(tmp_path)
    outcome = check_row_group(plan, read_footer(path), expected)
    assert (outcome.name, outcome.passed, outcome.severity) == (ROW_GROUP_CHECK, True, "WARN")
    assert outcome.numbers["rows"] == 10 and outcome.numbers["dropped_rows"] == 0


def test_too_many_drops_warn_with_the_numbers(tmp_path: Path) -> None:
    plan, _, expected, path = _written(tmp_path, planned_rows=10, dropped_rows=3)
    outcome = check_row_group(plan, read_footer(path), expected)
    assert not outcome.passed and outcome.severity == "WARN"
    assert "3 of 10 rows dropped (30.0%, budget " in outcome.description


def test_a_schema_or_footer_problem_is_an_error_naming_it(tmp_path: Path) -> None:
    plan, _, expected, path = _written(tmp_path)
    other = expected.append(pa.field("extra", pa.string()))
    outcome = check_row_group(plan, read_footer(path), other)
    assert not outcome.passed and outcome.severity == "ERROR"
    assert "missing column 'extra' (string)" in outcome.description
    foreign = plan_workflow(
        parse_workflow(people_config(num_records=20, buffer_size=10, score_high=99))
    )["people"]
    outcome = check_row_group(foreign, read_footer(path), expected)
    assert not outcome.passed and "footer fingerprint" in outcome.description
