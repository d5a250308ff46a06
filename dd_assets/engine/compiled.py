"""A stage compiled for the engine: its columns in dependency order, split into the batch phase
(samplers, expressions over them) and the cell phase (LLM columns and what depends on them), with
each sampler column's key. Plain config logic, so planning a workflow (every command does) costs
no numpy, pyarrow or Faker import."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from dd_assets.config.columns import (
    CustomColumnConfig,
    LocalCallableValidatorParams,
    SamplerColumnConfig,
    ValidationColumnConfig,
)
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
    made_in_cells: set[str] = set()  # output columns (side columns too) of the cell columns
    for name in order:
        col = by_name[name]
        if isinstance(col, ValidationColumnConfig):
            _check_validator(col, stage_name)
        if isinstance(col, CustomColumnConfig) and col.generation_strategy == "full_column":
            _check_full_column(col, stage_name, col.required_columns & made_in_cells)
        # Validation cells run a linter each, custom cells the user's function: in the cell
        # phase, in a thread, beside the others.
        if (
            col.is_llm
            or isinstance(col, ValidationColumnConfig)
            or (isinstance(col, CustomColumnConfig) and col.generation_strategy == "cell_by_cell")
            or col.required_columns & made_in_cells
        ):
            cell.append(name)
            made_in_cells.update(col.output_names)
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
    (found, not imported: planning stays cheap). A local_callable one gets a pandas DataFrame."""
    if isinstance(col.validator_params, LocalCallableValidatorParams):
        if importlib.util.find_spec("pandas") is None:
            raise GenerationError(
                f"validation column {col.name!r} of stage {stage_name!r} is local_callable, which"
                " hands the function a pandas DataFrame: pip install 'dd-assets[custom]'"
            )
        return
    tool = "ruff" if col.validator_params.code_lang == "python" else "sqlfluff"
    if importlib.util.find_spec(tool) is None:
        raise GenerationError(
            f"validation column {col.name!r} of stage {stage_name!r}"
            f" ({col.validator_params.code_lang}) needs {tool}, which is not installed:"
            " pip install 'dd-assets[validation]'"
        )


def _check_full_column(col: CustomColumnConfig, stage_name: str, late: set[str]) -> None:
    """A full_column function sees the whole row group at once, so it runs with the samplers
    and expressions, before any LLM cell: it cannot read LLM output. It gets a pandas
    DataFrame, as in DataDesigner."""
    if late:
        raise GenerationError(
            f"custom column {col.name!r} of stage {stage_name!r} is full_column but reads"
            f" {sorted(late)}, made cell by cell (LLM output); use generation_strategy:"
            " cell_by_cell"
        )
    if importlib.util.find_spec("pandas") is None:
        raise GenerationError(
            f"custom column {col.name!r} of stage {stage_name!r} is full_column, which hands the"
            " function a pandas DataFrame: pip install pandas"
        )
