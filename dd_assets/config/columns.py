"""Column configs. `column_type` values are DataDesigner's (kebab-case); snake_case spellings,
which DataDesigner's own chaining docs use, are accepted and normalised."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

import jinja2
from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    JsonValue,
    Tag,
    field_validator,
    model_validator,
)

from dd_assets.config.base import (
    Bool,
    Float,
    Int,
    Scalar,
    added_field,
    is_identifier,
    model_settings,
)
from dd_assets.config.samplers import SamplerParams, inject_sampler_type
from dd_assets.config.templates import referenced_names


def check_identifier(value: str, what: str = "name") -> str:
    if not is_identifier(value):
        suggestion = re.sub(r"[^A-Za-z0-9_]", "_", value)
        if not suggestion or suggestion[0].isdigit():
            suggestion = "_" + suggestion
        raise ValueError(
            f"{what} {value!r} cannot be referenced from a Jinja template;"
            f" use letters, digits and underscores, e.g. {suggestion!r}"
        )
    return value


def template_names(source: str, field: str) -> set[str]:
    try:
        return set(referenced_names(source))
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(
            f"{field} is not a valid Jinja2 template: {exc.message} (line {exc.lineno})"
        ) from None


class SkipConfig(BaseModel):
    """DataDesigner's skip gate: where `when` (a Jinja template, braces included) renders to
    something truthy, the cell is not generated (no LLM request) and holds `value`."""

    model_config = model_settings(extra="forbid", frozen=True)

    when: str
    value: Scalar | None = None

    @field_validator("when")
    @classmethod
    def _reads_columns(cls, v: str) -> str:
        if not template_names(v, "skip.when"):
            raise ValueError(
                f"skip.when {v!r} reads no column; write a Jinja template with braces, e.g."
                " '{{ in_stock == 0 }}'"
            )
        return v

    @property
    def columns(self) -> set[str]:
        return template_names(self.when, "skip.when")


class _Column(BaseModel):
    model_config = model_settings(extra="forbid", frozen=True)

    name: str
    drop: Bool = Field(
        default=False,
        description="generate (so others can use it), then leave it out of the output",
    )
    skip: SkipConfig | None = added_field(
        None, description="per-row gate: skip the cell where `when` is true, writing `value`"
    )
    propagate_skip: Bool = added_field(
        True, description="skip the cell where a column it reads was skipped in that row"
    )

    _check_name = field_validator("name")(lambda v: check_identifier(v, "column name"))

    @property
    def data_columns(self) -> set[str]:
        """The columns whose values this column's own value is made from (the ones a skip
        propagates through)."""
        return set()

    @property
    def required_columns(self) -> set[str]:
        """Every column that must exist before this one: its data and its skip condition."""
        return self.data_columns | (self.skip.columns if self.skip is not None else set())

    @property
    def is_llm(self) -> bool:
        return False

    @property
    def output_names(self) -> list[str]:
        """The column's own name, then any side columns it makes (an LLM column's trace)."""
        return [self.name]


class SamplerConstraint(BaseModel):
    """The sampled value must satisfy `value <operator> rhs`, rhs a number or another sampler
    column of the row; a value that does not is drawn again (rejection sampling, per row)."""

    model_config = model_settings(extra="forbid", frozen=True)

    operator: Literal["lt", "le", "gt", "ge"]
    value: Float | None = None
    column: str | None = None

    @model_validator(mode="after")
    def _one_rhs(self) -> SamplerConstraint:
        if (self.value is None) == (self.column is None):
            raise ValueError("a constraint compares with a number (value) or a column, one of them")
        return self


NUMERIC_SAMPLERS = frozenset(
    {"uniform", "gaussian", "poisson", "bernoulli", "binomial", "scipy", "bernoulli_mixture"}
)
DATETIME_SAMPLERS = frozenset({"datetime", "timedelta"})


def condition_names(condition: str) -> set[str]:
    """Columns a conditional_params key reads: a Jinja expression without braces."""
    return template_names("{{ " + condition + " }}", f"condition {condition!r}")


class SamplerColumnConfig(_Column):
    column_type: Literal["sampler"] = "sampler"
    sampler_type: str
    params: SamplerParams
    convert_to: str | None = Field(
        default=None,
        description="'int' | 'float' | 'str' for numbers; a strftime format for datetimes",
    )
    conditional_params: dict[str, SamplerParams] = added_field(
        {},
        description="Jinja condition (no braces) -> params for the rows where it is true;"
        " rows matching none use `params`; of several true ones, the one sorting last wins",
    )
    constraints: list[SamplerConstraint] = added_field([])
    # How convert_to: int makes an integer: dd-assets draws uniform integers evenly over
    # [low, high] and floors other samplers; DataDesigner rounds the continuous value half to
    # even (so a uniform's end values come up half as often).
    int_rounding: Literal["default", "half_even"] = added_field("default")

    _inject = model_validator(mode="before")(inject_sampler_type)

    @field_validator("conditional_params")
    @classmethod
    def _sorted(cls, v: dict[str, Any]) -> dict[str, Any]:
        # The fingerprint sorts keys, so the data must not depend on their written order:
        # conditions are checked in sorted order (as DataDesigner's YAML export writes them).
        return dict(sorted(v.items()))

    @model_validator(mode="after")
    def _consistent(self) -> SamplerColumnConfig:
        if self.skip is not None:
            raise ValueError(
                "skip does not apply to sampler columns (they are drawn for every row); put it"
                " on the columns that read this one"
            )
        if self.params.sampler_type != self.sampler_type:
            raise ValueError(
                f"params.sampler_type {self.params.sampler_type!r} differs from sampler_type"
                f" {self.sampler_type!r}; remove it from params"
            )
        for cond, params in self.conditional_params.items():
            if params.sampler_type != self.sampler_type:
                raise ValueError(
                    f"conditional_params[{cond!r}] is a {params.sampler_type} sampler; it must be"
                    f" {self.sampler_type} like the column"
                )
            condition_names(cond)
        if self.convert_to is not None:
            if self.sampler_type in NUMERIC_SAMPLERS and self.convert_to not in (
                "int",
                "float",
                "str",
            ):
                raise ValueError(
                    f"convert_to for a {self.sampler_type} sampler must be int, float or str"
                )
            if self.sampler_type not in NUMERIC_SAMPLERS | DATETIME_SAMPLERS:
                raise ValueError(f"convert_to is not supported for a {self.sampler_type} sampler")
        if self.constraints and self.sampler_type not in NUMERIC_SAMPLERS:
            raise ValueError(
                f"constraints apply to numeric samplers, not to a {self.sampler_type} sampler"
            )
        if self.constraints and self.convert_to == "str":
            raise ValueError("constraints compare numbers; they cannot apply with convert_to: str")
        return self

    @property
    def data_columns(self) -> set[str]:
        out: set[str] = set()
        for p in (self.params, *self.conditional_params.values()):
            if p.sampler_type == "subcategory":
                out.add(p.category)
            elif p.sampler_type == "timedelta":
                out.add(p.reference_column_name)
        for cond in self.conditional_params:
            out |= condition_names(cond)
        out |= {c.column for c in self.constraints if c.column is not None}
        return out


class ExpressionColumnConfig(_Column):
    column_type: Literal["expression"] = "expression"
    expr: str
    dtype: Literal["int", "float", "str", "bool"] = "str"

    @field_validator("expr")
    @classmethod
    def _valid_expr(cls, v: str) -> str:
        if not v.strip():
            raise ValueError(
                "expr is empty or whitespace-only; give a Jinja2 template such as '{{ a }}'"
            )
        template_names(v, "expr")
        return v

    @model_validator(mode="after")
    def _skip_value_of_dtype(self) -> ExpressionColumnConfig:
        """A skipped cell holds skip.value converted to the column's dtype, as DataDesigner
        converts it (`int(value)`), so skipped and rendered cells share one type."""
        if self.skip is None or self.skip.value is None:
            return self
        to = {"int": int, "float": float, "str": str, "bool": bool}[self.dtype]
        if isinstance(self.skip.value, to) and not (
            to is int and isinstance(self.skip.value, bool)
        ):
            return self
        try:
            value = to(self.skip.value)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"skip.value {self.skip.value!r} cannot be converted to {self.dtype}: {exc}"
            ) from None
        object.__setattr__(self, "skip", self.skip.model_copy(update={"value": value}))
        return self

    @property
    def data_columns(self) -> set[str]:
        return template_names(self.expr, "expr")


TRACE_SUFFIX = "__trace"
REASONING_SUFFIX = "__reasoning_content"


class ImageContext(BaseModel):
    """DataDesigner's ImageContext: images sent with the prompt, from a column holding a URL,
    base64 data or an image file's path (or a JSON list of them). `data_type: null` detects
    which, per value, as DataDesigner does (engine/llm_cells.py, `image_parts`)."""

    model_config = model_settings(extra="forbid", frozen=True)

    column_name: str
    modality: Literal["image"] = "image"
    data_type: Literal["url", "base64"] | None = added_field(None)
    image_format: Literal["png", "jpg", "jpeg", "gif", "webp"] | None = None

    @model_validator(mode="after")
    def _format_for_base64(self) -> ImageContext:
        if self.data_type == "base64" and self.image_format is None:
            raise ValueError("image_format is required with data_type: base64")
        return self


class _LLMColumn(_Column):
    prompt: str
    model_alias: str
    system_prompt: str | None = None
    # Images sent before the prompt's text in the user message (OpenAI's image_url parts).
    multi_modal_context: list[ImageContext] | None = added_field(None)
    # DataDesigner's with_trace: the conversation kept in a side column `<name>__trace`.
    with_trace: Literal["none", "last_message", "all_messages"] = added_field("none")
    # DataDesigner's extract_reasoning_content: the answer's reasoning (a reasoning model's
    # `reasoning` / `reasoning_content`, stripped; null when it sent none) in
    # `<name>__reasoning_content`.
    extract_reasoning_content: Bool = added_field(False)
    # DataDesigner's tool_alias: the MCP tools (workflow `tools:`) the model may call while
    # answering (docs/llm.md#tool-calls).
    tool_alias: str | None = added_field(None)

    @property
    def output_names(self) -> list[str]:
        return (
            [self.name]
            + ([self.name + TRACE_SUFFIX] if self.with_trace != "none" else [])
            + ([self.name + REASONING_SUFFIX] if self.extract_reasoning_content else [])
        )

    @field_validator("prompt", "system_prompt")
    @classmethod
    def _valid_template(cls, v: str | None, info: Any) -> str | None:
        if v is not None:
            if info.field_name == "prompt" and not v.strip():
                raise ValueError("prompt is empty; give a Jinja2 template")
            template_names(v, info.field_name)
        return v

    @property
    def data_columns(self) -> set[str]:
        names = template_names(self.prompt, "prompt")
        if self.system_prompt:
            names |= template_names(self.system_prompt, "system_prompt")
        return names | {c.column_name for c in self.multi_modal_context or []}

    @property
    def is_llm(self) -> bool:
        return True


class LLMTextColumnConfig(_LLMColumn):
    column_type: Literal["llm-text"] = "llm-text"


CODE_LANGS = (
    "python", "javascript", "typescript", "java", "kotlin", "go", "rust", "ruby", "scala", "swift",
    "bash", "c", "cpp", "csharp", "cobol", "sql:sqlite", "sql:postgres", "sql:mysql", "sql:tsql",
    "sql:bigquery", "sql:ansi",
)  # fmt: skip


class LLMCodeColumnConfig(_LLMColumn):
    column_type: Literal["llm-code"] = "llm-code"
    code_lang: Literal[CODE_LANGS]  # type: ignore[valid-type]


class LLMStructuredColumnConfig(_LLMColumn):
    column_type: Literal["llm-structured"] = "llm-structured"
    output_format: dict[str, JsonValue] = Field(
        description="JSON schema the answer must validate against"
    )
    max_parse_retries: Int = Field(default=2, ge=0, le=10)

    @field_validator("output_format")
    @classmethod
    def _json_schema(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            json.dumps(v)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"output_format must be a JSON schema (JSON-serialisable): {exc}"
            ) from None
        if "type" not in v and "properties" not in v and "$ref" not in v and "anyOf" not in v:
            raise ValueError("output_format must be a JSON schema with a 'type' or 'properties'")
        return v


class Score(BaseModel):
    model_config = model_settings(extra="forbid", frozen=True)

    name: str
    description: str
    options: dict[Int | str, str] = Field(min_length=1)

    _check_name = field_validator("name")(lambda v: check_identifier(v, "score name"))


class LLMJudgeColumnConfig(_LLMColumn):
    column_type: Literal["llm-judge"] = "llm-judge"
    scores: list[Score] = Field(min_length=1)
    max_parse_retries: Int = Field(default=2, ge=0, le=10)


class EmbeddingColumnConfig(_Column):
    """DataDesigner's embedding column: vectors of `target_column`'s text from an
    OpenAI-compatible `/embeddings` endpoint, one per text (a cell holding a JSON list of texts
    gives one vector per item). The value is DataDesigner's
    `{embeddings, num_embeddings, dimension}`."""

    column_type: Literal["embedding"] = "embedding"
    target_column: str
    model_alias: str

    @property
    def data_columns(self) -> set[str]:
        return {self.target_column}

    @property
    def is_llm(self) -> bool:
        return True


class ImageColumnConfig(_Column):
    """DataDesigner's image column: an image model draws `prompt` (a Jinja template), optionally
    shown `multi_modal_context` images. The value is a list of images (a model may return
    several): base64 data in a preview, in the store the paths of the image files written
    beside the row group (docs/decisions.md, "Image columns")."""

    column_type: Literal["image"] = "image"
    prompt: str
    model_alias: str
    multi_modal_context: list[ImageContext] | None = None

    @field_validator("prompt")
    @classmethod
    def _valid_prompt(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("prompt is empty; give a Jinja2 template")
        template_names(v, "prompt")
        return v

    @property
    def data_columns(self) -> set[str]:
        names = template_names(self.prompt, "prompt")
        return names | {c.column_name for c in self.multi_modal_context or []}

    @property
    def is_llm(self) -> bool:
        return True


VALIDATOR_LANGS = (
    "python", "sql:sqlite", "sql:postgres", "sql:mysql", "sql:tsql", "sql:bigquery", "sql:ansi",
)  # fmt: skip


class CodeValidatorParams(BaseModel):
    model_config = model_settings(extra="forbid", frozen=True)

    code_lang: Literal[VALIDATOR_LANGS]  # type: ignore[valid-type]


class LocalCallableValidatorParams(BaseModel):
    """DataDesigner's local_callable validator: `validation_function` names an entry of the
    workflow's `functions:` (a function of a DataFrame of the target columns that returns one
    with `is_valid`). `report_fields` types the other fields of its report: filled in from the
    binding's dtype mapping when the config loads."""

    model_config = model_settings(extra="forbid", frozen=True)

    validation_function: str
    report_fields: dict[str, Literal["str", "int", "float", "bool"]] = Field(default_factory=dict)

    _check_function = field_validator("validation_function")(
        lambda v: check_identifier(v, "validation_function")
    )


