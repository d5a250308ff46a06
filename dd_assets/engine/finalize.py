"""`finalize` processors: whole-dataset steps (filter, dedupe, schema_transform, drop_columns)
applied batch by batch in row order, so a stage of any size streams through in bounded memory
(dedupe keeps one 16-byte digest per distinct key, nothing else)."""

from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from dd_assets.config.processors import (
    DedupeProcessorConfig,
    DropColumnsProcessorConfig,
    FilterProcessorConfig,
    SchemaTransformProcessorConfig,
    template_shape,
)
from dd_assets.config.workflow import StageConfig
from dd_assets.engine.expressions import CellError, render

_TRUE = {"true", "1", "yes", "y", "on"}
MAX_ERROR_SAMPLES = 5


@dataclass
class StepCounts:
    step: str
    rows_in: int = 0
    rows_out: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "errors": self.errors,
            "error_samples": self.error_samples,
        }


def _label(i: int, proc: Any) -> str:
    return proc.name or f"{i}:{proc.processor_type}"


def _render(template: Any, row: dict[str, Any], as_json: bool) -> Any:
    """A schema_transform template, nested dicts and lists included: strings render, literals
    stay as they are."""
    if isinstance(template, str):
        return render(template, row, as_json)
    if isinstance(template, dict):
        return {k: _render(v, row, as_json) for k, v in template.items()}
    if isinstance(template, list):
        return [_render(v, row, as_json) for v in template]
    return template


_SHAPE_TYPES = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}


def arrow_type(shape: Any) -> pa.DataType:
    """The column type of a schema_transform output (see config.processors.template_shape)."""
    if isinstance(shape, dict):
        return pa.struct([(k, arrow_type(v)) for k, v in shape.items()])
    if isinstance(shape, list):
        return pa.list_(arrow_type(shape[0]))
    return _SHAPE_TYPES[shape]


class Finalizer:
    """Feed record batches in row order; each call returns what survives all steps."""

    def __init__(self, stage: StageConfig):
        self.steps = list(stage.finalize)
        self.counts = [StepCounts(_label(i, p)) for i, p in enumerate(self.steps)]
        self._seen: list[set[bytes]] = [set() for _ in self.steps]
        self.rows_in = 0
        self.rows_out = 0

    def process(self, batch: pa.RecordBatch | pa.Table) -> pa.Table:
        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        self.rows_in += table.num_rows
        for i, proc in enumerate(self.steps):
            c = self.counts[i]
            c.rows_in += table.num_rows
            table = self._apply(i, proc, table, c)
            c.rows_out += table.num_rows
        self.rows_out += table.num_rows
        return table

    def _apply(self, i: int, proc: Any, table: pa.Table, c: StepCounts) -> pa.Table:
        if isinstance(proc, DropColumnsProcessorConfig):
            keep = [
                n
                for n in table.column_names
                if not any(fnmatch.fnmatchcase(n, p) for p in proc.column_names)
            ]
            return table.select(keep)
        if isinstance(proc, FilterProcessorConfig):
            mask = []
            for row in table.to_pylist():
                try:
                    mask.append(render(proc.expr, row).strip().lower() in _TRUE)
                except CellError as exc:
                    # A row the expression cannot judge is not kept, and it is counted: a
                    # filter that errors on every row must not look like one that matched none.
                    mask.append(False)
                    self._error(c, str(exc))
            return table.filter(pa.array(mask, pa.bool_()))
        if isinstance(proc, DedupeProcessorConfig):
            missing = [col for col in proc.columns if col not in table.column_names]
            if missing:
                raise KeyError(f"finalize step {c.step!r}: no column(s) {missing} to dedupe on")
            seen = self._seen[i]
            keep = []
            for values in zip(
                *(table.column(col).to_pylist() for col in proc.columns), strict=True
            ):
                key = hashlib.blake2b(
                    json.dumps(values, default=str, sort_keys=True).encode(), digest_size=16
                ).digest()
                keep.append(key not in seen)
                seen.add(key)
            return table.filter(pa.array(keep, pa.bool_()))
        if isinstance(proc, SchemaTransformProcessorConfig):
            out: dict[str, list[Any]] = {k: [] for k in proc.template}
            as_json = proc.values == "json"
            for row in table.to_pylist():
                try:
                    rendered = {k: _render(v, row, as_json) for k, v in proc.template.items()}
                except CellError as exc:
                    self._error(c, str(exc))
                    continue
                for k, v in rendered.items():
                    out[k].append(v)
            return pa.table(
                {
                    k: pa.array(v, arrow_type(template_shape(proc.template[k])))
                    for k, v in out.items()
                }
            )
        raise TypeError(f"unknown finalize processor {proc!r}")

    @staticmethod
    def _error(c: StepCounts, message: str) -> None:
        c.errors += 1
        if len(c.error_samples) < MAX_ERROR_SAMPLES:
            c.error_samples.append(message[:300])

    def summary(self) -> dict[str, Any]:
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "steps": [c.to_dict() for c in self.counts],
        }
