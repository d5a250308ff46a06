"""Run-time options: how a run treats what is already on disk and how hard it drives the
endpoints. None of this is part of any fingerprint: changing it never regenerates data."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field

from dd_assets.config.base import Bool, Float, Int, model_settings
from dd_assets.config.limits import MAX_ROW_GROUPS


class ResumeMode(StrEnum):
    """DataDesigner's names and meanings (see docs/resume.md)."""

    IF_POSSIBLE = "if_possible"
    ALWAYS = "always"
    NEVER = "never"


class EarlyStopSettings(BaseModel):
    """Stop a run when most recent LLM cells were dropped (a bad prompt or schema; transient
    faults never count), or when `window` cells in a row got no answer after all retries (the
    endpoint is down: the run ends with those cells unfinished, exit code 4)."""

    model_config = model_settings(extra="forbid", frozen=True)

    window: Int = Field(
        default=50, ge=1, le=1_000_000, description="recent cell outcomes considered"
    )
    max_failure_rate: Float = Field(default=0.5, gt=0, le=1)


class RunSettings(BaseModel):
    model_config = model_settings(extra="forbid", frozen=True)

    partitions_per_run: Int = Field(
        default=8,
        ge=1,
        le=MAX_ROW_GROUPS,
        description="row groups per Dagster run in a backfill (BackfillPolicy.multi_run)",
    )
    row_groups_in_flight: Int = Field(default=3, ge=1, le=64)
    early_stop: EarlyStopSettings = EarlyStopSettings()
    max_drop_rate: Float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="dropped rows / planned rows a stage may have: above it `materialize` exits 5"
        " and the blocking check rows_within_drop_budget fails",
    )
    keep_dropped_columns: Bool = Field(
        default=False,
        description="write `drop: true` and post_batch-dropped columns to a side table per row"
        " group (DataDesigner's preserve_dropped_columns); `dd-assets export --dropped-columns`",
    )