def _validator_kind(v: Any) -> str:
    """Which validator params a mapping is (DataDesigner's params have no tag of their own), so
    an error names the fields of that one only."""
    if isinstance(v, dict):
        return "local_callable" if "validation_function" in v else "code"
    return "local_callable" if isinstance(v, LocalCallableValidatorParams) else "code"


ValidatorParams = Annotated[
    Annotated[CodeValidatorParams, Tag("code")]
    | Annotated[LocalCallableValidatorParams, Tag("local_callable")],
    Discriminator(_validator_kind),
]


class ValidationColumnConfig(_Column):
    """DataDesigner's code validation column: each target cell's code checked by a linter
    (python: ruff, SQL: sqlfluff's parser, as DataDesigner does). The value is the validator's
    report, `{is_valid, ...}`; with several target columns, one report per target column."""

    column_type: Literal["validation"] = "validation"
    target_columns: list[str] = Field(min_length=1)
    validator_type: Literal["code", "local_callable"] = "code"
    validator_params: ValidatorParams
    # DataDesigner's rows per validator call; here each cell is checked on its own, so it
    # changes no value (kept so a config carries over unchanged).
    batch_size: Int = Field(default=10, ge=1, le=100_000)

    @model_validator(mode="after")
    def _params_of_type(self) -> ValidationColumnConfig:
        local = isinstance(self.validator_params, LocalCallableValidatorParams)
        if local != (self.validator_type == "local_callable"):
            raise ValueError(
                "validator_params must be {code_lang} for validator_type code and"
                " {validation_function} for local_callable"
            )
        return self

    @field_validator("target_columns")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("target_columns names a column twice")
        return v

    @property
    def data_columns(self) -> set[str]:
        return set(self.target_columns)


