"""Processors. `post_batch` ones are row-group local (they run before a row group is written);
`finalize` ones see the whole dataset and produce the stage's final output."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from dd_assets.config.base import added_field, model_settings
from dd_assets.config.columns import check_identifier, template_names


class _Processor(BaseModel):
    model_config = model_settings(extra="forbid", frozen=True)

    name: str | None = None


class DropColumnsProcessorConfig(_Processor):
    processor_type: Literal["drop_columns"] = "drop_columns"
    column_names: list[str] = Field(min_length=1, description="names; `*` globs allowed")


class RenameColumnsProcessorConfig(_Processor):
    processor_type: Literal["rename"] = "rename"
    mapping: dict[str, str] = Field(min_length=1, description="old name -> new name")

    @field_validator("mapping")
    @classmethod
    def _targets(cls, v: dict[str, str]) -> dict[str, str]:
        for new in v.values():
            check_identifier(new, "new column name")
        if len(set(v.values())) != len(v):
            raise ValueError("two columns are renamed to the same name")
        return v


class FilterProcessorConfig(_Processor):
    """Keep rows whose Jinja expression renders truthy (``true``/``1``/``yes``)."""

    processor_type: Literal["filter"] = "filter"
    expr: str

    @field_validator("expr")
    @classmethod
    def _valid(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("expr is empty; give a Jinja2 template such as '{{ score > 3 }}'")
        template_names(v, "expr")
        return v


class DedupeProcessorConfig(_Processor):
    processor_type: Literal["dedupe"] = "dedupe"
    columns: list[str] = Field(min_length=1)


class SchemaTransformProcessorConfig(_Processor):
    processor_type: Literal["schema_transform"] = "schema_transform"
    template: dict[str, Any] = Field(
        min_length=1,
        description="output column -> Jinja template, or a dict/list of templates and literals",
    )
    # How a `{{ value }}` prints: `text` is Jinja's (True, None), `json` is DataDesigner's
    # (true, null, a dict or list as JSON text).
    values: Literal["text", "json"] = added_field("text")

    @model_validator(mode="after")
    def _templates(self) -> SchemaTransformProcessorConfig:
        for key, value in self.template.items():
            check_identifier(key, "schema_transform output column")
            _check_template(value, f"template[{key!r}]")
        return self

    @property
    def required_columns(self) -> set[str]:
        return set().union(*(_names(v) for v in self.template.values()))


def _check_template(value: Any, where: str) -> None:
    """A leaf is a Jinja string or a JSON literal; dicts and lists nest. A list's items must
    have one shape, so the output column has one type (DataDesigner cannot write mixed lists
    either)."""
    if isinstance(value, str):
        template_names(value, where)
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: key {k!r} must be text")
            _check_template(v, f"{where}[{k!r}]")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_template(v, f"{where}[{i}]")
        shapes = {json.dumps(template_shape(v), sort_keys=True) for v in value}
        if len(shapes) > 1:
            raise ValueError(
                f"{where}: list items must all be templates (text) or all the same kind of"
                " literal, so the column has one type"
            )
    elif not (value is None or isinstance(value, bool | int | float)):
        raise ValueError(f"{where} must be a Jinja2 string, a literal, a dict or a list")


def template_shape(value: Any) -> Any:
    """The type a template renders to: 'str' for a template, the literal's kind, nested."""
    if isinstance(value, dict):
        return {k: template_shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [template_shape(value[0])] if value else ["str"]
    if value is None or isinstance(value, str):
        return "str"
    return type(value).__name__


def _names(value: Any) -> set[str]:
    if isinstance(value, str):
        return template_names(value, "template")
    if isinstance(value, dict):
        return set().union(set(), *(_names(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(set(), *(_names(v) for v in value))
    return set()


PostBatchProcessor = Annotated[
    DropColumnsProcessorConfig | RenameColumnsProcessorConfig,
    Field(discriminator="processor_type"),
]

FinalizeProcessor = Annotated[
    FilterProcessorConfig
    | DedupeProcessorConfig
    | SchemaTransformProcessorConfig
    | DropColumnsProcessorConfig,
    Field(discriminator="processor_type"),
]
