"""Workflow and stage configs, and the cross-field rules pydantic cannot express per field:
references, cycles, model aliases, seed stages. All such problems are collected, not just the first."""

from __future__ import annotations

import fnmatch
from pathlib import PurePath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dd_assets.config.columns import (
    ColumnConfig,
    SamplerColumnConfig,
    check_identifier,
    normalise_column_type,
)
from dd_assets.config.errors import ConfigIssue, WorkflowConfigError
from dd_assets.config.models import ModelConfig
from dd_assets.config.processors import (
    DropColumnsProcessorConfig,
    FinalizeProcessor,
    PostBatchProcessor,
    RenameColumnsProcessorConfig,
    SchemaTransformProcessorConfig,
)
from dd_assets.config.run import RunSettings


class StageSeed(BaseModel):
    """Rows come from another stage: `row_group` pairs row group i with upstream row group i
    (so this stage can run behind the upstream one); `sample` draws from the whole upstream."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: str
    mode: Literal["row_group", "sample"] = "row_group"
    strategy: Literal["ordered", "shuffle"] = "ordered"

    @model_validator(mode="after")
    def _strategy_only_for_sample(self) -> StageSeed:
        if self.mode == "row_group" and self.strategy != "ordered":
            raise ValueError("strategy applies to mode: sample only; row_group seeds are ordered")
        return self


class FileSeed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    strategy: Literal["ordered", "shuffle"] = "ordered"

    @field_validator("path")
    @classmethod
    def _format(cls, v: str) -> str:
        if PurePath(v).suffix.lower() not in (".parquet", ".csv", ".jsonl"):
            raise ValueError(f"seed file {v!r} must end in .parquet, .csv or .jsonl")
        return v


SeedSpec = StageSeed | FileSeed


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str | None = None
    num_records: int = Field(ge=1, description="rows to generate; growing it adds row groups")
    buffer_size: int = Field(default=1000, ge=1, description="rows per row group = per partition")
    seed: SeedSpec | None = None
    columns: list[ColumnConfig] = Field(default_factory=list)
    post_batch: list[PostBatchProcessor] = Field(default_factory=list)
    finalize: list[FinalizeProcessor] = Field(default_factory=list)
    allow_empty: bool = False

    _check_name = field_validator("name")(lambda v: check_identifier(v, "stage name"))

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("columns"), list):
            data = {**data, "columns": [normalise_column_type(c) for c in data["columns"]]}
        return data

    @property
    def num_row_groups(self) -> int:
        return -(-self.num_records // self.buffer_size)

    def row_group_bounds(self, row_group: int) -> tuple[int, int]:
        """Global [start, end) row indices of a row group."""
        if not 0 <= row_group < self.num_row_groups:
            raise IndexError(
                f"row group {row_group} is outside stage {self.name!r}'s 0..{self.num_row_groups - 1}"
            )
        start = row_group * self.buffer_size
        return start, min(self.num_records, start + self.buffer_size)

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
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: str
    description: str | None = None
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    stages: list[StageConfig] = Field(min_length=1)
    run: RunSettings = RunSettings()

    _check_name = field_validator("name")(lambda v: check_identifier(v, "workflow name"))

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
        known = ", ".join(s.name for s in self.stages)
        raise KeyError(f"no stage {name!r} in workflow {self.name!r}; stages: {known}")

    def upstream_of(self, stage: StageConfig) -> StageConfig | None:
        if isinstance(stage.seed, StageSeed):
            return self.stage(stage.seed.stage)
        return None


# ---------------------------------------------------------------------------------------------
# Cross-field rules


def column_order(stage: StageConfig, available: set[str] | None = None) -> list[str]:
    """Columns in dependency order; ties keep config order so generation is reproducible.
    Raises ValueError naming the cycle."""
    # Unique names: a duplicate is reported on its own and must not look like a cycle. Self
    # references are reported on their own too, so they do not hide a real cycle elsewhere.
    names = list(dict.fromkeys(c.name for c in stage.columns))
    deps: dict[str, set[str]] = {}
    for c in stage.columns:
        deps.setdefault(c.name, {d for d in c.required_columns if d in names and d != c.name})
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
    cols += [c.name for c in stage.columns if not c.drop]
    for proc in stage.post_batch:
        if isinstance(proc, DropColumnsProcessorConfig):
            cols = [
                c for c in cols if not any(fnmatch.fnmatchcase(c, p) for p in proc.column_names)
            ]
        elif isinstance(proc, RenameColumnsProcessorConfig):
            cols = [proc.mapping.get(c, c) for c in cols]
    return cols


def seed_columns_of(workflow: WorkflowConfig, stage: StageConfig) -> list[str] | None:
    """Columns a stage's seed provides; None when only the file can tell (file seeds)."""
    if stage.seed is None:
        return []
    if isinstance(stage.seed, FileSeed):
        return None
    up = workflow.stage(stage.seed.stage)
    up_seed = seed_columns_of(workflow, up)
    if up_seed is None:
        return None  # a file somewhere upstream: checked against the file when the stage runs
    cols = output_columns(up, up_seed)
    if stage.seed.mode == "sample" and up.finalize:
        cols = finalized_columns(up, cols)
    return cols


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
    known = set(seen) | set(seed_cols or [])
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
                missing = [str(v) for v in parent.params.values if str(v) not in col.params.values]  # type: ignore[union-attr]
                if missing:
                    issues.append(
                        ConfigIssue(
                            f"{path}.params.values",
                            f"no subcategory values for parent value(s) {missing} of {parent.name!r}",
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
    try:
        column_order(stage)
    except ValueError as exc:
        issues.append(ConfigIssue(f"{base}.columns", str(exc)))
    if not stage.columns and stage.seed is None:
        issues.append(
            ConfigIssue(f"{base}.columns", "a stage without a seed needs at least one column")
        )
    if seed_cols is not None:
        issues += _processor_issues(base, stage, seed_cols)
    return issues


def _processor_issues(base: str, stage: StageConfig, seed_cols: list[str]) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    cols = [c for c in seed_cols if c not in {col.name for col in stage.columns}]
    cols += [c.name for c in stage.columns if not c.drop]
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
            if len(set(renamed)) != len(renamed):
                issues.append(
                    ConfigIssue(f"{path}.mapping", "renaming would give two columns the same name")
                )
            cols = renamed
    if not cols and stage.columns:
        issues.append(ConfigIssue(f"{base}.post_batch", "post_batch processors leave no column"))
    return issues


def semantic_issues(workflow: WorkflowConfig) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
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
    broken: set[str] = set()  # stages whose own seed names an unknown stage or themselves
    for i, stage in enumerate(workflow.stages):
        if isinstance(stage.seed, StageSeed):
            up = stage.seed.stage
            if up not in index:
                broken.add(stage.name)
                issues.append(
                    ConfigIssue(
                        f"stages[{i}].seed.stage",
                        f"unknown stage {up!r}; stages: {', '.join(index)}",
                    )
                )
            elif up == stage.name:
                broken.add(stage.name)
                issues.append(
                    ConfigIssue(f"stages[{i}].seed.stage", f"stage {up!r} cannot seed itself")
                )
            elif stage.seed.mode == "row_group":
                upstream = workflow.stages[index[up]]
                for attr in ("buffer_size", "num_records"):
                    if getattr(upstream, attr) != getattr(stage, attr):
                        issues.append(
                            ConfigIssue(
                                f"stages[{i}].{attr}",
                                f"a row_group seed pairs row groups one to one, so {attr} must equal"
                                f" {up!r}'s ({getattr(upstream, attr)}), not {getattr(stage, attr)};"
                                " or use mode: sample",
                            )
                        )
    # Per stage, not for the whole workflow: a broken seed elsewhere must not switch off the
    # column-reference checks of stages it does not feed.
    chain_ok: list[bool] = []
    for i, stage in enumerate(workflow.stages):
        seen = {stage.name}
        cur = stage
        ok = True
        while isinstance(cur.seed, StageSeed):
            if cur.name in broken:
                ok = False
                break
            nxt = cur.seed.stage
            if nxt in seen:
                issues.append(
                    ConfigIssue(
                        f"stages[{i}].seed", f"stages seed each other in a cycle through {nxt!r}"
                    )
                )
                ok = False
                break
            seen.add(nxt)
            cur = workflow.stages[index[nxt]]
        chain_ok.append(ok)
    for i, stage in enumerate(workflow.stages):
        seed_cols = seed_columns_of(workflow, stage) if chain_ok[i] else None
        issues += _stage_issues(workflow, i, stage, seed_cols)
    return issues