class CustomColumnConfig(_Column):
    """DataDesigner's custom column: a Python function makes the value. `generator_function`
        names an entry of the workflow's `functions:` (config/functions.py), which says where the
        function lives; `required_columns`, `side_effect_columns` and `dtype` are filled in from
        that binding when the config loads (they decide the column's place and schema): `input_columns`
    is the function's required_columns."""

    column_type: Literal["custom"] = "custom"
    generator_function: str
    generation_strategy: Literal["cell_by_cell", "full_column"] = "cell_by_cell"
    generator_params: dict[str, JsonValue] | None = None
    # The function's required_columns (DataDesigner's decorator metadata, or the binding's).
    input_columns: list[str] = Field(default_factory=list)
    side_effect_columns: list[str] = Field(default_factory=list)
    # Output column (the column, its side-effect columns) -> its type; text when not given.
    dtypes: dict[str, Literal["str", "int", "float", "bool"]] = Field(default_factory=dict)

    def dtype_of(self, output: str) -> str:
        return self.dtypes.get(output, "str")

    _check_function = field_validator("generator_function")(
        lambda v: check_identifier(v, "generator_function")
    )

    @property
    def data_columns(self) -> set[str]:
        return set(self.input_columns)

    @property
    def output_names(self) -> list[str]:
        return [self.name, *self.side_effect_columns]


ColumnConfig = Annotated[
    SamplerColumnConfig
    | ExpressionColumnConfig
    | LLMTextColumnConfig
    | LLMCodeColumnConfig
    | LLMStructuredColumnConfig
    | LLMJudgeColumnConfig
    | EmbeddingColumnConfig
    | ImageColumnConfig
    | ValidationColumnConfig
    | CustomColumnConfig,
    Field(discriminator="column_type"),
]

COLUMN_TYPES = (
    "sampler", "expression", "llm-text", "llm-code", "llm-structured", "llm-judge", "embedding",
    "image", "validation", "custom",
)  # fmt: skip


def normalise_column_type(data: Any) -> Any:
    if isinstance(data, dict) and isinstance(data.get("column_type"), str):
        ct = data["column_type"].replace("_", "-")
        if ct != data["column_type"]:
            data = {**data, "column_type": ct}
    return data
