"""Row-group engine: turns a compiled stage and a row range into an Arrow table. Pure computation:
no Dagster, no disk; LLM cells come in through a CellRunner callback."""

from dd_assets.engine.join import join_row_group
from dd_assets.engine.rowgroup import (
    DROP_KINDS,
    DROPS_SCHEMA,
    CellFailed,
    CellRunner,
    CellUnfinished,
    CompiledStage,
    Drop,
    RowGroupResult,
    RowGroupUnfinished,
    agenerate_row_group,
    agenerate_rows,
    compile_stage,
    generate_row_group,
    generate_rows,
)

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
