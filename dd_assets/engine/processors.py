"""post_batch processors: row-group local transforms applied before a row group is written."""

from __future__ import annotations

import fnmatch

import pyarrow as pa

from dd_assets.config.processors import DropColumnsProcessorConfig, RenameColumnsProcessorConfig
from dd_assets.config.workflow import StageConfig


def apply_post_batch(stage: StageConfig, table: pa.Table) -> pa.Table:
    return split_post_batch(stage, table)[0]


def split_post_batch(stage: StageConfig, table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(the row group's table, the columns `drop: true` and drop_columns processors removed,
    row for row: what `run.keep_dropped_columns` keeps in a side table). A column is kept under
    the name it had when it was dropped."""
    dropped_names = {n for c in stage.columns if c.drop for n in c.output_names}
    dropped = [table.column(n) for n in table.column_names if n in dropped_names]
    names = [n for n in table.column_names if n in dropped_names]
    table = table.select([n for n in table.column_names if n not in dropped_names])
    for proc in stage.post_batch:
        if isinstance(proc, DropColumnsProcessorConfig):
            gone = [
                n
                for n in table.column_names
                if any(fnmatch.fnmatchcase(n, p) for p in proc.column_names)
            ]
            dropped += [table.column(n) for n in gone]
            names += gone
            table = table.select([n for n in table.column_names if n not in gone])
        elif isinstance(proc, RenameColumnsProcessorConfig):
            table = table.rename_columns([proc.mapping.get(n, n) for n in table.column_names])
    return table, pa.Table.from_arrays(dropped, names=names) if names else pa.table({})
