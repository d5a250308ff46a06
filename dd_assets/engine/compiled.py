"""A stage compiled for the engine: its columns in dependency order, split into the batch phase
(samplers, expressions over them) and the cell phase (LLM columns and what depends on them), with
each sampler column's key. Plain config logic, so planning a workflow (every command does) costs
no numpy, pyarrow or Faker import."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from dd_assets.config.columns import SamplerColumnConfig, ValidationColumnConfig
from dd_assets.config.fingerprint import column_key, workflow_fingerprints
from dd_assets.config.workflow import StageConfig, WorkflowConfig, column_order
from dd_assets.errors import GenerationError


@dataclass(frozen=True)
class CompiledStage:
    workflow: WorkflowConfig
    stage: StageConfig
    fingerprint: str
    order: tuple[str, ...]
    batch_columns: tuple[str, ...]
    cell_columns: tuple[str, ...]
    keys: dict[str, int]

    @property
    def needs_cells(self) -> bool:
        return bool(self.cell_columns)


def compile_stage(
    workflow: WorkflowConfig, stage_name: str, fingerprint: str | None = None
) -> CompiledStage:
    stage = workflow.stage(stage_name)
    fingerprint = fingerprint or workflow_fingerprints(workflow)[stage_name].hex
    order = column_order(stage)
    by_name = {c.name: c for c in stage.columns}
    cell: list[str] = []
    for name in order:
        col = by_name[name]
        if isinstance(col, ValidationColumnConfig):
            _check_validator(col, stage_name)
        # Validation cells run a linter each: in the cell phase, in a thread, beside the others.
        if (
            col.is_llm
            or isinstance(col, ValidationColumnConfig)
            or col.required_columns & set(cell)
        ):
            cell.append(name)
    late = [n for n in cell if isinstance(by_name[n], SamplerColumnConfig)]
    if late:
        raise GenerationError(
            f"sampler column {late[0]!r} of stage {stage_name!r} reads a column made from LLM"
            " output (a condition, constraint or reference); samplers can read samplers,"
            " expressions over them and seed columns only"
        )
    batch = [n for n in order if n not in cell]
    keys = {
        c.name: column_key(workflow, stage, c.name)
        for c in stage.columns
        if isinstance(c, SamplerColumnConfig)
    }
    return CompiledStage(
        workflow, stage, fingerprint, tuple(order), tuple(batch), tuple(cell), keys
    )


def _check_validator(col: ValidationColumnConfig, stage_name: str) -> None:
    """A validation column's linter is an optional dependency: say so before any row is made
    (found, not imported: planning stays cheap)."""
    tool = "ruff" if col.validator_params.code_lang == "python" else "sqlfluff"
    if importlib.util.find_spec(tool) is None:
        raise GenerationError(
            f"validation column {col.name!r} of stage {stage_name!r}"
            f" ({col.validator_params.code_lang}) needs {tool}, which is not installed:"
            " pip install 'dd-assets[validation]'"
        )
