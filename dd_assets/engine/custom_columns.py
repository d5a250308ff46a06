"""Custom columns: the user's Python function (bound under `functions:`, config/functions.py)
called with DataDesigner's signature: `fn(row)` / `fn(row, generator_params)` returning the row
dict with the column (and its side-effect columns) added, cell by cell; or `fn(df)` /
`fn(df, generator_params)` over the row group's rows as a pandas DataFrame (full_column).
`generator_params` is the mapping the config holds (DataDesigner passes its pydantic model;
the config file only keeps the mapping)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from dd_assets.config.columns import CustomColumnConfig
from dd_assets.config.functions import ResolvedFunction, resolve
from dd_assets.config.workflow import WorkflowConfig
from dd_assets.engine.llm_cells import SideAnswer
from dd_assets.errors import GenerationError


class CustomValueError(ValueError):
    """The function ran but gave no usable value for this row (the row is dropped)."""


def function_of(workflow: WorkflowConfig, col: CustomColumnConfig) -> ResolvedFunction:
    return resolve(workflow.functions[col.generator_function])


def _text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def convert(col: CustomColumnConfig, output: str, value: Any) -> Any:
    """A returned value of output column `output` as its dtype."""
    return convert_value(col.dtype_of(output), output, value)


def convert_value(dtype: str, output: str, value: Any) -> Any:
    """`value` as `dtype` (str: text, or the JSON of anything else); CustomValueError when it is
    not one."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, list | dict | str):
        value = value.item()  # a numpy scalar from a DataFrame
    if dtype == "str":
        return _text(value)
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
    }[dtype]
    if not ok:
        raise CustomValueError(
            f"{output}: returned {type(value).__name__} {str(value)[:80]!r}, not {dtype} (the"
            " binding's dtype)"
        )
    return float(value) if dtype == "float" else value


def _args(fn: ResolvedFunction, col: CustomColumnConfig, data: Any) -> tuple[Any, ...]:
    params = dict(col.generator_params) if col.generator_params is not None else None
    return (data,) if len(fn.params) == 1 else (data, params)


async def run_cell(workflow: WorkflowConfig, col: CustomColumnConfig, row: dict[str, Any]) -> Any:
    """One row's value (a SideAnswer with side-effect columns). The function runs in a thread
    (or is awaited, when it is a coroutine function); its exception drops the row, as
    DataDesigner skips the record."""
    fn = function_of(workflow, col)
    data = dict(row)
    try:
        if fn.is_async:
            result = await fn.fn(*_args(fn, col, data))
        else:
            result = await asyncio.to_thread(fn.fn, *_args(fn, col, data))
    except Exception as exc:
        raise CustomValueError(f"the function raised {type(exc).__name__}: {exc}") from None
    if not isinstance(result, dict):
        raise CustomValueError(
            f"the function must return the row (a dict), not {type(result).__name__}"
        )
    missing = [n for n in col.output_names if n not in result]
    if missing:
        raise CustomValueError(
            f"the returned row has no {missing} (the column and its side-effect columns)"
        )
    value = convert(col, col.name, result[col.name])
    if not col.side_effect_columns:
        return value
    return SideAnswer(value, {n: convert(col, n, result[n]) for n in col.side_effect_columns})


def run_column(
    workflow: WorkflowConfig, col: CustomColumnConfig, inputs: dict[str, list[Any]], n: int
) -> dict[str, list[Any]]:
    """full_column: the values of the column and its side-effect columns for `n` rows. A
    failure is the function's, on the whole row group: a GenerationError naming the column."""
    import pandas as pd

    fn = function_of(workflow, col)
    where = f"custom column {col.name!r} ({workflow.functions[col.generator_function].function})"
    df = pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in inputs.items()}, index=range(n))
    try:
        result = fn.fn(*_args(fn, col, df))
        if fn.is_async:
            raise GenerationError(f"{where}: a full_column function cannot be async")
    except GenerationError:
        raise
    except Exception as exc:
        raise GenerationError(f"{where} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(result, pd.DataFrame) or len(result) != n:
        raise GenerationError(f"{where} must return the DataFrame with {n} rows")
    missing = [c for c in col.output_names if c not in result.columns]
    if missing:
        raise GenerationError(f"{where}: the returned DataFrame has no {missing}")
    out: dict[str, list[Any]] = {}
    try:
        for name in col.output_names:
            out[name] = [convert(col, name, from_pandas(v)) for v in result[name].tolist()]
    except CustomValueError as exc:
        raise GenerationError(f"{where}: {exc}") from None
    return out


def from_pandas(v: Any) -> Any:
    """pandas' missing values (NaN, NA, NaT) as None."""
    try:
        import pandas as pd

        return None if not isinstance(v, list | dict) and pd.isna(v) else v
    except (TypeError, ValueError):
        return v
