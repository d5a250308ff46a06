"""Code validation cells (DataDesigner's `validation` columns with a `code` validator): the
report of one cell's code, made the way DataDesigner makes it.

- python: ruff (`ruff check` with DataDesigner's rule selection), each message typed by its rule
  prefix (F, PLE: error; PLW: warning; PLC: convention; E, SIM, PLR: refactor; a syntax error:
  fatal), a pylint-style score, valid unless the worst message is fatal or an error;
- SQL (`sql:<dialect>`): sqlfluff's parser for that dialect; only parse errors (PRS) count, plus
  DataDesigner's check for DECIMAL(p) without a scale.

Both tools are optional dependencies (`pip install 'dd-assets[validation]'`), imported only when a
stage has such a column. ruff runs as a process on a temporary file: the file is ruff's input,
never data (nothing of it outlives the call)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa

from dd_assets.config.columns import LocalCallableValidatorParams, ValidationColumnConfig
from dd_assets.config.workflow import WorkflowConfig
from dd_assets.errors import GenerationError

RUFF_SELECT = "E,F6,F7,F8,SIM,PLC,PLE,PLR,PLW"  # DataDesigner's selection
_TYPE_OF_PREFIX = {
    "E": "refactor",
    "F": "error",
    "SIM": "refactor",
    "PLC": "convention",
    "PLE": "error",
    "PLR": "refactor",
    "PLW": "warning",
}
_SEVERITY = ("fatal", "error", "warning", "convention", "refactor")
_DECIMAL = re.compile(r"DECIMAL\(\d+\)")
RUFF_TIMEOUT_S = 60

PYTHON_REPORT = pa.struct(
    [
        ("is_valid", pa.bool_()),
        ("python_linter_score", pa.float64()),
        ("python_linter_severity", pa.string()),
        (
            "python_linter_messages",
            pa.list_(
                pa.struct(
                    [
                        ("type", pa.string()),
                        ("symbol", pa.string()),
                        ("line", pa.int64()),
                        ("column", pa.int64()),
                        ("message", pa.string()),
                    ]
                )
            ),
        ),
    ]
)
SQL_REPORT = pa.struct([("is_valid", pa.bool_()), ("error_messages", pa.string())])


_FIELD_TYPES = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}


def report_type(col: ValidationColumnConfig) -> pa.DataType:
    params = col.validator_params
    if isinstance(params, LocalCallableValidatorParams):
        fields = [(k, _FIELD_TYPES[t]) for k, t in params.report_fields.items()]
        return pa.struct([("is_valid", pa.bool_()), *fields])
    one = PYTHON_REPORT if params.code_lang == "python" else SQL_REPORT
    if len(col.target_columns) == 1:
        return one
    return pa.struct([(t, one) for t in col.target_columns])


def validate(
    col: ValidationColumnConfig, row: dict[str, Any], workflow: WorkflowConfig | None = None
) -> dict[str, Any] | None:
    """The report for this row (blocking: run it in a thread). A null target cell (a skipped
    one read with propagate_skip: false) has no report. `workflow`: where a local_callable
    validator's function is bound."""
    if isinstance(col.validator_params, LocalCallableValidatorParams):
        assert workflow is not None
        return local_callable_report(col, col.validator_params, row, workflow)
    lang = col.validator_params.code_lang
    check = python_report if lang == "python" else (lambda code: sql_report(code, lang))
    reports = {}
    for target in col.target_columns:
        code = row.get(target)
        reports[target] = None if code is None else check(str(code))
    if len(col.target_columns) == 1:
        return reports[col.target_columns[0]]
    return reports


def sql_report(code: str, lang: str) -> dict[str, Any]:
    import sqlfluff

    try:
        found = sqlfluff.lint(code, dialect=lang.split(":", 1)[1])
        errors = "\n".join(
            f"{v['code']}: {v['description']}" for v in found if v["code"].startswith("PRS")
        )
    except Exception as exc:  # sqlfluff's own failure on odd input: the query is not valid
        return {"is_valid": False, "error_messages": f"Exception during SQL parsing: {exc}"}
    if _DECIMAL.search(code):
        errors += (
            "\nCustom Check: Found DECIMAL definitions without a scale, which may be incorrect."
        )
    return {"is_valid": not errors, "error_messages": errors}


