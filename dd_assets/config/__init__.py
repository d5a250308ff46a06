"""Workflow configuration: pydantic models, validation and YAML loading. Knows nothing of Dagster
or of storage, so it can be used (and tested) on its own."""

from dd_assets.config.columns import (
    ColumnConfig,
    ExpressionColumnConfig,
    LLMCodeColumnConfig,
    LLMJudgeColumnConfig,
    LLMStructuredColumnConfig,
    LLMTextColumnConfig,
    SamplerColumnConfig,
    Score,
)
from dd_assets.config.errors import ConfigIssue, WorkflowConfigError
from dd_assets.config.loader import load_workflow, load_workflows, loads_workflow, parse_workflow
from dd_assets.config.models import InferenceParams, ModelConfig
from dd_assets.config.run import EarlyStopSettings, ResumeMode, RunSettings
from dd_assets.config.workflow import (
    FileSeed,
    JoinSeed,
    SeedRows,
    SeedShard,
    StageConfig,
    StageSeed,
    WorkflowConfig,
    column_order,
    output_columns,
    pairs_row_groups,
    seed_columns_of,
    seed_upstreams,
)

__all__ = [
    "ColumnConfig",
    "ConfigIssue",
    "EarlyStopSettings",
    "ExpressionColumnConfig",
    "FileSeed",
    "InferenceParams",
    "JoinSeed",
    "LLMCodeColumnConfig",
    "LLMJudgeColumnConfig",
    "LLMStructuredColumnConfig",
    "LLMTextColumnConfig",
    "ModelConfig",
    "ResumeMode",
    "RunSettings",
    "SamplerColumnConfig",
    "Score",
    "SeedRows",
    "SeedShard",
    "StageConfig",
    "StageSeed",
    "WorkflowConfig",
    "WorkflowConfigError",
    "column_order",
    "load_workflow",
    "load_workflows",
    "loads_workflow",
    "output_columns",
    "pairs_row_groups",
    "parse_workflow",
    "seed_columns_of",
    "seed_upstreams",
]
