"""Workflow and stage configs, and the cross-field rules pydantic cannot express per field:
references, cycles, model aliases, seed stages. All such problems are collected, not just the first."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from pathlib import PurePath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    field_validator,
    model_validator,
)

from dd_assets.config.base import Bool, Int, added_field, model_settings
from dd_assets.config.columns import (
    ColumnConfig,
    SamplerColumnConfig,
    check_identifier,
    normalise_column_type,
    template_names,
)
from dd_assets.config.drift import DriftSettings, drift_issues
from dd_assets.config.errors import ConfigIssue, WorkflowConfigError
from dd_assets.config.functions import FunctionBinding
from dd_assets.config.limits import MAX_BUFFER_SIZE, MAX_NUM_RECORDS, MAX_ROW_GROUPS
from dd_assets.config.models import ModelConfig, ProviderConfig
from dd_assets.config.processors import (
    DedupeProcessorConfig,
    DropColumnsProcessorConfig,
    FilterProcessorConfig,
    FinalizeProcessor,
    PostBatchProcessor,
    RenameColumnsProcessorConfig,
    SchemaTransformProcessorConfig,
)
from dd_assets.config.run import RunSettings
from dd_assets.config.tools import McpProvider, ToolsConfig
from dd_assets.errors import unknown_stages


class StageSeed(BaseModel):
    """Rows come from another stage: `row_group` pairs row group i with upstream row group i
    (so this stage can run behind the upstream one); `sample` draws from the whole upstream."""

    model_config = model_settings(extra="forbid", frozen=True)

    stage: str
    mode: Literal["row_group", "sample"] = "row_group"
    strategy: Literal["ordered", "shuffle"] = "ordered"

    @model_validator(mode="after")
    def _strategy_only_for_sample(self) -> StageSeed:
        if self.mode == "row_group" and self.strategy != "ordered":
            raise ValueError("strategy applies to mode: sample only; row_group seeds are ordered")
        return self

    @property
    def upstreams(self) -> tuple[str, ...]:
        return (self.stage,)


class JoinSeed(BaseModel):
    """Rows come from several stages joined on key columns, row group by row group: row group i
    is the inner join of row group i of each (a diamond merging back). The key is what pairs rows,
    not their position, so a row one branch dropped (a failed LLM cell) is simply not joined."""

    model_config = model_settings(extra="forbid", frozen=True)

    stages: list[str]
    # Not `on`: YAML 1.1 reads an unquoted `on:` key as the boolean true.
    keys: list[str] = Field(min_length=1)
    mode: Literal["row_group", "sample"] = "row_group"

    @field_validator("keys", mode="before")
    @classmethod
    def _one_key(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("stages")
    @classmethod
    def _two_or_more(cls, v: list[str]) -> list[str]:
        if len(v) < 2:
            raise ValueError(
                "a join needs at least two stages; to seed from one stage write seed: {stage: NAME}"
            )
        dupes = sorted({s for s in v if v.count(s) > 1})
        if dupes:
            raise ValueError(f"stage(s) {', '.join(map(repr, dupes))} listed more than once")
        return v

    @field_validator("mode")
    @classmethod
    def _row_group_only(cls, v: str) -> str:
        if v != "row_group":
            raise ValueError(
                "a join pairs row group i of each stage, so its mode is row_group; to sample from"
                " joined rows, join in one stage and seed another from it with mode: sample"
            )
        return v

    @property
    def upstreams(self) -> tuple[str, ...]:
        return tuple(self.stages)


class SeedRows(BaseModel):
    """A slice of a seed file: rows `first`..`last`, both included (DataDesigner's IndexRange)."""

    model_config = model_settings(extra="forbid", frozen=True)

    first: Int = Field(ge=0)
    last: Int = Field(ge=0)

    @model_validator(mode="after")
    def _order(self) -> SeedRows:
        if self.last < self.first:
            raise ValueError(f"last ({self.last}) must be >= first ({self.first})")
        return self


class SeedShard(BaseModel):
    """Shard `index` of `count` equal blocks of a seed file, the last one taking the remainder
    (DataDesigner's PartitionBlock): machines can each take one shard of one file."""

    model_config = model_settings(extra="forbid", frozen=True)

    index: Int = Field(ge=0)
    count: Int = Field(ge=1)

    @model_validator(mode="after")
    def _in_range(self) -> SeedShard:
        if self.index >= self.count:
            raise ValueError(f"index ({self.index}) must be < count ({self.count}); it is 0-based")
        return self


class FileSeed(BaseModel):
    model_config = model_settings(extra="forbid", frozen=True)

    path: str
    strategy: Literal["ordered", "shuffle"] = "ordered"
    rows: SeedRows | None = added_field(None, description="only these rows of the file")
    shard: SeedShard | None = added_field(None, description="only this shard of the file")

    @model_validator(mode="after")
    def _one_selection(self) -> FileSeed:
        if self.rows is not None and self.shard is not None:
            raise ValueError("give rows or shard, not both: they both select part of the file")
        return self

    @field_validator("path")
    @classmethod
    def _format(cls, v: str) -> str:
        if PurePath(v).suffix.lower() not in (".parquet", ".csv", ".jsonl"):
            raise ValueError(f"seed file {v!r} must end in .parquet, .csv or .jsonl")
        return v

    @property
    def upstreams(self) -> tuple[str, ...]:
        return ()


def _seed_kind(v: Any) -> str:
    # Chosen by key, so a typo is reported against the one seed kind meant, not all three.
    if isinstance(v, dict):
        return "JoinSeed" if "stages" in v else "FileSeed" if "path" in v else "StageSeed"
    return type(v).__name__


SeedSpec = Annotated[
    Annotated[StageSeed, Tag("StageSeed")]
    | Annotated[JoinSeed, Tag("JoinSeed")]
    | Annotated[FileSeed, Tag("FileSeed")],
    Discriminator(_seed_kind),
]


class StageConfig(BaseModel):
    model_config = model_settings(extra="forbid", frozen=True)

    name: str
    description: str | None = None
    num_records: Int = Field(
        ge=1, le=MAX_NUM_RECORDS, description="rows to generate; growing it adds row groups"
    )
    buffer_size: Int = Field(
        default=1000, ge=1, le=MAX_BUFFER_SIZE, description="rows per row group = per partition"
    )
    seed: SeedSpec | None = None
    columns: list[ColumnConfig] = Field(default_factory=list)
    post_batch: list[PostBatchProcessor] = Field(default_factory=list)
    finalize: list[FinalizeProcessor] = Field(default_factory=list)
    allow_empty: Bool = False
    # Thresholds of the profile_drift check; not in the fingerprint (config/drift.py).
    drift: DriftSettings = DriftSettings()
    # Exactly this many rows in the final output: row groups are generated in order until that
    # many pass the finalize steps; num_records is then the candidate budget (docs/workflows.md).
    target_records: Int | None = added_field(
        None, ge=1, description="final output of exactly this many rows; num_records is the budget"
    )

    _check_name = field_validator("name")(lambda v: check_identifier(v, "stage name"))

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("columns"), list):
            data = {**data, "columns": [normalise_column_type(c) for c in data["columns"]]}
        return data

    @model_validator(mode="after")
    def _row_groups_bounded(self) -> StageConfig:
        n = self.num_row_groups
        if n > MAX_ROW_GROUPS:
            raise ValueError(
                f"num_records {self.num_records} in row groups of buffer_size {self.buffer_size}"
                f" makes {n} row groups (partitions); at most {MAX_ROW_GROUPS}: raise buffer_size to"
                f" at least {-(-self.num_records // MAX_ROW_GROUPS)}"
            )
        return self

    @property
    def num_row_groups(self) -> int:
        return num_row_groups(self.num_records, self.buffer_size)

    def row_group_bounds(self, row_group: int) -> tuple[int, int]:
        """Global [start, end) row indices of a row group."""
        if not 0 <= row_group < self.num_row_groups:
            raise IndexError(
                f"row group {row_group} is outside stage {self.name!r}'s 0..{self.num_row_groups - 1}"
            )
        return row_range(self.num_records, self.buffer_size, row_group)

    def column(self, name: str) -> ColumnConfig:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def model_aliases(self) -> set[str]:
        return {c.model_alias for c in self.columns if c.is_llm}  # type: ignore[union-attr]


