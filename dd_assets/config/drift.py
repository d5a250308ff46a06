"""Thresholds of the drift check (`profile_drift`): how far a stage's data may stray from what its
config asks for before the check warns.

They live on the stage (`drift:`), outside every fingerprint: a threshold decides whether data is
acceptable, not what the data is, so tightening one re-checks the rows on disk and never
regenerates them (nor changes a sampler's values, which a field on the column would: sampler
randomness is keyed by the column's own config)."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

from dd_assets.config.base import Float, model_settings
from dd_assets.config.columns import ColumnConfig, LLMJudgeColumnConfig, SamplerColumnConfig
from dd_assets.config.errors import ConfigIssue


class DriftSettings(BaseModel):
    model_config = model_settings(extra="forbid", frozen=True)

    share_tolerance: Float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="category samplers: how far an observed share may be from its configured"
        " weight (absolute, e.g. 0.05 = 5 points) beyond sampling noise",
    )
    column_tolerance: dict[str, Float] = Field(
        default_factory=dict,
        description="column -> share_tolerance for that category sampler column",
    )
    judge_min_mean: dict[str, Float] = Field(
        default_factory=dict,
        description="'<llm-judge column>.<score>' -> lowest acceptable mean score",
    )


def category_columns(columns: Sequence[ColumnConfig]) -> list[SamplerColumnConfig]:
    """Category sampler columns whose expected shares the config states: their weights (equal
    shares when none), the same for every row (no conditional_params, which mix in other
    weights depending on other columns)."""
    return [
        c
        for c in columns
        if isinstance(c, SamplerColumnConfig)
        and c.sampler_type == "category"
        and not c.conditional_params
        and not c.drop
    ]


def drift_issues(
    base: str, drift: DriftSettings, columns: Sequence[ColumnConfig]
) -> list[ConfigIssue]:
    """Every drift threshold must name what it checks: a category sampler column, a numeric
    score of an llm-judge column."""
    issues: list[ConfigIssue] = []
    cats = {c.name for c in category_columns(columns)}
    for name, tol in drift.column_tolerance.items():
        if name not in cats:
            issues.append(
                ConfigIssue(
                    f"{base}.drift.column_tolerance.{name}",
                    f"{name!r} is not a category sampler column of the stage (without"
                    f" conditional_params); such columns: {', '.join(sorted(cats)) or '(none)'}",
                )
            )
        elif not 0 <= tol <= 1:
            issues.append(
                ConfigIssue(
                    f"{base}.drift.column_tolerance.{name}", f"{tol} is not a share in 0..1"
                )
            )
    judges = {c.name: c for c in columns if isinstance(c, LLMJudgeColumnConfig)}
    known = [f"{j}.{s.name}" for j, c in judges.items() for s in c.scores]
    for key in drift.judge_min_mean:
        column, _, score = key.partition(".")
        judge = judges.get(column)
        found = next((s for s in judge.scores if s.name == score), None) if judge else None
        if found is None:
            issues.append(
                ConfigIssue(
                    f"{base}.drift.judge_min_mean.{key}",
                    f"{key!r} names no score of an llm-judge column of the stage; scores:"
                    f" {', '.join(known) or '(none)'}",
                )
            )
        elif not all(isinstance(k, int) for k in found.options):
            issues.append(
                ConfigIssue(
                    f"{base}.drift.judge_min_mean.{key}",
                    f"score {key!r} has non-numeric options {list(found.options)}; a mean"
                    " threshold needs integer scores",
                )
            )
    return issues
