"""The rows of a join seed: one row group of each joined stage, inner-joined on key columns.

Rows keep the first stage's order, so a join row group is as reproducible as its inputs. Anything
that would make the result depend on luck is an error rather than a guess: a missing, null or
repeated key (which row would pair with which?) and a shared column whose values disagree
(which one is right?)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import pyarrow as pa

from dd_assets.errors import GenerationError


def _key_index(name: str, table: pa.Table, keys: Sequence[str], where: str) -> dict[Any, int]:
    missing = [k for k in keys if k not in table.column_names]
    if missing:
        raise GenerationError(
            f"{where}: stage {name!r} has no join key column {', '.join(map(repr, missing))};"
            f" its columns: {', '.join(table.column_names)}"
        )
    columns = [table.column(k).to_pylist() for k in keys]
    index: dict[Any, int] = {}
    for i, values in enumerate(zip(*columns, strict=True)):
        key = values[0] if len(keys) == 1 else values
        if any(v is None for v in values):
            raise GenerationError(
                f"{where}: row {i} of stage {name!r} has a null join key"
                f" ({', '.join(keys)}); every joined row needs a key"
            )
        if not isinstance(key, Hashable) or any(not isinstance(v, Hashable) for v in values):
            raise GenerationError(
                f"{where}: join key {', '.join(map(repr, keys))} of stage {name!r} holds"
                f" {type(values[0]).__name__} values; join on scalar columns (a uuid, an id)"
            )
        if key in index:
            raise GenerationError(
                f"{where}: join key {key!r} appears twice in stage {name!r} (rows {index[key]}"
                f" and {i}); a join key must be unique within a row group, e.g. a uuid sampler"
            )
        index[key] = i
    return index


def join_row_group(
    parts: Sequence[tuple[str, pa.Table]], keys: Sequence[str], where: str
) -> pa.Table:
    """Inner join of (stage name, row group table) pairs on `keys`, in the first one's row order.

    Columns: the first table's, then each later table's new ones. A column in several tables must
    hold the same values for every joined row, or the join fails naming it."""
    indexes = [_key_index(name, table, keys, where) for name, table in parts]
    first_name, first = parts[0]
    matched = [k for k in indexes[0] if all(k in idx for idx in indexes[1:])]
    out = first.take(pa.array([indexes[0][k] for k in matched], type=pa.int64()))
    for (name, table), idx in zip(parts[1:], indexes[1:], strict=True):
        rows = table.take(pa.array([idx[k] for k in matched], type=pa.int64()))
        for col in rows.column_names:
            if col in keys:
                continue
            if col in out.column_names:
                same_type = rows.schema.field(col).type == out.schema.field(col).type
                if not (same_type and out.column(col).equals(rows.column(col))):
                    raise GenerationError(
                        f"{where}: column {col!r} is in stages {first_name!r} and {name!r} with"
                        " different values for the same key; drop or rename it with a post_batch"
                        " processor in all but one of them"
                    )
                continue
            out = out.append_column(rows.schema.field(col), rows.column(col))
    return out
