"""Dagster definitions for one or more planned workflows: per workflow, a partitioned asset per
stage (stages chained row group by row group share one op), a `<stage>_final` asset per stage with
finalize processors, the stages' asset checks, and the jobs the CLI runs (a job per wave, per
final asset, and one for the checks); one store resource and one IO manager for all of them
(they live under one data root), and the in-process executor for every job."""

from __future__ import annotations

from functools import cache
from typing import Any

import dagster as dg

from dd_assets.dagster.asset_checks import CURRENT_CHECK, stage_check_names
from dd_assets.dagster.assets import final_asset, wave_asset
from dd_assets.dagster.io_manager import StageIOManager
from dd_assets.dagster.names import (
    asset_key,
    checks_job_name,
    final_job_name,
    final_key,
    job_name,
)
from dd_assets.dagster.resources import IO_MANAGER_KEY, STORE_KEY, StoreResource
from dd_assets.dagster.sensors import current_sensor
from dd_assets.errors import ConfigError
from dd_assets.runners.checks import ROW_GROUP_CHECK
from dd_assets.runners.plan import StagePlan, WorkflowPlan


def workflow_definitions(plan: WorkflowPlan) -> dg.Definitions:
    """The assets, checks and jobs of one workflow (no resources: see build_definitions)."""
    stages = plan.stages
    wave_plans = [[stages[s] for s in wave] for wave in plan.waves]
    assets = [wave_asset(w, plan.workflow.run) for w in wave_plans]
    assets += [final_asset(p) for p in stages.values() if p.finalizes]
    jobs = [
        dg.define_asset_job(
            job_name(w),
            selection=wave_selection(w),
            description=f"Materialize stage(s) {', '.join(p.name for p in w)} row group by row"
            " group.",
        )
        for w in wave_plans
    ]
    jobs += [
        dg.define_asset_job(
            final_job_name(p),
            selection=dg.AssetSelection.assets(final_key(p)).without_checks(),
            description=f"Run stage {p.name}'s finalize processors over all its row groups.",
        )
        for p in stages.values()
        if p.finalizes
    ]
    jobs.append(
        dg.define_asset_job(
            checks_job_name(plan),
            selection=stage_checks_selection(list(stages.values())),
            description="Run every stage's asset checks over the whole stage (what"
            " `dd-assets check` runs).",
        )
    )
    return dg.Definitions(assets=assets, jobs=jobs, sensors=[current_sensor(plan)])


def wave_selection(plans: list[StagePlan]) -> dg.AssetSelection:
    """What a materialization run of a wave's stages selects: the assets, their row-group check
    (recorded for each row group of the run) and `materializations_current`. Not the whole-stage checks:
    they are the checks job's (in a run over part of a stage they would only be skipped)."""
    keys = [asset_key(p) for p in plans]
    return dg.AssetSelection.assets(*keys).without_checks() | dg.AssetSelection.checks(
        *wave_check_keys(plans)
    )


def wave_check_keys(plans: list[StagePlan]) -> list[dg.AssetCheckKey]:
    """The checks a materialization run of these stages records (see wave_selection)."""
    return [
        dg.AssetCheckKey(asset_key(p), n) for p in plans for n in (ROW_GROUP_CHECK, CURRENT_CHECK)
    ]


def stage_checks_selection(plans: list[StagePlan]) -> dg.AssetSelection:
    """The whole-stage checks of these stages (what `dd-assets check` runs): a run of them alone
    evaluates them over everything on disk."""
    return dg.AssetSelection.checks(
        *(dg.AssetCheckKey(asset_key(p), n) for p in plans for n in stage_check_names(p))
    )


def build_definitions(plans: list[WorkflowPlan], *, root: str) -> dg.Definitions:
    """Every workflow in one code location, each its own asset group, sharing the resources."""
    names = [p.name for p in plans]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(
            f"workflow name(s) {', '.join(map(repr, dupes))} used by more than one config in one"
            " code location; give each workflow its own `name:`"
        )
    return dg.Definitions.merge(
        *(workflow_definitions(p) for p in plans),
        # One step per run, and a run's parallelism is inside the step (row groups in flight):
        # a step process per run (the multiprocess default) only adds seconds of start-up.
        # This is the executor of every job here and of the implicit asset job behind the UI's
        # "Materialize" and backfills.
        dg.Definitions(resources=shared_resources(root), executor=dg.in_process_executor),
    )


@cache
def shared_resources(root: str) -> dict[str, Any]:
    """The same objects for every call with one root: Dagster merges definitions (several
    `build_definitions`, or several dd-assets components in one code location) only when a
    resource key is bound to the very same object in each."""
    return {STORE_KEY: StoreResource(root=root), IO_MANAGER_KEY: StageIOManager(root=root)}