class WorkflowConfig(BaseModel):
    # hide_input_in_errors: models: may hold a pasted key; a ValidationError must not print it.
    model_config = model_settings(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: str
    description: str | None = None
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    # DataDesigner's model providers, which its model_configs name (see config/datadesigner.py);
    # resolved into `models` when the config loads, so nothing downstream reads them.
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    # Python functions custom columns name by `generator_function` (config/functions.py).
    functions: dict[str, FunctionBinding] = Field(default_factory=dict)
    # MCP servers and the tools LLM columns may call (`tool_alias`): config/tools.py.
    mcp_providers: dict[str, McpProvider] = Field(default_factory=dict)
    tools: dict[str, ToolsConfig] = Field(default_factory=dict)
    stages: list[StageConfig] = Field(min_length=1)
    run: RunSettings = RunSettings()
    # Where it was read from, so an issue found later (against seed files) names file and line.
    _source: str | None = PrivateAttr(default=None)
    _lines: dict[tuple[Any, ...], int] = PrivateAttr(default_factory=dict)

    _check_name = field_validator("name")(lambda v: check_identifier(v, "workflow name"))

    @field_validator("mcp_providers", mode="before")
    @classmethod
    def _provider_list(cls, v: Any) -> Any:
        """DataDesigner's list of providers, each with its `name`, as a mapping."""
        if isinstance(v, list) and all(isinstance(p, dict) and "name" in p for p in v):
            return {p["name"]: {k: x for k, x in p.items() if k != "name"} for p in v}
        return v

    @model_validator(mode="after")
    def _semantics(self) -> WorkflowConfig:
        issues = semantic_issues(self)
        if issues:
            # Not a ValueError: pydantic re-raises it unchanged, issues and paths intact.
            raise WorkflowConfigError(issues)
        return self

    def stage(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        raise unknown_stages({name}, [s.name for s in self.stages], self.name)

    def upstreams_of(self, stage: StageConfig) -> list[StageConfig]:
        """The stages a stage's seed reads (two or more for a join), in the seed's order."""
        return [self.stage(name) for name in seed_upstreams(stage)]


def final_output_name(stage: str) -> str:
    """The name of a stage's final output (its finalize processors' result): the last part of its
    Dagster asset key, `[workflow, <stage>_final]`, and how messages name it."""
    return f"{stage}_final"


def num_row_groups(num_records: int, buffer_size: int) -> int:
    return -(-num_records // buffer_size)


def row_range(num_records: int, buffer_size: int, row_group: int) -> tuple[int, int]:
    """Global [start, end) row indices of a row group: the one definition of how a stage is cut."""
    start = row_group * buffer_size
    return start, min(num_records, start + buffer_size)


def seed_upstreams(stage: StageConfig) -> tuple[str, ...]:
    return stage.seed.upstreams if stage.seed is not None else ()


def pairs_row_groups(stage: StageConfig) -> bool:
    """Row group i reads only row group i of each upstream (a row_group seed or a join), so the
    stage can run right behind them."""
    seed = stage.seed
    return isinstance(seed, JoinSeed) or (isinstance(seed, StageSeed) and seed.mode == "row_group")


# ---------------------------------------------------------------------------------------------
# Cross-field rules


def column_owners(stage: StageConfig) -> dict[str, str]:
    """Each output column of the stage's columns (side columns included) -> the column that
    makes it: reading a side column waits for its column."""
    out: dict[str, str] = {}
    for c in stage.columns:
        for n in reversed(c.output_names):
            out.setdefault(n, c.name)
    return out


def column_order(stage: StageConfig, available: set[str] | None = None) -> list[str]:
    """Columns in dependency order; ties keep config order so generation is reproducible.
    Raises ValueError naming the cycle."""
    # Unique names: a duplicate is reported on its own and must not look like a cycle. Self
    # references are reported on their own too, so they do not hide a real cycle elsewhere.
    names = list(dict.fromkeys(c.name for c in stage.columns))
    owner = column_owners(stage)
    deps: dict[str, set[str]] = {}
    for c in stage.columns:
        deps.setdefault(
            c.name, {owner[d] for d in c.required_columns if d in owner and owner[d] != c.name}
        )
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(names):
        ready = [n for n in names if n not in done and deps[n] <= done]
        if not ready:
            stuck = [n for n in names if n not in done]
            raise ValueError(f"columns {stuck} depend on each other in a cycle")
        order.append(ready[0])
        done.add(ready[0])
    return order


def output_columns(stage: StageConfig, seed_columns: list[str]) -> list[str]:
    """Column names a stage's row groups hold once post_batch processors ran."""
    cols = [c for c in seed_columns if c not in {col.name for col in stage.columns}]
    cols += [n for c in stage.columns if not c.drop for n in c.output_names]
    for proc in stage.post_batch:
        if isinstance(proc, DropColumnsProcessorConfig):
            cols = [
                c for c in cols if not any(fnmatch.fnmatchcase(c, p) for p in proc.column_names)
            ]
        elif isinstance(proc, RenameColumnsProcessorConfig):
            cols = [proc.mapping.get(c, c) for c in cols]
    return cols


def column_output_name(stage: StageConfig, column: str) -> str | None:
    """The name a stage column has in the files once `drop` and post_batch processors ran
    (None: it is not in them)."""
    col = next(c for c in stage.columns if c.name == column)
    if col.drop:
        return None
    name: str | None = column
    for proc in stage.post_batch:
        if name is None:
            break
        if isinstance(proc, DropColumnsProcessorConfig):
            if any(fnmatch.fnmatchcase(name, p) for p in proc.column_names):
                name = None
        elif isinstance(proc, RenameColumnsProcessorConfig):
            name = proc.mapping.get(name, name)
    return name


# Stage name -> the columns of its seed file, once a file has been read (`validate` does).
FileColumns = Mapping[str, list[str]]


def seed_columns_of(
    workflow: WorkflowConfig, stage: StageConfig, files: FileColumns | None = None
) -> list[str] | None:
    """Columns a stage's seed provides; None when only the file can tell (a file seed whose
    columns are not in `files`)."""
    if stage.seed is None:
        return []
    if isinstance(stage.seed, FileSeed):
        got = (files or {}).get(stage.name)
        return list(got) if got is not None else None
    cols: list[str] = []
    for up in workflow.upstreams_of(stage):
        up_seed = seed_columns_of(workflow, up, files)
        if up_seed is None:
            return None  # a file somewhere upstream: checked against the file when the stage runs
        up_cols = output_columns(up, up_seed)
        if isinstance(stage.seed, StageSeed) and stage.seed.mode == "sample" and up.finalize:
            up_cols = finalized_columns(up, up_cols)
        cols += [c for c in up_cols if c not in cols]  # a join: the first stage's first
    return cols


def column_origins(
    workflow: WorkflowConfig, stage: StageConfig, files: FileColumns | None = None
) -> dict[str, str] | None:
    """Output column -> the stage whose rows made its values (None when a file seed hides them).

    A join uses it: two branches agree on a column only if it came down to both, row group by row
    group, from one stage. Sampling draws rows anew, so a sampled column starts a new origin."""
    seed = stage.seed
    origins: dict[str, str] = {}
    if isinstance(seed, FileSeed):
        # Unknown: stages reading one file in order get the same rows, but whether two
        # branches agree depends on their strategies and ranges; the join checks the rows.
        return None
    if isinstance(seed, StageSeed) and seed.mode == "sample":
        cols = seed_columns_of(workflow, stage, files)
        if cols is None:
            return None
        origins = dict.fromkeys(cols, stage.name)
    elif seed is not None:
        for up in workflow.upstreams_of(stage):
            up_origins = column_origins(workflow, up, files)
            if up_origins is None:
                return None
            origins = {**up_origins, **origins}  # the first stage's first, as the join does
    for c in stage.columns:
        for n in c.output_names:
            origins.pop(n, None)
            if not c.drop:
                origins[n] = stage.name
    for proc in stage.post_batch:
        if isinstance(proc, DropColumnsProcessorConfig):
            origins = {
                c: o
                for c, o in origins.items()
                if not any(fnmatch.fnmatchcase(c, p) for p in proc.column_names)
            }
        elif isinstance(proc, RenameColumnsProcessorConfig):
            origins = {proc.mapping.get(c, c): o for c, o in origins.items()}
    return origins


def finalized_columns(stage: StageConfig, cols: list[str]) -> list[str]:
    """Columns of a stage's final output (what `mode: sample` reads from a finalized stage)."""
    for proc in stage.finalize:
        if isinstance(proc, DropColumnsProcessorConfig):
            cols = [
                c for c in cols if not any(fnmatch.fnmatchcase(c, p) for p in proc.column_names)
            ]
        elif isinstance(proc, SchemaTransformProcessorConfig):
            cols = list(proc.template)
    return cols


def _stage_issues(
    workflow: WorkflowConfig, i: int, stage: StageConfig, seed_cols: list[str] | None
) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    base = f"stages[{i}]"
    seen: dict[str, int] = {}
    for j, col in enumerate(stage.columns):
        if col.name in seen:
            issues.append(
                ConfigIssue(
                    f"{base}.columns[{j}].name",
                    f"duplicate column name {col.name!r} (also columns[{seen[col.name]}])",
                )
            )
        seen.setdefault(col.name, j)
    known = set(seen) | set(seed_cols or []) | {n for c in stage.columns for n in c.output_names}
    by_name = {c.name: c for c in stage.columns}
    for j, col in enumerate(stage.columns):
        path = f"{base}.columns[{j}]"
        try:
            required = col.required_columns
        except ValueError as exc:  # template syntax, already reported by the field validator
            issues.append(ConfigIssue(path, str(exc)))
            continue
        if col.name in required:
            issues.append(ConfigIssue(path, f"column {col.name!r} refers to itself"))
        if seed_cols is not None:
            for ref in sorted(required - known - {col.name}):
                issues.append(
                    ConfigIssue(
                        path,
                        f"column {col.name!r} refers to unknown column {ref!r}; known columns:"
                        f" {', '.join(sorted(known)) or '(none)'}",
                    )
                )
        if isinstance(col, SamplerColumnConfig) and col.params.sampler_type == "subcategory":
            parent = by_name.get(col.params.category)
            if parent is not None and not (
                isinstance(parent, SamplerColumnConfig) and parent.sampler_type == "category"
            ):
                issues.append(
                    ConfigIssue(
                        f"{path}.params.category",
                        f"parent column {col.params.category!r} must be a sampler with sampler_type: category",
                    )
                )
            elif isinstance(parent, SamplerColumnConfig):
                every = [parent.params, *parent.conditional_params.values()]
                values = dict.fromkeys(str(v) for p in every for v in p.values)  # type: ignore[union-attr]
                missing = [v for v in values if v not in col.params.values]  # type: ignore[union-attr]
                if missing:
                    issues.append(
                        ConfigIssue(
                            f"{path}.params.values",
                            f"no subcategory values for parent value(s) {missing} of {parent.name!r}",
                        )
                    )
        if isinstance(col, SamplerColumnConfig):
            for ref in sorted(col.required_columns & set(by_name)):
                if by_name[ref].is_llm:
                    issues.append(
                        ConfigIssue(
                            path,
                            f"sampler column {col.name!r} reads LLM column {ref!r}; a sampler's"
                            " conditions, constraints and references read samplers,"
                            " expressions and seed columns only",
                        )
                    )
        if col.is_llm and col.model_alias not in workflow.models:  # type: ignore[union-attr]
            known_models = ", ".join(sorted(workflow.models)) or "(none defined under models:)"
            issues.append(
                ConfigIssue(
                    f"{path}.model_alias",
                    f"unknown model alias {col.model_alias!r}; models: {known_models}",  # type: ignore[union-attr]
                )
            )
        alias = getattr(col, "tool_alias", None)
        if alias is not None and alias not in workflow.tools:
            issues.append(
                ConfigIssue(
                    f"{path}.tool_alias",
                    f"unknown tool_alias {alias!r} on column {col.name!r}; define it under"
                    f" tools: (known: {', '.join(sorted(workflow.tools)) or 'none'})",
                )
            )
    try:
        column_order(stage)
    except ValueError as exc:
        issues.append(ConfigIssue(f"{base}.columns", str(exc)))
    if stage.target_records is not None:
        if not stage.finalize:
            issues.append(
                ConfigIssue(
                    f"{base}.target_records",
                    "target_records counts the rows that pass the finalize steps, and the stage"
                    " has none; add a finalize filter or dedupe, or set num_records instead",
                )
            )
        if stage.target_records > stage.num_records:
            issues.append(
                ConfigIssue(
                    f"{base}.target_records",
                    f"target_records ({stage.target_records}) is more than num_records"
                    f" ({stage.num_records}), the budget of candidate rows it is taken from;"
                    " raise num_records",
                )
            )
    if not stage.columns and stage.seed is None:
        issues.append(
            ConfigIssue(f"{base}.columns", "a stage without a seed needs at least one column")
        )
    if seed_cols is not None:
        issues += _processor_issues(base, stage, seed_cols)
    issues += drift_issues(base, stage.drift, stage.columns)
    return issues


def _processor_issues(base: str, stage: StageConfig, seed_cols: list[str]) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    cols = [c for c in seed_cols if c not in {col.name for col in stage.columns}]
    cols += [n for c in stage.columns if not c.drop for n in c.output_names]
    for k, proc in enumerate(stage.post_batch):
        path = f"{base}.post_batch[{k}]"
        if isinstance(proc, DropColumnsProcessorConfig):
            for pat in proc.column_names:
                if not any(fnmatch.fnmatchcase(c, pat) for c in cols):
                    issues.append(
                        ConfigIssue(
                            f"{path}.column_names",
                            f"{pat!r} matches no column; columns: {', '.join(cols)}",
                        )
                    )
            cols = [
                c for c in cols if not any(fnmatch.fnmatchcase(c, p) for p in proc.column_names)
            ]
        else:
            for old in proc.mapping:
                if old not in cols:
                    issues.append(
                        ConfigIssue(
                            f"{path}.mapping",
                            f"cannot rename unknown column {old!r}; columns: {', '.join(cols)}",
                        )
                    )
            renamed = [proc.mapping.get(c, c) for c in cols]
            for dup in sorted({c for c in renamed if renamed.count(c) > 1}):
                olds = [c for c in cols if proc.mapping.get(c, c) == dup]
                issues.append(
                    ConfigIssue(
                        f"{path}.mapping",
                        f"renaming would give two columns the name {dup!r} (from"
                        f" {' and '.join(map(repr, olds))}); rename or drop one of them first",
                    )
                )
            cols = renamed
    if not cols and stage.columns:
        issues.append(ConfigIssue(f"{base}.post_batch", "post_batch processors leave no column"))
    return issues + _finalize_issues(base, stage, cols)


def _finalize_issues(base: str, stage: StageConfig, cols: list[str]) -> list[ConfigIssue]:
    """Finalize steps name only columns the step before them leaves: found here, not after
    hours of generation (finalize runs last)."""
    issues: list[ConfigIssue] = []
    for k, proc in enumerate(stage.finalize):
        path = f"{base}.finalize[{k}]"
        known = ", ".join(cols) or "(none)"
        if isinstance(proc, DedupeProcessorConfig):
            for c in proc.columns:
                if c not in cols:
                    issues.append(
                        ConfigIssue(
                            f"{path}.columns", f"dedupe on unknown column {c!r}; columns: {known}"
                        )
                    )
        elif isinstance(proc, FilterProcessorConfig):
            for ref in sorted(template_names(proc.expr, "expr") - set(cols)):
                issues.append(
                    ConfigIssue(f"{path}.expr", f"unknown column {ref!r}; columns: {known}")
                )
        elif isinstance(proc, SchemaTransformProcessorConfig):
            for ref in sorted(proc.required_columns - set(cols)):
                issues.append(
                    ConfigIssue(f"{path}.template", f"unknown column {ref!r}; columns: {known}")
                )
            cols = list(proc.template)
        elif isinstance(proc, DropColumnsProcessorConfig):
            for pat in proc.column_names:
                if not any(fnmatch.fnmatchcase(c, pat) for c in cols):
                    issues.append(
                        ConfigIssue(
                            f"{path}.column_names", f"{pat!r} matches no column; columns: {known}"
                        )
                    )
            cols = [
                c for c in cols if not any(fnmatch.fnmatchcase(c, p) for p in proc.column_names)
            ]
    if stage.finalize and not cols:
        issues.append(ConfigIssue(f"{base}.finalize", "finalize steps leave no column"))
    return issues


def semantic_issues(
    workflow: WorkflowConfig, files: FileColumns | None = None
) -> list[ConfigIssue]:
    """Every cross-field problem; with `files` (seed files' columns), also those that only the
    files' columns reveal (a rename onto a column a seed file has, a reference to a column it
    lacks)."""
    issues: list[ConfigIssue] = []
    for alias, tools in workflow.tools.items():
        for k, p in enumerate(tools.providers):
            if p not in workflow.mcp_providers:
                issues.append(
                    ConfigIssue(
                        f"tools.{alias}.providers[{k}]",
                        f"MCP provider {p!r} of tool_alias {alias!r} is not defined; add it under"
                        " mcp_providers: (a stdio command or a streamable_http endpoint; dd-assets"
                        " import: --mcp-provider NAME=URL or NAME=stdio:COMMAND)",
                    )
                )
    index: dict[str, int] = {}
    for i, stage in enumerate(workflow.stages):
        if stage.name in index:
            issues.append(
                ConfigIssue(
                    f"stages[{i}].name",
                    f"duplicate stage name {stage.name!r} (also stages[{index[stage.name]}])",
                )
            )
        index.setdefault(stage.name, i)
    for i, stage in enumerate(workflow.stages):
        final = final_output_name(stage.name)
        if stage.finalize and final in index:
            issues.append(
                ConfigIssue(
                    f"stages[{index[final]}].name",
                    f"stage name {final!r} is the name of stage {stage.name!r}'s final output"
                    f" (stages[{i}] has finalize processors); rename one of the two stages",
                )
            )
    broken: set[int] = set()  # stages whose own seed names an unknown stage or themselves
    for i, stage in enumerate(workflow.stages):
        seed = stage.seed
        for k, up in enumerate(seed_upstreams(stage)):
            where = (
                f"stages[{i}].seed.stage"
                if isinstance(seed, StageSeed)
                else f"stages[{i}].seed.stages[{k}]"
            )
            if up not in index:
                broken.add(i)
                issues.append(
                    ConfigIssue(where, f"unknown stage {up!r}; stages: {', '.join(index)}")
                )
            elif up == stage.name:
                broken.add(i)
                issues.append(ConfigIssue(where, f"stage {up!r} cannot seed itself"))
            elif seed.mode == "row_group":  # type: ignore[union-attr]
                upstream = workflow.stages[index[up]]
                if upstream.target_records is not None:
                    issues.append(
                        ConfigIssue(
                            where,
                            f"stage {up!r} has target_records, so its row groups after the"
                            " target are never generated and there is no row group i to pair"
                            f" with; seed {stage.name!r} with mode: sample (it then reads"
                            f" {up!r}'s final output of exactly {upstream.target_records} rows)",
                        )
                    )
                for attr in ("buffer_size", "num_records"):
                    if getattr(upstream, attr) != getattr(stage, attr):
                        issues.append(
                            ConfigIssue(
                                f"stages[{i}].{attr}",
                                f"a row_group seed pairs row groups one to one, so {attr} must equal"
                                f" {up!r}'s ({getattr(upstream, attr)}), not {getattr(stage, attr)}"
                                + ("; or use mode: sample" if isinstance(seed, StageSeed) else ""),
                            )
                        )
    # Per stage, not for the whole workflow: a broken seed elsewhere must not switch off the
    # column-reference checks of stages it does not feed.
    sound: set[int] = set()

    def ancestry(i: int, path: tuple[str, ...]) -> tuple[bool, str | None]:
        """(every stage above is sound, the stage a cycle runs through if there is one)."""
        if i in sound:
            return True, None
        if i in broken:
            return False, None
        stage = workflow.stages[i]
        for up in seed_upstreams(stage):
            if up in path or up == stage.name:
                return False, up
            ok, cycle = ancestry(index[up], (*path, stage.name))
            if not ok:
                return False, cycle
        sound.add(i)
        return True, None

    chain_ok: list[bool] = []
    for i in range(len(workflow.stages)):
        ok, cycle = ancestry(i, ())
        if cycle is not None:
            issues.append(
                ConfigIssue(
                    f"stages[{i}].seed", f"stages seed each other in a cycle through {cycle!r}"
                )
            )
        chain_ok.append(ok)
    for i, stage in enumerate(workflow.stages):
        seed_cols = seed_columns_of(workflow, stage, files) if chain_ok[i] else None
        issues += _stage_issues(workflow, i, stage, seed_cols)
        if chain_ok[i] and isinstance(stage.seed, JoinSeed):
            issues += _join_issues(workflow, i, stage, files)
    return issues


def _join_issues(
    workflow: WorkflowConfig, i: int, stage: StageConfig, files: FileColumns | None
) -> list[ConfigIssue]:
    """Keys every joined stage has, from one common stage; no other column made twice."""
    seed = stage.seed
    assert isinstance(seed, JoinSeed)
    ups = workflow.upstreams_of(stage)
    issues: list[ConfigIssue] = []
    cols = {}
    for up in ups:
        up_seed = seed_columns_of(workflow, up, files)
        if up_seed is None:
            return issues  # a seed file decides; the join checks the rows when it runs
        cols[up.name] = output_columns(up, up_seed)
    for key in seed.keys:
        lacking = [name for name, c in cols.items() if key not in c]
        for name in lacking:
            issues.append(
                ConfigIssue(
                    f"stages[{i}].seed.keys",
                    f"join key {key!r} is not a column of stage {name!r}; its columns:"
                    f" {', '.join(cols[name])}",
                )
            )
    origins = {up.name: column_origins(workflow, up, files) or {} for up in ups}
    shared: dict[str, list[str]] = {}
    for name, c in cols.items():
        for col in c:
            shared.setdefault(col, []).append(name)
    for col, holders in shared.items():
        made = {origins[h].get(col) for h in holders}
        if len(holders) < 2 or len(made) == 1:
            continue
        where = " and ".join(repr(o) for o in sorted(made, key=str))
        if col in seed.keys:
            issues.append(
                ConfigIssue(
                    f"stages[{i}].seed.keys",
                    f"join key {col!r} is made separately in stages {where}, so its values cannot"
                    " match; join on a column that comes down to every joined stage from one"
                    " stage (row group by row group), such as a uuid sampled there",
                )
            )
        else:
            issues.append(
                ConfigIssue(
                    f"stages[{i}].seed.stages",
                    f"column {col!r} is in joined stages {', '.join(map(repr, holders))} but made"
                    f" separately in stages {where}, so a joined row would have two values; drop"
                    " or rename it with a post_batch processor in all but one of them",
                )
            )
    return issues
