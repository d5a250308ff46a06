"""Processors. `post_batch` ones are row-group local (they run before a row group is written);
`finalize` ones see the whole dataset and produce the stage's final output."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dd_assets.config.columns import check_identifier, template_names


class _Processor(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

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
    template: dict[str, Any] = Field(min_length=1, description="output column -> Jinja template")

    @model_validator(mode="after")
    def _templates(self) -> SchemaTransformProcessorConfig:
        for key, value in self.template.items():
            check_identifier(key, "schema_transform output column")
            if not isinstance(value, str):
                raise ValueError(f"template[{key!r}] must be a Jinja2 string")
            template_names(value, f"template[{key!r}]")
        return self


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
