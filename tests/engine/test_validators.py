"""Code validation columns (DataDesigner's `validation` with a code validator): python checked
by ruff (a real process), SQL by sqlfluff's parser, reports in DataDesigner's shape, typed by
the config; a skipped (null) code cell gets no report."""

from __future__ import annotations

from typing import Any

import pytest

from dd_assets.config import parse_workflow
from dd_assets.engine import compile_stage, generate_rows
from dd_assets.engine.schema import stage_schema
from dd_assets.engine.validators import python_report, sql_report


def test_python_reports_as_datadesigner_types_them() -> None:
    good = python_report("def f(x):\n    return x + 1\n")
    assert good == {
        "is_valid": True,
        "python_linter_score": 10.0,
        "python_linter_severity": "none",
        "python_linter_messages": [],
    }
    undefined = python_report("def f():\n    return y\n")  # F821: an error
    assert not undefined["is_valid"] and undefined["python_linter_severity"] == "error"
    assert undefined["python_linter_messages"][0]["symbol"] == "F821"
    assert undefined["python_linter_score"] == 0.0  # 10 - 5 * 1 error / 2 statements * 10
    broken = python_report("def f(:\n  pass\n")
    assert (broken["is_valid"], broken["python_linter_severity"]) == (False, "fatal")
    assert broken["python_linter_messages"][0]["symbol"] == "SyntaxError"
    assert broken["python_linter_score"] == 0.0
    # PLR/E/SIM are refactor messages: still valid, score lowered.
    simplifiable = python_report("def f(a):\n    if a:\n        return True\n    return False\n")
    assert simplifiable["is_valid"] and simplifiable["python_linter_severity"] == "refactor"
    assert 0 < simplifiable["python_linter_score"] < 10


def test_sql_reports_parse_errors_of_the_dialect_only() -> None:
    assert sql_report("SELECT count(*) FROM stock WHERE level = 1;", "sql:postgres") == {
        "is_valid": True,
        "error_messages": "",
    }
    bad = sql_report("SELEC count(* FROM", "sql:postgres")
    assert not bad["is_valid"] and bad["error_messages"].startswith("PRS: ")
    decimal = sql_report("CREATE TABLE t (p DECIMAL(10));", "sql:postgres")
    assert (
        not decimal["is_valid"]
        and "DECIMAL definitions without a scale" in decimal["error_messages"]
    )


def _stage(columns: list[dict[str, Any]]) -> Any:
    return parse_workflow(
        {
            "name": "v",
            "stages": [{"name": "s", "num_records": 4, "buffer_size": 4, "columns": columns}],
        }
    )


def test_validation_columns_in_a_row_group() -> None:
    wf = _stage(
        [
            {"name": "n", "column_type": "sampler", "sampler_type": "category",
             "params": {"values": [0, 1]}},
            {"name": "code", "column_type": "expression",
             "expr": "{% if n == 0 %}x = 1{% else %}x = y{% endif %}"},
            {"name": "other", "column_type": "expression", "expr": "z = {{ n }}",
             "skip": {"when": "{{ n == 1 }}"}},
            {"name": "one", "column_type": "validation", "target_columns": ["code"],
             "validator_params": {"code_lang": "python"}},
            {"name": "both", "column_type": "validation", "target_columns": ["code", "other"],
             "validator_params": {"code_lang": "python"}, "propagate_skip": False},
        ]
    )  # fmt: skip
    result = generate_rows(compile_stage(wf, "s"), 0, 4)
    assert result.table.schema == stage_schema(wf, "s")
    rows = result.table.to_pylist()
    assert {r["n"] for r in rows} == {0, 1}
    for r in rows:
        assert r["one"]["is_valid"] == (r["n"] == 0)
        assert r["both"]["code"] == r["one"]
        # `other` was skipped where n == 1: no code, no report
        assert (r["both"]["other"] is None) == (r["n"] == 1)


def test_validation_config_is_checked() -> None:
    from dd_assets.config import WorkflowConfigError

    base = {"name": "c", "column_type": "expression", "expr": "x = 1"}
    for col, message in (
        ({"target_columns": []}, "at least 1 item"),
        ({"target_columns": ["c", "c"]}, "names a column twice"),
        ({"target_columns": ["nope"]}, "unknown column 'nope'"),
        ({"target_columns": ["c"], "validator_params": {"code_lang": "rust"}}, "code_lang"),
    ):
        spec = {"name": "v", "column_type": "validation",
                "validator_params": {"code_lang": "python"}, **col}  # fmt: skip
        with pytest.raises(WorkflowConfigError, match=message):
            _stage([base, spec])