def python_report(code: str) -> dict[str, Any]:
    from ruff.__main__ import find_ruff_bin

    with tempfile.TemporaryDirectory(prefix="dd-assets-ruff-") as folder:
        path = Path(folder) / "cell.py"
        path.write_text(code, encoding="utf-8")
        try:
            done = subprocess.run(
                [find_ruff_bin(), "check", "--isolated", "--no-cache", "--select", RUFF_SELECT,
                 "--output-format=json", "--exit-zero", str(path)],
                capture_output=True, text=True, timeout=RUFF_TIMEOUT_S, check=False,
            )  # fmt: skip
            found = json.loads(done.stdout)
        except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
            raise GenerationError(f"ruff could not check python code: {exc}") from None
    messages = []
    for d in found:
        code_ = d.get("code")
        if code_ in (None, "invalid-syntax"):
            kind, symbol = "fatal", "SyntaxError"
        else:
            kind = _TYPE_OF_PREFIX.get("".join(c for c in code_ if c.isalpha()), "warning")
            symbol = code_
        where = d.get("location") or {}
        messages.append(
            {
                "type": kind,
                "symbol": symbol,
                "line": int(where.get("row", 0)),
                "column": int(where.get("column", 0)),
                "message": str(d.get("message", "")),
            }
        )
    messages.sort(key=lambda m: (_SEVERITY.index(m["type"]), m["line"]))
    counts = {k: sum(m["type"] == k for m in messages) for k in _SEVERITY}
    try:
        statements = sum(isinstance(n, ast.stmt) for n in ast.walk(ast.parse(code)))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        statements = 0
    statements = max(1, statements)
    penalty = 5 * counts["error"] + counts["warning"] + counts["refactor"] + counts["convention"]
    score = 0.0 if counts["fatal"] else max(0.0, 10.0 - penalty / statements * 10)
    severity = messages[0]["type"] if messages else "none"
    return {
        "is_valid": severity not in ("fatal", "error"),
        "python_linter_score": score,
        "python_linter_severity": severity,
        "python_linter_messages": messages,
    }


def local_callable_report(
    col: ValidationColumnConfig,
    params: LocalCallableValidatorParams,
    row: dict[str, Any],
    workflow: WorkflowConfig,
) -> dict[str, Any]:
    """The user's validation function on this row's target columns as a one-row DataFrame
    (DataDesigner passes `batch_size` rows at once; a function judging each row by itself gives
    the same reports). Its `is_valid` and the fields the binding types make the report; a
    function that fails, or returns no such row, fails the row group (DataDesigner fails the
    column)."""
    import pandas as pd

    from dd_assets.config.functions import resolve
    from dd_assets.engine.custom_columns import CustomValueError, convert_value, from_pandas

    binding = workflow.functions[params.validation_function]
    where = f"local_callable validator of column {col.name!r} ({binding.function})"
    df = pd.DataFrame([{t: row.get(t) for t in col.target_columns}])
    try:
        out = resolve(binding).fn(df)
    except Exception as exc:
        raise GenerationError(f"{where} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(out, pd.DataFrame) or len(out) != 1 or "is_valid" not in out.columns:
        raise GenerationError(f"{where} must return the DataFrame with an is_valid column")
    record = out.iloc[0].to_dict()
    try:
        report = {"is_valid": convert_value("bool", "is_valid", from_pandas(record["is_valid"]))}
        for name, dtype in params.report_fields.items():
            report[name] = convert_value(dtype, name, from_pandas(record.get(name)))
    except CustomValueError as exc:
        raise GenerationError(f"{where}: {exc}") from None
    return report
