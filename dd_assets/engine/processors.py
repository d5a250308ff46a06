"""post_batch processors: row-group local transforms applied before a row group is written."""

from __future__ import annotations

import fnmatch

import pyarrow as pa

from dd_assets.config.processors import DropColumnsProcessorConfig, RenameColumnsProcessorConfig
from dd_assets.config.workflow import StageConfig


def apply_post_batch(stage: StageConfig, table: pa.Table) -> pa.Table:
    dropped = {n for c in stage.columns if c.drop for n in c.output_names}
    table = table.select([n for n in table.column_names if n not in dropped])
    for proc in stage.post_batch:
        if isinstance(proc, DropColumnsProcessorConfig):
            keep = [
                n
                for n in table.column_names
                if not any(fnmatch.fnmatchcase(n, p) for p in proc.column_names)
            ]
            table = table.select(keep)
        elif isinstance(proc, RenameColumnsProcessorConfig):
            table = table.rename_columns([proc.mapping.get(n, n) for n in table.column_names])
    return table
