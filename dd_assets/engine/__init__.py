"""Row-group engine: turns a compiled stage and a row range into an Arrow table. Pure computation:
no Dagster, no disk; LLM cells come in through a CellRunner callback.

The names below are loaded on first use (PEP 562): planning a workflow needs only
`compile_stage`, and commands that plan without generating (`validate`, `status`) should not pay
for numpy, pyarrow and Faker."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dd_assets.engine.compiled import CompiledStage, compile_stage
    from dd_assets.engine.drops import DROP_KINDS, DROPS_SCHEMA, Drop
    from dd_assets.engine.join import join_row_group
    from dd_assets.engine.rowgroup import (
        CellFailed,
        CellRunner,
        CellUnfinished,
        RowGroupResult,
        RowGroupUnfinished,
        agenerate_row_group,
        agenerate_rows,
        generate_row_group,
        generate_rows,
    )

_WHERE = {
    "DROPS_SCHEMA": "drops",
    "DROP_KINDS": "drops",
    "CellFailed": "rowgroup",
    "CellRunner": "rowgroup",
    "CellUnfinished": "rowgroup",
    "CompiledStage": "compiled",
    "Drop": "drops",
    "RowGroupResult": "rowgroup",
    "RowGroupUnfinished": "rowgroup",
    "agenerate_row_group": "rowgroup",
    "agenerate_rows": "rowgroup",
    "compile_stage": "compiled",
    "generate_row_group": "rowgroup",
    "generate_rows": "rowgroup",
    "join_row_group": "join",
}

__all__ = [
    "DROPS_SCHEMA",
    "DROP_KINDS",
    "CellFailed",
    "CellRunner",
    "CellUnfinished",
    "CompiledStage",
    "Drop",
    "RowGroupResult",
    "RowGroupUnfinished",
    "agenerate_row_group",
    "agenerate_rows",
    "compile_stage",
    "generate_row_group",
    "generate_rows",
    "join_row_group",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
