"""Arrow types decided by the config, never inferred from data: every row group of a stage then
has the same schema (a row group of nulls or of a rare category cannot drift), and the
schema check can compare files against the config."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from dd_assets.config.columns import (
    DATETIME_SAMPLERS,
    REASONING_SUFFIX,
    ColumnConfig,
    CustomColumnConfig,
    EmbeddingColumnConfig,
    ExpressionColumnConfig,
    ImageColumnConfig,
    LLMJudgeColumnConfig,
    LLMStructuredColumnConfig,
    SamplerColumnConfig,
    ValidationColumnConfig,
)
from dd_assets.config.samplers import is_discrete
from dd_assets.config.workflow import WorkflowConfig
from dd_assets.engine.processors import apply_post_batch
from dd_assets.engine.validators import report_type

_SCALAR = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}
_DTYPE = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}

PERSON_FIELDS = (
    "uuid", "first_name", "last_name", "sex", "age", "birth_date", "email_address", "phone_number",
    "street_address", "city", "state", "zipcode", "country", "occupation", "locale",
)  # fmt: skip
PERSON_TYPE = pa.struct([(f, pa.int64() if f == "age" else pa.string()) for f in PERSON_FIELDS])
DD_PERSON_FIELDS = (
    "uuid", "locale", "first_name", "last_name", "middle_name", "sex", "street_number",
    "street_name", "city", "state", "postcode", "age", "birth_date", "country", "marital_status",
    "education_level", "unit", "occupation", "phone_number", "bachelors_field",
)  # fmt: skip
DD_PERSON_TYPE = pa.struct(
    [(f, pa.int64() if f == "age" else pa.string()) for f in DD_PERSON_FIELDS]
)


# An LLM column's `with_trace` side column: DataDesigner's message shape.
TRACE_TYPE = pa.list_(
    pa.struct(
        [
            ("role", pa.string()),
            ("content", pa.list_(pa.struct([("type", pa.string()), ("text", pa.string())]))),
        ]
    )
)


# An image column's value: its images (DataDesigner keeps a list; a model may return several),
# base64 in the engine and a preview, file paths once the store wrote them (docs/decisions.md).
IMAGE_TYPE = pa.list_(pa.string())


# The trace of an LLM column with a tool_alias: each message also keeps the calls it asked for
# and the call it answers (DataDesigner's trace messages).
TRACE_TOOLS_TYPE = pa.list_(
    pa.struct(
        [
            ("role", pa.string()),
            ("content", pa.list_(pa.struct([("type", pa.string()), ("text", pa.string())]))),
            (
                "tool_calls",
                pa.list_(
                    pa.struct(
                        [
                            ("id", pa.string()),
                            ("type", pa.string()),
                            (
                                "function",
                                pa.struct([("name", pa.string()), ("arguments", pa.string())]),
                            ),
                        ]
                    )
                ),
            ),
            ("tool_call_id", pa.string()),
        ]
    )
)


# An embedding column's value: DataDesigner's EmbeddingGenerationResult.
EMBEDDING_TYPE = pa.struct(
    [
        ("embeddings", pa.list_(pa.list_(pa.float64()))),
        ("num_embeddings", pa.int64()),
        ("dimension", pa.int64()),
    ]
)


def side_type(col: ColumnConfig, name: str) -> pa.DataType:
    """The type of a column's side column: an LLM column's trace or reasoning text; a custom
    column's side-effect column as its binding says."""
    if isinstance(col, CustomColumnConfig):
        return _DTYPE[col.dtype_of(name)]
    if name.endswith(REASONING_SUFFIX):
        return pa.string()
    return TRACE_TOOLS_TYPE if getattr(col, "tool_alias", None) else TRACE_TYPE


def _values_type(values: list[Any]) -> pa.DataType:
    kinds = {type(v) for v in values}
    return _SCALAR[kinds.pop()] if len(kinds) == 1 else pa.string()


