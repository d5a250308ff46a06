"""The profile of some rows (a row group, a batch of the final output) as a mergeable partial.

A partial holds, per column, counts and sketches (runners/profile/sketch.py) that add up: the
partial of two row groups is `a.merge(b)`, whatever the order. Struct columns (llm-structured,
llm-judge, person) are profiled field by field under dotted names (`judge.helpfulness.score`);
list columns by their length.

Non-finite floats (NaN, ±inf) are counted in `nonfinite` and left out of the other statistics.
Token counts are an estimate: words plus punctuation marks (`\\w+|[^\\w\\s]`), which tracks the
BPE token count of English prose (about 1.3 tokens a word); the exact tokens a provider billed
are in the LLM usage, per row group."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dd_assets.runners.profile.sketch import (
    DistinctSketch,
    NumericSketch,
    value_hashes,
)

SAMPLES = 3
SAMPLE_CHARS = 200
TOKEN_PATTERN = r"\w+|[^\w\s]"


def _kind(t: pa.DataType) -> str:
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_timestamp(t):
        return f"timestamp[{t.unit}]"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return "list"
    return "other"


def _merge_opt(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return a.merge(b)


def _json_value(v: Any) -> Any:
    return v if isinstance(v, str | int | float | bool) or v is None else str(v)


@dataclass
class ColumnPartial:
    kind: str
    arrow_type: str
    n: int = 0  # rows (nulls included)
    nulls: int = 0
    nonfinite: int = 0  # floats: NaN and ±inf
    empty: int = 0  # strings: "" or whitespace only
    distinct: DistinctSketch | None = None
    values: dict[Any, int] | None = None  # value -> rows, kept while distinct values are exact
    numeric: NumericSketch | None = None  # numbers, datetimes (as integers of their unit)
    chars: NumericSketch | None = None  # strings: length in characters
    tokens: NumericSketch | None = None  # strings: estimated tokens
    items: NumericSketch | None = None  # lists: length
    samples: list[Any] = field(default_factory=list)  # first non-null values, in row order

    @classmethod
    def of(cls, arr: pa.Array) -> ColumnPartial:
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        if pa.types.is_timestamp(arr.type) and arr.type.unit == "s":
            # As parquet stores it (it has no second unit): a partial computed from rows in
            # memory must equal the one computed from the file.
            arr = arr.cast(pa.timestamp("ms", arr.type.tz))
        kind = _kind(arr.type)
        p = cls(kind, str(arr.type), n=len(arr), nulls=arr.null_count)
        valid = arr.drop_null()
        if kind == "list":
            p.items = NumericSketch.of(
                np.asarray(pc.list_value_length(valid).to_numpy(zero_copy_only=False), np.int64),
                True,
            )
            return p
        if kind == "other":
            return p
        if kind == "float":
            finite = pc.is_finite(valid)
            p.nonfinite = len(valid) - pc.sum(finite).as_py() if len(valid) else 0
            valid = valid.filter(finite)
        hashes = value_hashes(valid)
        p.distinct = DistinctSketch.of(hashes)
        if p.distinct.is_exact and len(valid):
            vc = pc.value_counts(valid)
            p.values = {
                _json_value(v): int(c)
                for v, c in zip(
                    _plain(vc.field("values")).to_pylist(),
                    vc.field("counts").to_pylist(),
                    strict=True,
                )
            }
        elif p.distinct.is_exact:
            p.values = {}
        if kind in ("int", "float") or kind.startswith("timestamp") or kind == "date":
            integral = kind != "float"
            data = _plain(valid).to_numpy(zero_copy_only=False)
            p.numeric = NumericSketch.of(
                np.asarray(data, np.int64 if integral else np.float64), integral
            )
        if kind == "string":
            lengths = pc.utf8_length(valid)
            p.chars = NumericSketch.of(
                np.asarray(lengths.to_numpy(zero_copy_only=False), np.int64), True
            )
            tokens = pc.count_substring_regex(valid, TOKEN_PATTERN)
            p.tokens = NumericSketch.of(
                np.asarray(tokens.to_numpy(zero_copy_only=False), np.int64), True
            )
            p.empty = (
                len(valid)
                - pc.sum(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(valid)), 0)).as_py()
                if len(valid)
                else 0
            )
            p.samples = [s[:SAMPLE_CHARS] for s in valid.slice(0, SAMPLES).to_pylist()]
        return p

    def merge(self, other: ColumnPartial) -> ColumnPartial:
        """self's rows, then other's (samples keep the first ones)."""
        out = ColumnPartial(self.kind, self.arrow_type)
        out.n = self.n + other.n
        out.nulls = self.nulls + other.nulls
        out.nonfinite = self.nonfinite + other.nonfinite
        out.empty = self.empty + other.empty
        out.distinct = _merge_opt(self.distinct, other.distinct)
        if (
            self.values is not None
            and other.values is not None
            and out.distinct is not None
            and out.distinct.is_exact
        ):
            values = dict(self.values)
            for v, c in other.values.items():
                values[v] = values.get(v, 0) + c
            out.values = values
        out.numeric = _merge_opt(self.numeric, other.numeric)
        out.chars = _merge_opt(self.chars, other.chars)
        out.tokens = _merge_opt(self.tokens, other.tokens)
        out.items = _merge_opt(self.items, other.items)
        out.samples = (self.samples + other.samples)[:SAMPLES]
        return out

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "arrow_type": self.arrow_type, "n": self.n}
        for name in ("nulls", "nonfinite", "empty"):
            if getattr(self, name):
                d[name] = getattr(self, name)
        if self.distinct is not None:
            d["distinct"] = self.distinct.to_json()
        if self.values is not None:
            # pairs, not an object: JSON object keys would turn 1, 1.0 and "1" into one key
            d["values"] = sorted(self.values.items(), key=lambda kv: (-kv[1], repr(kv[0])))
        for name in ("numeric", "chars", "tokens", "items"):
            sketch = getattr(self, name)
            if sketch is not None:
                d[name] = sketch.to_json()
        if self.samples:
            d["samples"] = self.samples
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ColumnPartial:
        p = cls(d["kind"], d["arrow_type"], n=int(d["n"]))
        p.nulls, p.nonfinite, p.empty = d.get("nulls", 0), d.get("nonfinite", 0), d.get("empty", 0)
        if "distinct" in d:
            p.distinct = DistinctSketch.from_json(d["distinct"])
        if "values" in d:
            p.values = {v: int(c) for v, c in d["values"]}
        for name in ("numeric", "chars", "tokens", "items"):
            if name in d:
                setattr(p, name, NumericSketch.from_json(d[name]))
        p.samples = list(d.get("samples", []))
        return p


def _plain(arr: pa.Array) -> pa.Array:
    """Datetimes as integers of their unit (what the sketches hold), other values unchanged."""
    if pa.types.is_timestamp(arr.type):
        return arr.view(pa.int64())
    if pa.types.is_date32(arr.type):
        return arr.view(pa.int32()).cast(pa.int64())
    if pa.types.is_date64(arr.type):
        return arr.view(pa.int64())
    return arr


def _leaves(name: str, arr: pa.Array) -> list[tuple[str, pa.Array]]:
    """A column and, for a struct, its fields (parent nulls applied) under dotted names."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_struct(arr.type):
        out: list[tuple[str, pa.Array]] = []
        for f, child in zip(arr.type, arr.flatten(), strict=True):
            out += _leaves(f"{name}.{f.name}", child)
        return out
    return [(name, arr)]


@dataclass
class TablePartial:
    rows: int = 0
    columns: dict[str, ColumnPartial] = field(default_factory=dict)

    @classmethod
    def of(cls, table: pa.Table | pa.RecordBatch) -> TablePartial:
        p = cls(table.num_rows)
        for name, col in zip(table.schema.names, table.columns, strict=True):
            for leaf, arr in _leaves(name, col):
                p.columns[leaf] = ColumnPartial.of(arr)
        return p

    def merge(self, other: TablePartial) -> TablePartial:
        out = TablePartial(self.rows + other.rows)
        for name in [*self.columns, *(c for c in other.columns if c not in self.columns)]:
            a, b = self.columns.get(name), other.columns.get(name)
            out.columns[name] = a.merge(b) if a is not None and b is not None else (a or b)  # type: ignore[assignment]
        return out

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "columns": {k: v.to_json() for k, v in self.columns.items()}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TablePartial:
        return cls(int(d["rows"]), {k: ColumnPartial.from_json(v) for k, v in d["columns"].items()})
