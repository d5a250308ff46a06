"""Which cells are skipped (DataDesigner's `skip` and `propagate_skip`) and what they hold.

A skipped cell is never generated (an LLM cell sends no request) and holds the column's
`skip.value`, fitted to the column's type; its side columns (trace, reasoning) are null. A
cell is skipped when a column it reads was skipped in that row (unless `propagate_skip: false`),
or when its `skip.when` template is truthy. As in DataDesigner, `when` is read as a Python
literal where it is one (`{{ n > 0 }}` gives True or False, `{{ 0 }}` is false), and a
condition that cannot be evaluated (an undefined name, a type error) skips the cell: a row of
unknown status is not worth a paid request."""

from __future__ import annotations

import ast
from typing import Any

from dd_assets.config.columns import ColumnConfig
from dd_assets.engine.expressions import CellError, render
from dd_assets.engine.llm_cells import coerce
from dd_assets.engine.schema import column_type


def when_is_true(source: str, row: dict[str, Any]) -> bool:
    try:
        text = render(source, row)
    except CellError:
        return True
    try:
        return bool(ast.literal_eval(text.strip()))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return bool(text)


def is_skipped(col: ColumnConfig, row: dict[str, Any], skipped: set[str]) -> bool:
    """Propagation first (no template to render), then the gate."""
    if col.propagate_skip and skipped and not skipped.isdisjoint(col.data_columns):
        return True
    return col.skip is not None and when_is_true(col.skip.when, row)


def skipped_value(col: ColumnConfig) -> Any:
    """What a skipped cell holds: `skip.value` fitted to the column's type (JSON text in a text
    column, null in a structured one), None without a skip gate (a propagated skip)."""
    if col.skip is None or col.skip.value is None:
        return None
    return coerce(col.skip.value, column_type(col))


def has_skips(col: ColumnConfig) -> bool:
    """Whether any cell of the column can be skipped at all (else the check costs nothing)."""
    return col.skip is not None or (col.propagate_skip and bool(col.data_columns))