def _sampler_type(col: SamplerColumnConfig) -> pa.DataType:
    st = col.sampler_type
    if col.convert_to == "str" or (st in DATETIME_SAMPLERS and col.convert_to):
        return pa.string()
    if col.convert_to == "int":
        return pa.int64()
    if col.convert_to == "float":
        return pa.float64()
    every = [col.params, *col.conditional_params.values()]
    if st == "category":
        return _values_type([v for p in every for v in p.values])  # type: ignore[union-attr]
    if st == "subcategory":
        return _values_type([v for p in every for vs in p.values.values() for v in vs])  # type: ignore[union-attr]
    if st in ("uniform", "gaussian"):
        return pa.float64()
    if st in ("bernoulli", "poisson", "binomial"):
        return pa.int64()
    if st in ("scipy", "bernoulli_mixture"):
        return pa.int64() if is_discrete(col.params.dist_name) else pa.float64()  # type: ignore[union-attr]
    if st in DATETIME_SAMPLERS:
        return pa.timestamp("s")
    if st == "person_from_faker":
        return DD_PERSON_TYPE if col.params.fields == "datadesigner" else PERSON_TYPE  # type: ignore[union-attr]
    return pa.string()


def json_schema_type(schema: dict[str, Any]) -> pa.DataType:
    """Arrow type for values valid under a JSON schema; anything it cannot pin down is JSON text."""
    t = schema.get("type")
    if isinstance(t, list):
        non_null = [x for x in t if x != "null"]
        t = non_null[0] if len(non_null) == 1 else None
    if t == "object" and isinstance(schema.get("properties"), dict):
        return pa.struct([(k, json_schema_type(v)) for k, v in schema["properties"].items()])
    if t == "array" and isinstance(schema.get("items"), dict):
        return pa.list_(json_schema_type(schema["items"]))
    if "enum" in schema and t is None:
        return _values_type(list(schema["enum"]))
    return {
        "string": pa.string(),
        "integer": pa.int64(),
        "number": pa.float64(),
        "boolean": pa.bool_(),
    }.get(t, pa.string())


def column_type(col: ColumnConfig) -> pa.DataType:
    if isinstance(col, SamplerColumnConfig):
        return _sampler_type(col)
    if isinstance(col, ExpressionColumnConfig):
        return _DTYPE[col.dtype]
    if isinstance(col, CustomColumnConfig):
        return _DTYPE[col.dtype_of(col.name)]
    if isinstance(col, LLMStructuredColumnConfig):
        return json_schema_type(col.output_format)
    if isinstance(col, EmbeddingColumnConfig):
        return EMBEDDING_TYPE
    if isinstance(col, ImageColumnConfig):
        return IMAGE_TYPE
    if isinstance(col, ValidationColumnConfig):
        return report_type(col)
    if isinstance(col, LLMJudgeColumnConfig):
        fields = []
        for score in col.scores:
            keys = list(score.options)
            score_t = pa.int64() if all(isinstance(k, int) for k in keys) else pa.string()
            fields.append((score.name, pa.struct([("score", score_t), ("reasoning", pa.string())])))
        return pa.struct(fields)
    return pa.string()


def stage_schema(
    workflow: WorkflowConfig, stage_name: str, seed_schema: pa.Schema | None = None
) -> pa.Schema:
    """The Arrow schema every row-group file of a stage has: the seed's columns (those the stage
    does not redefine), then the stage's own columns in config order, then its post_batch
    processors (drops, renames), exactly as the engine builds each row group. The schema asset
    check compares files against this.

    `seed_schema` is what the seed provides when the config alone cannot tell (a seed file, a
    finalized upstream); by default a `seed: {stage: X}` contributes X's own stage_schema, and a
    join the schemas of its stages (see joined_schema)."""
    stage = workflow.stage(stage_name)
    own = {c.name for c in stage.columns}
    ups = workflow.upstreams_of(stage)
    if seed_schema is None and ups:
        seed_schema = joined_schema([stage_schema(workflow, up.name) for up in ups])
    fields: list[pa.Field] = [f for f in seed_schema or [] if f.name not in own]
    for c in stage.columns:
        fields.append(pa.field(c.name, column_type(c)))
        fields += [pa.field(n, side_type(c, n)) for n in c.output_names[1:]]
    return apply_post_batch(stage, pa.schema(fields).empty_table()).schema


def joined_schema(schemas: list[pa.Schema]) -> pa.Schema:
    """The first schema's fields, then each later one's new fields: the columns of a join row
    group, in the order engine.join builds them (one schema is itself)."""
    fields: dict[str, pa.Field] = {}
    for schema in schemas:
        for f in schema:
            fields.setdefault(f.name, f)
    return pa.schema(list(fields.values()))
